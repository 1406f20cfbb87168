// Every command of the client against a real server (docs/PROTOCOL.md, section 6), over wss:// with
// the server's certificate verified: values of each kind with their versions, conditional writes and
// their 409, bad input refused with a clear error on a connection that carries on, and many requests
// in flight on one WebSocket, each matched to its own answer.

import { test } from "node:test";
import assert from "node:assert/strict";
import { QkvError, float, value, type Value } from "../../src/index.js";
import { client, unique } from "./server.js";

test("ping over wss:// echoes its payload", async () => {
  const c = await client();
  assert.equal(c.transport, "websocket");
  assert.equal(c.state, "connected");
  const payload = new Uint8Array([0, 1, 2, 254, 255]);
  const pong = await c.ping(payload);
  assert.deepEqual(pong.payload, payload);
  assert.equal(pong.identity, undefined, "the server asks for no client certificate");
  assert.deepEqual((await c.ping()).payload, new Uint8Array(0));
});

test("hset, hget, hexist and hdel: a value of every kind round-trips with its version", async () => {
  const c = await client();
  const table = unique("kinds");
  const values: [string, Value][] = [
    ["string", value("Ada")],
    ["empty string", value("")],
    ["integer", value(-(2n ** 63n))],
    ["zero", value(0)],
    ["float", float(2)],
    ["fraction", value(0.5)],
    ["true", value(true)],
    ["false", value(false)],
    ["binary", value(new Uint8Array([0, 255, 7]))],
    ["empty binary", value(new Uint8Array(0))],
    ["ключ/with:odd\nchars\u0000", value("🙂")],
  ];
  const versions = new Map<string, bigint>();
  for (const [key, v] of values) {
    assert.equal(await c.hexist(table, key), false, key);
    assert.equal(await c.hget(table, key), undefined, `${key}: a missing key is undefined, not an error`);
    const written = await c.hset(table, key, v);
    assert.equal(written.previous, undefined, `${key}: no previous value`);
    assert.ok(written.version > 0n, `${key}: a version`);
    assert.deepEqual(await c.hget(table, key), { key, value: v, version: written.version }, key);
    assert.equal(await c.hexist(table, key), true, key);
    versions.set(key, written.version);
  }
  const [key, v] = values[0];
  const again = await c.hset(table, key, "Lovelace");
  assert.deepEqual(again.previous, v, "the value it replaced");
  assert.ok(again.version > (versions.get(key) ?? 0n), "a key's version grows with each write");
  const deleted = await c.hdel(table, key);
  assert.deepEqual(deleted, { previous: value("Lovelace"), version: 0n });
  assert.equal(await c.hget(table, key), undefined);
  assert.deepEqual(await c.hdel(table, key), { version: 0n }, "deleting a missing key succeeds, with no previous value");
});

test("hmset, hmget, hmexist and hmdel answer one entry per key, in request order", async () => {
  const c = await client();
  const table = unique("multi");
  const set = await c.hmset(table, { b: 2, a: "one", c: true });
  assert.equal(set.versions.length, 3);
  assert.ok(set.versions.every((v) => v > 0n));
  assert.deepEqual(set.previous, [undefined, undefined, undefined]);
  const again = await c.hmset(table, [["a", "uno"], ["d", 4.5]]);
  assert.deepEqual(again.previous, [value("one"), undefined]);

  const got = await c.hmget(table, ["c", "missing", "a", "b", "d"]);
  assert.deepEqual(
    got.map((e) => e && [e.key, e.value]),
    [["c", value(true)], undefined, ["a", value("uno")], ["b", value(2)], ["d", value(4.5)]],
  );
  assert.equal(got[2]?.version, again.versions[0]);
  assert.deepEqual(await c.hmexist(table, ["a", "nope", "d"]), [true, false, true]);
  assert.deepEqual(await c.hmdel(table, ["a", "nope", "b"]), [value("uno"), undefined, value(2)]);
  assert.deepEqual(await c.hmexist(table, ["a", "b", "c"]), [false, false, true]);
  assert.deepEqual(await c.hmget(table, []), [], "no keys: an empty answer");
});

test("a conditional hset writes only at the expected version; otherwise a 409 with the current entry", async () => {
  const c = await client();
  const table = unique("cas");
  const created = await c.hset(table, "k", "first", { expectedVersion: 0 });
  const conflict = await c.hset(table, "k", "again", { expectedVersion: 0 }).then(
    () => assert.fail("create-only of an existing key must fail"),
    (e: unknown) => e,
  );
  assert.ok(conflict instanceof QkvError);
  assert.equal(conflict.status, 409);
  assert.equal(conflict.executed, "no");
  assert.equal(conflict.notExecuted, true);
  assert.deepEqual(conflict.current, { key: "k", value: value("first"), version: created.version });
  assert.match(conflict.message, /version/);

  const updated = await c.hset(table, "k", "second", { expectedVersion: created.version });
  assert.ok(updated.version > created.version);
  assert.deepEqual(updated.previous, value("first"));
  await assert.rejects(c.hset(table, "k", "stale", { expectedVersion: created.version }), (e: QkvError) => {
    assert.equal(e.status, 409);
    assert.equal(e.current?.version, updated.version, "the 409 carries the version to retry with");
    return true;
  });
  await assert.rejects(c.hset(table, "absent", "x", { expectedVersion: 5n }), (e: QkvError) => {
    assert.equal(e.status, 409);
    assert.equal(e.current, undefined, "a missing key has no current entry (version 0)");
    return true;
  });
  assert.deepEqual((await c.hget(table, "k"))?.value, value("second"));
});

test("a conditional hdel deletes only at the expected version", async () => {
  const c = await client();
  const table = unique("cas-del");
  const { version } = await c.hset(table, "k", 1);
  await assert.rejects(c.hdel(table, "k", { expectedVersion: version + 1n }), (e: QkvError) => {
    assert.equal(e.status, 409);
    assert.deepEqual(e.current, { key: "k", value: value(1), version });
    return true;
  });
  await assert.rejects(c.hdel(table, "k", { expectedVersion: 0 }), { status: 409 });
  assert.deepEqual(await c.hdel(table, "k", { expectedVersion: version }), { previous: value(1), version: 0n });
  assert.deepEqual(await c.hdel(table, "k", { expectedVersion: 0 }), { version: 0n }, "a missing key at version 0");
  await assert.rejects(c.hdel(table, "k", { expectedVersion: version }), { status: 409 });
});

test("the read-modify-write loop of PROTOCOL.md section 7 loses no update among concurrent writers", async () => {
  const [a, b] = [await client(), await client()];
  const table = unique("counter");
  const increment = async (c: typeof a) => {
    for (;;) {
      const entry = await c.hget(table, "n");
      const n = entry?.value.kind === "integer" ? entry.value.value : 0n;
      try {
        await c.hset(table, "n", n + 1n, { expectedVersion: entry?.version ?? 0n });
        return;
      } catch (e) {
        if (!(e instanceof QkvError && e.status === 409)) throw e;
      }
    }
  };
  await Promise.all(Array.from({ length: 40 }, (_, i) => increment(i % 2 === 0 ? a : b)));
  assert.deepEqual((await a.hget(table, "n"))?.value, value(40n));
});

test("bad input: refused with a clear error, and the connection carries on", async () => {
  const c = await client();
  const table = unique("bad");
  // Refused by the client, before anything is sent.
  assert.throws(() => value(null as never), TypeError);
  await assert.rejects(c.hset(table, "k", undefined as never), TypeError);
  await assert.rejects(c.hset(table, "k", 2n ** 63n), RangeError);
  await assert.rejects(c.hset(table, "k", "v", { expectedVersion: -1 }), RangeError);
  assert.throws(() => c.hgetall(table, { limit: -1 }), RangeError);
  // A lone surrogate has no UTF-8: sent, it would be U+FFFD, and these two keys one.
  await assert.rejects(c.hset(table, "\ud800", "A"), TypeError);
  await assert.rejects(c.hget(table, "\udc00"), TypeError);
  await assert.rejects(c.hset(undefined as never, "k", "v"), TypeError);
  await assert.rejects(c.hset(table, 5 as never, "v"), TypeError);
  await assert.rejects(c.hmget(table, "abc" as never), TypeError);
  assert.equal(await c.hget("", "k"), undefined, "nothing was written to the table \"\"");

  // Refused by the server (docs/PROTOCOL.md, section 9), each on its own: requests pipelined behind
  // them on the same WebSocket are answered.
  const longKey = "k".repeat(16 * 1024 + 1);
  const bigValue = new Uint8Array(4 * 1024 * 1024 + 1);
  const [tooLongKey, tooBigValue, fine] = await Promise.allSettled([
    c.hget(table, longKey),
    c.hset(table, "big", bigValue),
    c.hset(table, "fine", "ok"),
  ]);
  for (const [what, outcome] of [["key", tooLongKey], ["value", tooBigValue]] as const) {
    assert.equal(outcome.status, "rejected", what);
    const e = (outcome as PromiseRejectedResult).reason;
    assert.ok(e instanceof QkvError, what);
    assert.equal(e.status, 413, what);
    assert.equal(e.executed, "no", what);
    assert.match(e.message, new RegExp(what), `${what}: the message says what is too large: ${e.message}`);
  }
  assert.equal(fine.status, "fulfilled");
  assert.deepEqual((await c.hget(table, "fine"))?.value, value("ok"));
  assert.equal(await c.hexist(table, "big"), false, "nothing was written");
});

test("a request over the maximum frame size is refused by the client, and the connection carries on", async () => {
  const c = await client({ maxFrameSize: 64 * 1024 });
  const table = unique("frame");
  await assert.rejects(c.hset(table, "k", new Uint8Array(64 * 1024)), (e: QkvError) => {
    assert.equal(e.status, 413);
    assert.equal(e.executed, "no");
    assert.match(e.message, /maximum frame size/);
    return true;
  });
  assert.equal(c.state, "connected");
  await c.hset(table, "k", new Uint8Array(1000));
  assert.equal((await c.hget(table, "k"))?.value.kind, "binary");
});

test("many requests in flight on one connection each get their own answer", async () => {
  const c = await client();
  const table = unique("many");
  const n = 1000;
  const keys = Array.from({ length: n }, (_, i) => `key-${i}`);
  const written = await Promise.all(keys.map((key, i) => c.hset(table, key, i % 3 === 0 ? `s${i}` : i)));
  assert.equal(new Set(written.map((w) => w.version)).size, n, "every write has a version of its own");
  // Reads of different kinds interleaved, so that an answer handed to the wrong request shows.
  const reads = await Promise.all(
    keys.map((key, i) =>
      i % 4 === 0 ? c.hexist(table, key) : i % 4 === 1 ? c.hmget(table, [key, "absent"]) : c.hget(table, key),
    ),
  );
  reads.forEach((read, i) => {
    const expected = value(i % 3 === 0 ? `s${i}` : i);
    if (i % 4 === 0) assert.equal(read, true);
    else if (i % 4 === 1) assert.deepEqual(read, [{ key: keys[i], value: expected, version: written[i].version }, undefined]);
    else assert.deepEqual(read, { key: keys[i], value: expected, version: written[i].version });
  });
});
