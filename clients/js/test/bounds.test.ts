// What the client holds is bounded (docs/PROTOCOL.md, sections 3 and 9): a request over the maximum
// frame size is refused before it is sent, a subscription's unread events are capped (the rest are
// counted, as the server counts a slow subscriber's), and Hgetall reads a table in requests of a page.

import { test } from "node:test";
import assert from "node:assert/strict";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { CommandResponseSchema, type CommandResponse } from "../src/gen/kv_pb.js";
import { QkvError, value } from "../src/index.js";
import { toPb } from "../src/value.js";
import { FakeServer, fakeClients, type FakeSocket } from "./fake-websocket.js";

type Init = MessageInitShape<typeof CommandResponseSchema>;
const frame = (init: Init): CommandResponse => create(CommandResponseSchema, { status: 200, ...init });

// Clients of fake servers, closed after each test.
const client = fakeClients();

test("a request over maxFrameSize is a 413 from the client, never sent; the connection carries on", async () => {
  const server = new FakeServer(() => [frame({ values: [toPb(new Uint8Array(0))] })]);
  const c = await client(server, { maxFrameSize: 1024 });
  await assert.rejects(c.hset("t", "k", new Uint8Array(1024)), (e: QkvError) => {
    assert.equal(e.status, 413);
    assert.equal(e.executed, "no");
    assert.match(e.message, /over the maximum frame size, 1024 bytes: it was not sent/);
    return true;
  });
  assert.equal(server.requests.length, 0);
  await c.ping();
  assert.equal(server.requests.length, 1);
  assert.equal(c.state, "connected");
});

test("a subscription holds at most subscriptionQueue unread events; the rest are counted where they were dropped", async () => {
  let subscriber: FakeSocket | undefined;
  const server = new FakeServer((request, socket) => {
    if (request.requestData.case === "subscribe") {
      subscriber = socket;
      return [frame({ more: true, values: [toPb(1)] })];
    }
    return [frame({ values: [toPb(new Uint8Array(0))] })];
  });
  const c = await client(server, { subscriptionQueue: 3 });
  const subscription = c.subscribe("news");
  await subscription.ready;
  const message = (i: number) => frame({ more: true, values: [toPb(i)] });
  server.deliver(subscriber as FakeSocket, [...Array.from({ length: 8 }, (_, i) => message(i)), frame({ more: true, missed: 4n })]);
  // The fake hands messages over in order, on timers: once this answer is in, so is all of the above.
  await c.ping();
  const events = subscription[Symbol.asyncIterator]();
  const next = async () => (await events.next()).value;
  assert.deepEqual(await next(), { kind: "message", values: [value(0)] });
  assert.deepEqual(await next(), { kind: "message", values: [value(1)] });
  assert.deepEqual(await next(), { kind: "message", values: [value(2)] });
  assert.deepEqual(await next(), { kind: "missed", count: 9n }, "5 dropped here, and 4 the server counted");
  server.deliver(subscriber as FakeSocket, [message(8)]);
  assert.deepEqual(await next(), { kind: "message", values: [value(8)] });
});

test("hgetall reads a table in requests of 1000 entries by default; pageSize 0 is one request", async () => {
  const keys = Array.from({ length: 2500 }, (_, i) => `k${String(i).padStart(4, "0")}`);
  const server = new FakeServer((request) => {
    const r = request.requestData;
    if (r.case !== "hgetall") return [frame({ status: 400, message: "hgetall only" })];
    const from = keys.filter((k) => k > r.value.after);
    const page = r.value.limit > 0 ? from.slice(0, r.value.limit) : from;
    return [frame({ pairs: page.map((key) => ({ key, value: toPb(key) })), versions: page.map(() => 1n) })];
  });
  const c = await client(server);
  const read = async (options = {}) => {
    const got: string[] = [];
    for await (const page of c.hgetall("t", options)) got.push(...page.map((e) => e.key));
    return got;
  };
  assert.deepEqual(await read(), keys);
  const limits = (from: number) => server.requests.slice(from).map((r) => (r.requestData.case === "hgetall" ? r.requestData.value.limit : -1));
  assert.deepEqual(limits(0), [1000, 1000, 1000]);
  assert.deepEqual(await read({ pageSize: 0 }), keys);
  assert.deepEqual(limits(3), [0]);
});

// An empty `after` means "from the first key", and the empty key sorts first: a request cannot start
// after it (docs/PROTOCOL.md, section 6). Paging from it again would give it again, for ever.
test("hgetall pages past the empty key: each key once, whatever pageSize and limit", async () => {
  const keys = ["", "a", "b"];
  const server = new FakeServer((request) => {
    const r = request.requestData;
    if (r.case !== "hgetall") return [frame({ status: 400, message: "hgetall only" })];
    const from = r.value.after === "" ? keys : keys.filter((k) => k > r.value.after);
    const page = r.value.limit > 0 ? from.slice(0, r.value.limit) : from;
    return [frame({ pairs: page.map((key) => ({ key, value: toPb(key) })), versions: page.map(() => 1n) })];
  });
  const c = await client(server);
  const read = async (options = {}) => {
    const got: string[][] = [];
    for await (const page of c.hgetall("t", options)) {
      got.push(page.map((e) => e.key));
      if (got.length > 10) break; // the bug this test is about: the same page for ever
    }
    return got;
  };
  assert.deepEqual(await read({ pageSize: 1 }), [[""], ["a"], ["b"]]);
  assert.deepEqual(await read({ pageSize: 1, limit: 3 }), [[""], ["a"], ["b"]]);
  assert.deepEqual(await read({ pageSize: 1, limit: 2 }), [[""], ["a"]]);
  assert.deepEqual(await read({ pageSize: 2 }), [["", "a"], ["b"]]);
  assert.deepEqual(await read({ limit: 1 }), [[""]]);
  assert.deepEqual(await read(), [["", "a", "b"]]);
  keys.splice(1);
  assert.deepEqual(await read({ pageSize: 1 }), [[""]], "a table of the empty key alone");

  // The empty key deleted between two pages: the entry asked for in its place is the next page's, and
  // a limit is not overrun.
  keys.splice(0, keys.length, "", "a", "b", "c");
  const pages: string[][] = [];
  for await (const page of c.hgetall("t", { pageSize: 1, limit: 2 })) {
    pages.push(page.map((e) => e.key));
    if (pages.length === 1) keys.splice(0, 1);
    if (pages.length > 10) break;
  }
  assert.deepEqual(pages, [[""], ["a"]]);
});

test("a keep-alive Ping without an answer closes the silent connection, and the client reconnects", async () => {
  const server = new FakeServer(() => [frame({ values: [toPb(new Uint8Array(0))] })]);
  const c = await client(server, { keepAliveMs: 20, requestTimeoutMs: 100 });
  server.holding = true; // the network drops everything, silently
  const states: string[] = [];
  await new Promise<void>((resolve) => {
    c.onstatechange = (state) => {
      states.push(state);
      if (state === "connected") resolve();
    };
  });
  assert.deepEqual(states, ["reconnecting", "connected"]);
  assert.ok(server.sockets[0].closedByClient, "the silent connection was closed");
  assert.equal(server.requests[0].requestData.case, "ping");
  server.holding = false;
  await c.ping();
});
