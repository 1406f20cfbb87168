// Each command's request, and what its response means: a result, or a QkvError that says whether
// the request may have run (docs/PROTOCOL.md, sections 6 to 8).

import { test } from "node:test";
import assert from "node:assert/strict";
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { CommandRequestSchema, CommandResponseSchema } from "../src/gen/kv_pb.js";
import { errorFor, isReadOnly, merge, requests, results } from "../src/commands.js";
import { QkvError, executedFor } from "../src/errors.js";
import { encodeFrame } from "../src/frame.js";
import { float, toPb, value } from "../src/value.js";

type Init = MessageInitShape<typeof CommandResponseSchema>;
const response = (init: Init) => create(CommandResponseSchema, init);
const ok = (init: Init = {}) => response({ status: 200, ...init });
const hex = (bytes: Uint8Array) => [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(" ");

function rejects(f: () => unknown, check: (e: QkvError) => void) {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof QkvError, `a QkvError, not ${e}`);
    check(e);
    return true;
  });
}

test("the worked example of docs/PROTOCOL.md, section 11, byte by byte", () => {
  assert.equal(
    hex(encodeFrame(toBinary(CommandRequestSchema, requests.hget("users", "ada")))),
    "00 00 00 0e 0a 0c 0a 05 75 73 65 72 73 12 03 61 64 61",
  );
  const answer = fromBinary(
    CommandResponseSchema,
    new Uint8Array([0x08, 0xc8, 0x01, 0x1a, 0x05, 0x0a, 0x03, 0x41, 0x64, 0x61, 0x2a, 0x01, 0x07]),
  );
  assert.deepEqual(results.hget(answer, "ada"), { key: "ada", value: value("Ada"), version: 7n });
});

test("expected_version is absent, or present even when 0 (explicit presence)", () => {
  const encoded = (expected?: number) => hex(toBinary(CommandRequestSchema, requests.hset("t", "k", "v", expected)));
  assert.ok(!encoded().includes("18 00"));
  assert.ok(encoded(0).endsWith("18 00"), encoded(0));
  assert.ok(hex(toBinary(CommandRequestSchema, requests.hdel("t", "k", 5))).endsWith("18 05"));
  assert.throws(() => requests.hset("t", "k", "v", -1), RangeError);
  assert.throws(() => requests.hset("t", "k", "v", 1.5), RangeError);
  assert.throws(() => requests.hdel("t", "k", 2n ** 64n), RangeError);
});

test("read-only requests are the ones sent again after any failure", () => {
  const reads = [requests.hget("t", "k"), requests.hgetall("t"), requests.hmget("t", []), requests.hexist("t", "k"), requests.hmexist("t", []), requests.ping()];
  const writes = [
    requests.hset("t", "k", 1),
    requests.hmset("t", []),
    requests.hdel("t", "k"),
    requests.hmdel("t", []),
    requests.subscribe("t"),
    requests.unsubscribe("t", 1),
    requests.publish("t", []),
  ];
  assert.ok(reads.every(isReadOnly));
  assert.ok(!writes.some(isReadOnly));
});

test("frames of one answer are concatenated; status and message are the last frame's", () => {
  const merged = merge([
    ok({ more: true, pairs: [{ key: "a", value: toPb(1) }], versions: [1n] }),
    ok({ more: true, pairs: [{ key: "b", value: toPb(2) }], versions: [2n] }),
    ok({ pairs: [{ key: "c", value: toPb(3) }], versions: [3n] }),
  ]);
  assert.deepEqual(results.hgetall(merged), [
    { key: "a", value: value(1), version: 1n },
    { key: "b", value: value(2), version: 2n },
    { key: "c", value: value(3), version: 3n },
  ]);
  const failed = merge([ok({ more: true, pairs: [{ key: "a", value: toPb(1) }], versions: [1n] }), response({ status: 500, message: "disk on fire" })]);
  rejects(() => results.hgetall(failed), (e) => {
    assert.equal(e.status, 500);
    assert.equal(e.message, "disk on fire");
    assert.equal(e.executed, "maybe");
  });
});

test("Hget: an entry, undefined on 404, an error otherwise", () => {
  assert.deepEqual(results.hget(ok({ values: [toPb("v")], versions: [9n] }), "k"), { key: "k", value: value("v"), version: 9n });
  assert.equal(results.hget(response({ status: 404, message: "no key" }), "k"), undefined);
  rejects(() => results.hget(response({ status: 413, message: "key too long" }), "k"), (e) => {
    assert.equal(e.status, 413);
    assert.equal(e.executed, "no");
  });
});

test("Hmget: one entry per key, in order, undefined for the empty Value", () => {
  const answer = ok({ values: [toPb("x"), {}, toPb(float(2))], versions: [3n, 0n, 4n] });
  assert.deepEqual(results.hmget(answer, ["a", "b", "c"]), [
    { key: "a", value: value("x"), version: 3n },
    undefined,
    { key: "c", value: float(2), version: 4n },
  ]);
});

test("Hset: the new version and the previous value", () => {
  assert.deepEqual(results.hset(ok({ values: [{}], versions: [10n] }), "k"), { version: 10n });
  assert.deepEqual(results.hset(ok({ values: [toPb(true)], versions: [11n] }), "k"), { version: 11n, previous: value(true) });
});

test("a 409 carries the key's current value and version; none when the key does not exist", () => {
  rejects(() => results.hset(response({ status: 409, message: "version conflict", values: [toPb("now")], versions: [12n] }), "k"), (e) => {
    assert.equal(e.status, 409);
    assert.equal(e.executed, "no");
    assert.deepEqual(e.current, { key: "k", value: value("now"), version: 12n });
  });
  rejects(() => results.hdel(response({ status: 409, message: "version conflict", values: [{}], versions: [0n] }), "k"), (e) => {
    assert.equal(e.status, 409);
    assert.equal(e.current, undefined);
  });
  assert.equal(errorFor(response({ status: 409, message: "conflict" })).current, undefined, "no key named: no current entry");
});

test("Hmset, Hdel, Hmdel: versions and previous values in order", () => {
  assert.deepEqual(results.hmset(ok({ values: [{}, toPb(1)], versions: [5n, 6n] }), 2), {
    versions: [5n, 6n],
    previous: [undefined, value(1)],
  });
  assert.deepEqual(results.hdel(ok({ values: [toPb("gone")], versions: [0n] }), "k"), { previous: value("gone"), version: 0n });
  assert.deepEqual(results.hdel(ok({ values: [{}], versions: [0n] }), "k"), { version: 0n });
  assert.deepEqual(results.hmdel(ok({ values: [toPb("a"), {}], versions: [0n, 0n] }), 2), [value("a"), undefined]);
});

test("Hexist and Hmexist: booleans", () => {
  assert.equal(results.hexist(ok({ values: [toPb(true)], versions: [3n] })), true);
  assert.equal(results.hexist(ok({ values: [toPb(false)], versions: [0n] })), false);
  assert.deepEqual(results.hmexist(ok({ values: [toPb(false), toPb(true)], versions: [0n, 3n] }), 2), [false, true]);
});

test("Publish: receivers and lagging; Ping: the payload and the identity", () => {
  assert.deepEqual(results.publish(ok({ values: [toPb(3), toPb(1)] })), { receivers: 3, lagging: 1 });
  assert.deepEqual(results.ping(ok({ values: [toPb(new Uint8Array([1]))] })), { payload: new Uint8Array([1]) });
  assert.deepEqual(results.ping(ok({ values: [toPb(new Uint8Array(0)), toPb("CN=alice")] })), {
    payload: new Uint8Array(0),
    identity: "CN=alice",
  });
  assert.equal(results.subscribed(ok({ more: true, values: [toPb(17)] })), 17);
  rejects(() => results.subscribed(response({ status: 503, message: "shutting down" })), (e) => assert.equal(e.executed, "no"));
});

test("whether a request may have run follows the status (docs/PROTOCOL.md, section 8)", () => {
  for (const status of [400, 403, 404, 408, 409, 410, 413, 429, 501, 503, 507, 418]) assert.equal(executedFor(status), "no", `${status}`);
  for (const status of [500, 504, 599]) assert.equal(executedFor(status), "maybe", `${status}`);
  const error = errorFor(response({ status: 507, message: "full" }));
  assert.equal(error.name, "QkvError");
  assert.ok(error instanceof Error);
  assert.equal(error.notExecuted, true);
  assert.equal(errorFor(response({ status: 502 })).message, "the server answered status 502");
});
