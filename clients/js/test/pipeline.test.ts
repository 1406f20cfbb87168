// Pipelining over the WebSocket byte stream (docs/PROTOCOL.md, section 2.2): answers matched to
// requests in order whatever the cuts between messages, messages of at most 64 KiB, and what the client
// does when the connection is lost: retries, errors that say whether a request ran, reconnection.

import { test } from "node:test";
import assert from "node:assert/strict";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { CommandResponseSchema, type CommandRequest, type CommandResponse } from "../src/gen/kv_pb.js";
import { connect, QkvError, value, type Client, type ClientState } from "../src/index.js";
import { toPb } from "../src/value.js";
import { FakeServer, fakeClients, type FakeSocket } from "./fake-websocket.js";

type Init = MessageInitShape<typeof CommandResponseSchema>;
const frame = (init: Init): CommandResponse => create(CommandResponseSchema, { status: 200, ...init });

/** A toy store behind the fake: enough of each command's answer to tell answers apart. */
function store(): (request: CommandRequest) => CommandResponse[] {
  const data = new Map<string, { value: string; version: bigint }>();
  let version = 100n;
  return (request) => {
    const r = request.requestData;
    switch (r.case) {
      case "hget": {
        const found = data.get(r.value.key);
        if (!found) return [frame({ status: 404, message: "not found" })];
        return [frame({ values: [toPb(found.value)], versions: [found.version] })];
      }
      case "hset": {
        const v = r.value.pair?.value?.value;
        const text = v?.case === "string" ? v.value : String(v?.value);
        const previous = data.get(r.value.pair?.key ?? "");
        data.set(r.value.pair?.key ?? "", { value: text, version: ++version });
        return [frame({ values: [previous ? toPb(previous.value) : {}], versions: [version] })];
      }
      case "hmget":
        // One frame per key: a multi-frame answer.
        return r.value.keys.map((key, i) => {
          const found = data.get(key);
          return frame({
            more: i < r.value.keys.length - 1,
            values: [found ? toPb(found.value) : {}],
            versions: [found?.version ?? 0n],
          });
        });
      case "ping":
        return [frame({ values: [toPb(r.value.payload)] })];
      default:
        return [frame({ status: 400, message: `the fake does not serve ${r.case}` })];
    }
  };
}

// Clients of fake servers, closed after each test.
const client = fakeClients();

/** The next state the client changes to. */
function nextState(c: Client): Promise<ClientState> {
  return new Promise((resolve) => {
    c.onstatechange = (state) => {
      c.onstatechange = undefined;
      resolve(state);
    };
  });
}

test("the WebSocket goes to /ws on the web listener, as ws: or wss:", async () => {
  const server = new FakeServer(store());
  await client(server);
  await client(server, { url: "http://localhost:9528/" });
  await client(server, { url: "https://example.com/qkv" });
  assert.deepEqual(
    server.sockets.map((s) => s.url),
    ["wss://qkv.test/ws", "ws://localhost:9528/ws", "wss://example.com/qkv/ws"],
  );
  assert.equal(server.sockets[0].binaryType, "arraybuffer");
});

for (const seed of [1, 2, 3, 4, 5]) {
  test(`hundreds of concurrent requests are each answered with their own answer (cuts, seed ${seed})`, async () => {
    const server = new FakeServer(store(), seed);
    const c = await client(server);
    for (let i = 0; i < 50; i++) await c.hset("t", `k${i}`, `v${i}`);
    server.holding = true;
    const calls: Promise<unknown>[] = [];
    const expected: unknown[] = [];
    for (let i = 0; i < 300; i++) {
      const key = `k${i % 60}`;
      switch (i % 4) {
        case 0:
          calls.push(c.hget("t", key).then((e) => e && [e.key, e.value.value]));
          expected.push(i % 60 < 50 ? [key, `v${i % 60}`] : undefined);
          break;
        case 1:
          calls.push(c.hmget("t", [key, "missing", "k1"]).then((es) => es.map((e) => e?.value.value)));
          expected.push([i % 60 < 50 ? `v${i % 60}` : undefined, undefined, "v1"]);
          break;
        case 2:
          calls.push(c.ping(new Uint8Array([i & 0xff, i >> 8])).then((p) => [...p.payload]));
          expected.push([i & 0xff, i >> 8]);
          break;
        case 3:
          calls.push(c.hexist("t", key).then(() => "unexpected", (e: QkvError) => e.status));
          expected.push(400);
          break;
      }
    }
    // Everything was sent before any answer came; then every answer arrives at once, cut at random.
    await new Promise((resolve) => setTimeout(resolve));
    assert.equal(server.requests.length, 350);
    server.release();
    assert.deepEqual(await Promise.all(calls), expected);
    assert.equal(server.sockets.length, 1, "all on one connection");
    assert.ok(server.messageSizes.length < 350, "requests sent together share messages");
  });
}

test("a frame larger than 64 KiB is sent in messages of at most 64 KiB", async () => {
  const server = new FakeServer(store());
  const c = await client(server);
  const big = "x".repeat(200_000);
  await Promise.all([c.hset("t", "big", big), c.hset("t", "small", "s")]);
  assert.ok(server.messageSizes.every((size) => size <= 65_536), `${server.messageSizes}`);
  assert.ok(server.messageSizes.length >= 4);
  assert.equal((await c.hget("t", "big"))?.value.value, big);
});

test("messages keep to maxMessageSize, the server's --websocket-max-message, however many requests go together", async () => {
  const server = new FakeServer(store());
  const c = await client(server, { maxMessageSize: 16 * 1024 });
  const writes = [c.hset("t", "big", "x".repeat(20_000))];
  for (let i = 0; i < 5; i++) writes.push(c.hset("t", `small${i}`, "v"));
  await Promise.all(writes);
  assert.ok(server.messageSizes.every((size) => size <= 16 * 1024), `${server.messageSizes}`);
  await assert.rejects(connect({ url: "https://qkv.test", transport: "websocket", maxMessageSize: 512 }), RangeError);
});

test("after a refusal that closes the connection, the requests behind it were not executed: they are sent again on a new one", async () => {
  let refusing: FakeSocket | undefined;
  const inner = store();
  const server = new FakeServer((request, socket) => {
    if (socket === refusing) return []; // the server reads nothing more on it
    const pair = request.requestData.case === "hset" ? request.requestData.value.pair : undefined;
    if (refusing === undefined && pair?.key === "big") {
      refusing = socket;
      server.deliver(socket, [
        frame({ status: 413, message: "frame of 2097181 bytes exceeds the maximum frame size of 1048576 bytes; closing the connection" }),
      ]);
      // The close comes a moment later: a request sent meanwhile must not go on this connection.
      setTimeout(() => socket.serverClose(), 20);
      return [];
    }
    return inner(request);
  });
  const c = await client(server);
  const big = c.hset("t", "big", "x");
  const behind = c.hset("t", "behind", "1");
  await assert.rejects(big, (e: unknown) => e instanceof QkvError && e.status === 413 && e.executed === "no");
  const after = c.hset("t", "after", "2");
  const [b, a] = await Promise.all([behind, after]);
  assert.ok(b.version > 0n && a.version > 0n, "both made, on the new connection");
  assert.equal(server.sockets.length, 2);
  assert.equal(
    server.requests.filter((r) => r.requestData.case === "hset" && r.requestData.value.pair?.key === "after").length,
    1,
    "the request after the refusal went out once, on the new connection",
  );
});

test("when the connection is lost, reads are sent again; a write's outcome is unknown; the client reconnects", async () => {
  const server = new FakeServer(store());
  const c = await client(server);
  await c.hset("t", "k", "before");
  server.holding = true;
  const states: ClientState[] = [];
  c.onstatechange = (state) => states.push(state);
  const read = c.hget("t", "k");
  const write = c.hset("t", "k", "lost?");
  write.catch(() => {}); // examined below
  await new Promise((resolve) => setTimeout(resolve));
  server.holding = false;
  server.sockets[0].serverClose();
  const entry = await read;
  assert.equal(entry?.value.value, "lost?", "the read was sent again on the new connection (after the write ran)");
  await assert.rejects(write, (e: unknown) => {
    assert.ok(e instanceof QkvError);
    assert.equal(e.status, 0);
    assert.equal(e.executed, "maybe");
    return true;
  });
  assert.deepEqual(states, ["reconnecting", "connected"]);
  assert.equal(server.sockets.length, 2);
  assert.equal((await c.hget("t", "k"))?.value.value, "lost?");
});

test("after a refusal that closes the connection the server executed nothing more on it: those requests are sent again", async () => {
  let refusing: FakeSocket | undefined;
  const inner = store();
  const server = new FakeServer((request, socket) => {
    if (socket === refusing) return []; // the server executes nothing more on it
    if (refusing === undefined && request.requestData.case === "hset") {
      refusing = socket;
      // The answer to this request, then the connection ends; the requests after it were not executed.
      const message = "the server is shutting down; this request and any later ones were not executed; closing the connection";
      server.deliver(socket, [frame({ status: 503, message })]);
      socket.serverClose();
      return [];
    }
    return inner(request);
  });
  const c = await client(server);
  const [first, second] = await Promise.all([c.hset("t", "a", "1"), c.hset("t", "b", "2")]);
  assert.ok(first.version > 0n && second.version > 0n && first.version !== second.version);
  assert.equal(server.sockets.length, 2);
  assert.deepEqual(
    server.requests.map((r) => r.requestData.case),
    ["hset", "hset", "hset", "hset"],
    "both sent on the first connection, and again on the second",
  );
});

test("a 503 that refused its request alone says nothing of the requests behind it when the WebSocket then fails", async () => {
  let failing: FakeSocket | undefined;
  const server = new FakeServer((request, socket) => {
    if (socket === failing) return []; // the writes behind it went out; their fate is unknown
    if (failing === undefined && request.requestData.case === "hget") {
      failing = socket;
      // A 503 for this request alone (a backend away), then the network fails.
      server.deliver(socket, [frame({ status: 503, message: "Redis is away; nothing was executed" })]);
      socket.fail();
      return [];
    }
    return store()(request);
  });
  const c = await client(server, { reconnect: { maxAttempts: 0 } });
  const read = c.hget("t", "k");
  const write = c.hset("t", "k", "v");
  read.catch(() => {});
  await assert.rejects(write, (e: unknown) => e instanceof QkvError && e.executed === "maybe");
});

test("a 503 that does not close the connection says nothing of the requests behind it when the server then closes it", async () => {
  let closing: FakeSocket | undefined;
  const server = new FakeServer((request, socket) => {
    if (socket === closing) return []; // executed, but its answer could not be held: the server closes
    if (closing === undefined && request.requestData.case === "publish") {
      closing = socket;
      // This publish alone refused (no memory to queue it); the write behind it runs, and the server
      // ends the connection without its answer.
      server.deliver(socket, [frame({ status: 503, message: "no memory to queue the message" })]);
      socket.serverClose();
      return [];
    }
    return store()(request);
  });
  const c = await client(server, { reconnect: { maxAttempts: 0 } });
  const published = c.publish("news", []);
  const write = c.hset("t", "k", "v");
  published.catch(() => {});
  await assert.rejects(write, (e: unknown) => e instanceof QkvError && e.executed === "maybe");
});

test("with reconnecting off, a lost connection closes the client", async () => {
  const server = new FakeServer(store());
  const c = await client(server, { reconnect: false });
  const closed = nextState(c);
  server.sockets[0].serverClose();
  assert.equal(await closed, "closed");
  await assert.rejects(c.ping(), (e: unknown) => e instanceof QkvError && e.status === 0 && e.executed === "no");
});

test("reconnection gives up after maxAttempts, and the client is closed", async () => {
  const server = new FakeServer(store());
  const c = await client(server, { reconnect: { initialDelayMs: 1, maxDelayMs: 2, maxAttempts: 3 } });
  server.refusing = true;
  const states: ClientState[] = [];
  const closed = new Promise<void>((resolve) => {
    c.onstatechange = (state) => {
      states.push(state);
      if (state === "closed") resolve();
    };
  });
  const pending = c.hget("t", "k");
  server.sockets[0].serverClose();
  await closed;
  assert.deepEqual(states, ["reconnecting", "closed"]);
  assert.equal(server.sockets.length, 4, "the first connection and 3 attempts");
  await assert.rejects(pending, (e: unknown) => e instanceof QkvError && /3 attempts/.test(e.message));
  // A UI can say why it is closed.
  assert.match(c.closedError?.message ?? "", /3 attempts to reconnect failed/);
});

test("a call times out when no answer comes", async () => {
  const server = new FakeServer(() => []);
  const c = await client(server, { requestTimeoutMs: 20 });
  await assert.rejects(c.hset("t", "k", 1), (e: unknown) => {
    assert.ok(e instanceof QkvError);
    assert.equal(e.status, 0);
    assert.equal(e.executed, "maybe");
    return true;
  });
});

test("connect fails with status 0 when the WebSocket does not open", async () => {
  const server = new FakeServer(store());
  server.refusing = true;
  await assert.rejects(
    connect({ url: "https://qkv.test", transport: "websocket", WebSocket: server.WebSocket }),
    (e: unknown) => e instanceof QkvError && e.status === 0 && /connection refused/.test(e.message),
  );
  const global = globalThis as { WebSocket?: unknown };
  const WebSocket = global.WebSocket;
  delete global.WebSocket;
  try {
    await assert.rejects(connect({ url: "https://qkv.test", transport: "websocket" }), /no WebSocket/);
  } finally {
    global.WebSocket = WebSocket;
  }
});

// README: "Bad arguments are thrown (or rejected) at once, before anything is sent". A lone surrogate
// has no UTF-8: encoded, it would become U+FFFD, and "\ud800" and "\udc00" would be one key.
test("bad arguments are refused at the call with a TypeError, and nothing is sent", async () => {
  const server = new FakeServer(store());
  const c = await client(server);
  const refused = async (call: () => unknown, pattern: RegExp) => {
    await assert.rejects(async () => call(), (e: unknown) => {
      assert.ok(e instanceof TypeError, `a TypeError, not ${e}`);
      assert.match(e.message, pattern);
      return true;
    });
  };
  await refused(() => c.hset("sg", "\ud800", "A"), /key is not well-formed Unicode: a lone surrogate \(\\uD800\) at index 0/);
  await refused(() => c.hget("sg", "x\udc00"), /key is not well-formed.*index 1/);
  await refused(() => c.hset("\udfff", "k", "v"), /table is not well-formed/);
  await refused(() => c.hset("t", "k", "v\ud800"), /a string value is not well-formed/);
  await refused(() => c.hset("t", "k", { kind: "string", value: "\ud800" }), /a string value is not well-formed/);
  await refused(() => c.hset(undefined as never, "k", "v"), /table must be a string, not undefined/);
  await refused(() => c.hset("t", 5 as never, "v"), /key must be a string, not number/);
  await refused(() => c.hmget("t", "abc" as never), /keys must be an array of strings, not string/);
  await refused(() => c.hmget("t", ["a", 1] as never), /keys\[1\] must be a string/);
  await refused(() => c.hmexist("t", [null] as never), /keys\[0\] must be a string, not null/);
  await refused(() => c.hmdel("t", "a" as never), /keys must be an array/);
  await refused(() => c.hmset("t", { "\ud800": 1 }), /entries\[0\]'s key is not well-formed/);
  await refused(() => c.hmset("t", [["k"]] as never), /entries\[0\] must be a \[key, value\] pair/);
  await refused(() => c.hmset("t", null as never), /entries must be an object/);
  await refused(() => c.hdel("t", undefined as never), /key must be a string/);
  await refused(() => c.hexist(1 as never, "k"), /table must be a string/);
  await refused(() => c.publish("news", "hi" as never), /values must be an array/);
  await refused(() => c.publish("\ud800", ["hi"]), /topic is not well-formed/);
  await refused(() => c.ping("hi" as never), /payload must be a Uint8Array/);
  await refused(() => c.hset("t", "k", "v", { expectedVersion: "123" as never }), /a version is a bigint or a number, not a string/);
  assert.throws(() => c.hgetall(undefined as never), /table must be a string/);
  assert.throws(() => c.hgetall("t", { after: "\ud800" }), /after is not well-formed/);
  assert.throws(() => c.subscribe(7 as never), /topic must be a string, not number/);
  assert.equal(server.requests.length, 0, "nothing was sent");
  // Well-formed strings of any kind go: the empty string, pairs of surrogates.
  await c.hset("", "", "😀");
  assert.equal((await c.hget("", ""))?.value.value, "😀");
});

test("a subscription has a WebSocket of its own; its events come in order; close unsubscribes", async () => {
  let subscriber: FakeSocket | undefined;
  const server = new FakeServer((request, socket) => {
    const r = request.requestData;
    if (r.case === "subscribe") {
      subscriber = socket;
      return [frame({ more: true, values: [toPb(7)] })];
    }
    if (r.case === "unsubscribe") {
      assert.equal(r.value.id, 7);
      assert.equal(r.value.topic, "news");
      return [frame({ message: "unsubscribed" }), frame({})];
    }
    return [frame({ values: [toPb(1), toPb(0)] })];
  });
  const c = await client(server);
  const subscription = c.subscribe("news");
  await subscription.ready;
  assert.equal(subscription.id, 7);
  assert.notEqual(subscriber, server.sockets[0], "not the client's connection");
  assert.equal(await c.publish("news", ["ignored by the fake"]), 1);
  server.deliver(subscriber as FakeSocket, [
    frame({ more: true, values: [toPb("one"), toPb(1)] }),
    frame({ more: true, missed: 5n }),
    frame({ more: true, values: [] }),
    frame({ more: true, values: [toPb("two")] }),
  ]);
  const events = [];
  for await (const event of subscription) {
    events.push(event);
    if (events.length === 4) break; // unsubscribes
  }
  assert.deepEqual(events, [
    { kind: "message", values: [value("one"), value(1)] },
    { kind: "missed", count: 5n },
    { kind: "message", values: [] },
    { kind: "message", values: [value("two")] },
  ]);
  assert.equal(server.requests.at(-1)?.requestData.case, "unsubscribe");
  assert.ok(subscriber?.closedByClient, "its connection closed after the Unsubscribe's answer");
});

// README: the iterator throws a QkvError "when ... the client is closed": a reader must tell that
// from an unsubscribe, which ends the iterator.
test("closing the client fails its subscriptions' iterators with a QkvError, after the events they hold", async () => {
  let subscriber: FakeSocket | undefined;
  const server = new FakeServer((request, socket) => {
    if (request.requestData.case === "subscribe") {
      subscriber ??= socket;
      return socket === subscriber ? [frame({ more: true, values: [toPb(1)] })] : [];
    }
    return [frame({ values: [toPb(new Uint8Array(0))] })];
  });
  const c = await client(server);
  const made = c.subscribe("news");
  await made.ready;
  const waiting = c.subscribe("other"); // never answered: not ready when the client closes
  server.deliver(subscriber as FakeSocket, [frame({ more: true, values: [toPb("held")] })]);
  await c.ping(); // the fake delivers in order: the message is in
  c.close();
  const events = made[Symbol.asyncIterator]();
  assert.deepEqual((await events.next()).value, { kind: "message", values: [value("held")] });
  const closed = (e: unknown) => e instanceof QkvError && e.status === 0 && e.executed === "no" && /client is closed/.test(e.message);
  await assert.rejects(events.next(), closed);
  await assert.rejects(waiting.ready, closed);
  await assert.rejects(waiting[Symbol.asyncIterator]().next(), closed);
  await assert.rejects(c.subscribe("late")[Symbol.asyncIterator]().next(), closed, "and one made after");
});

// Over WebSocket each subscription has a WebSocket of its own, and browsers cap those open to a host
// (Chromium: about 255; beyond, one fails after tens of seconds with an opaque error): the same cap as
// over WebTransport, so that an app behaves alike whichever transport "auto" chose.
test("over WebSocket too, subscriptions beyond maxSubscriptions fail at once with a 429, opening nothing", async () => {
  let id = 0;
  const server = new FakeServer((request) => {
    const r = request.requestData;
    if (r.case === "subscribe") return [frame({ more: true, values: [toPb(++id)] })];
    if (r.case === "unsubscribe") return [frame({}), frame({})];
    return [frame({ values: [toPb(new Uint8Array(0))] })];
  });
  const c = await client(server, { maxSubscriptions: 3 });
  const made = ["a", "b", "c"].map((topic) => c.subscribe(topic));
  await Promise.all(made.map((s) => s.ready));
  const refused = c.subscribe("d");
  await assert.rejects(refused.ready, (e: unknown) => {
    assert.ok(e instanceof QkvError);
    assert.equal(e.status, 429);
    assert.equal(e.executed, "no");
    assert.match(e.message, /too many subscriptions: the client holds 3 \(maxSubscriptions\), and each holds a WebSocket/);
    return true;
  });
  assert.equal(server.sockets.length, 4, "the client's and one per subscription made");
  await made[0].close();
  await c.subscribe("e").ready;
  assert.equal(server.requests.filter((r) => r.requestData.case === "subscribe").length, 4);
});

test("a subscription closed while its WebSocket is opening closes that WebSocket", async () => {
  const server = new FakeServer(() => [frame({ more: true, values: [toPb(1)] })]);
  const c = await client(server);
  const subscription = c.subscribe("news");
  await subscription.close();
  assert.equal(server.sockets.length, 2, "the client's, and the subscription's, opened before the close");
  assert.ok(server.sockets[1].closedByClient, "not left open, holding a connection on the server");
  assert.equal(server.requests.filter((r) => r.requestData.case === "subscribe").length, 0);
});

test("over WebSocket, a Subscribe not answered in time fails and is not sent again", async () => {
  const server = new FakeServer((request) => (request.requestData.case === "subscribe" ? [] : [frame({ values: [toPb(new Uint8Array(0))] })]));
  const c = await client(server, { requestTimeoutMs: 50 });
  const subscription = c.subscribe("slow");
  await assert.rejects(subscription.ready, (e: unknown) => e instanceof QkvError && e.status === 0 && /not answered within the request timeout/.test(e.message));
  assert.equal(server.requests.filter((r) => r.requestData.case === "subscribe").length, 1);
  assert.ok(server.sockets[1].closedByClient, "its WebSocket closed: the server ends the subscription");
});

test("a subscription made again after a lost connection whose Subscribe is slow is tried again, not ended", async () => {
  let subscribes = 0;
  const subscribers: FakeSocket[] = [];
  const server = new FakeServer((request, socket) => {
    if (request.requestData.case !== "subscribe") return [];
    subscribes++;
    // The first is answered; the second not at all (a server busy recovering); the third is.
    if (subscribes === 2) return [];
    subscribers.push(socket);
    return [frame({ more: true, values: [toPb(subscribes)] })];
  });
  const c = await client(server, { requestTimeoutMs: 100 });
  const subscription = c.subscribe("news");
  const events = subscription[Symbol.asyncIterator]();
  await subscription.ready;
  subscribers[0].serverClose();
  assert.deepEqual((await events.next()).value, { kind: "missed", count: 1n, reconnected: true });
  assert.equal(subscribes, 3, "the slow one abandoned, then made again");
  assert.equal(subscription.id, 3);
  server.deliver(subscribers[1], [frame({ more: true, values: [toPb("after")] })]);
  assert.deepEqual((await events.next()).value, { kind: "message", values: [value("after")] });
});

test("a subscription whose connection is lost is made again, with a missed event", async () => {
  let id = 0;
  const subscribers: FakeSocket[] = [];
  const server = new FakeServer((request, socket) => {
    if (request.requestData.case === "subscribe") {
      subscribers.push(socket);
      return [frame({ more: true, values: [toPb(++id)] })];
    }
    return [];
  });
  const c = await client(server);
  const subscription = c.subscribe("news");
  const events = subscription[Symbol.asyncIterator]();
  await subscription.ready;
  server.deliver(subscribers[0], [frame({ more: true, values: [toPb("before")] })]);
  assert.deepEqual((await events.next()).value, { kind: "message", values: [value("before")] });
  subscribers[0].serverClose();
  assert.deepEqual((await events.next()).value, { kind: "missed", count: 1n, reconnected: true });
  assert.equal(subscription.id, 2);
  server.deliver(subscribers[1], [frame({ more: true, values: [toPb("after")] })]);
  assert.deepEqual((await events.next()).value, { kind: "message", values: [value("after")] });
  // The server ends it for lagging (429): the iterator fails with that.
  server.deliver(subscribers[1], [frame({ status: 429, message: "dropped: the subscriber did not keep up" })]);
  await assert.rejects(events.next(), (e: unknown) => e instanceof QkvError && e.status === 429);
});
