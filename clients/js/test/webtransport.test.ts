// WebTransport (docs/PROTOCOL.md, sections 1.1 and 2.1) against a fake session: each request on a
// bidirectional stream of its own, its writable side closed after the one frame, the answer read to
// the end of the stream (the server's FIN), and a request over the maximum frame size never sent.

import { afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { CommandRequestSchema, CommandResponseSchema, type CommandRequest, type CommandResponse } from "../src/gen/kv_pb.js";
import { FrameDecoder, concat, encodeFrame } from "../src/frame.js";
import { connect, QkvError, webTransportCert, type Client, type ConnectOptions } from "../src/index.js";
import { toPb } from "../src/value.js";
import { FakeServer } from "./fake-websocket.js";

/** One stream as the server sees it. */
interface Exchange {
  request?: CommandRequest;
  /** The client closed its writable side (FIN). */
  finished: boolean;
  /** Resolves once the client has read the end of the readable side (the server's FIN). */
  readToEnd: Promise<void>;
  /** The client stopped reading it (STOP_SENDING). */
  stopped: boolean;
  /** Sends more frames of the answer (a subscription's); the stream ends after one with more = false. */
  send(frames: CommandResponse[]): void;
}

/**
 * A WebTransport session whose streams are answered by `answer`, one chunk per frame. A stream ends
 * after the frame with more = false; until then (a subscription's) it stays open.
 */
class FakeSession {
  static exchanges: Exchange[] = [];
  static answer: (request: CommandRequest, exchange: Exchange) => CommandResponse[] = () => [];
  /**
   * The server's stream credit: a stream beyond it is refused at once, as Chromium does. A stream's
   * credit comes back a moment after the client has read its end (once the server has seen it).
   */
  static credit = Infinity;
  /** Streams whose credit the server has not given back. */
  static held = 0;
  /** Streams whose end the client has not read, and the most there were at once. */
  static open = 0;
  static mostOpen = 0;
  static refused = 0;
  readonly ready = Promise.resolve();
  readonly closed = new Promise<void>(() => {});

  constructor(readonly url: string) {}

  async createBidirectionalStream() {
    if (FakeSession.held >= FakeSession.credit) {
      FakeSession.refused += 1;
      throw new Error("Failed to create bidirectional stream.");
    }
    FakeSession.held += 1;
    FakeSession.open += 1;
    FakeSession.mostOpen = Math.max(FakeSession.mostOpen, FakeSession.open);
    let readToEnd!: () => void;
    // The answer's frames not yet read, whether its last frame is among them, and a reader waiting.
    const chunks: Uint8Array[] = [];
    let last = false;
    let wake = () => {};
    const exchange: Exchange = {
      finished: false,
      readToEnd: new Promise((resolve) => (readToEnd = resolve)),
      stopped: false,
      send(frames) {
        // After a turn of the event loop, as from a network.
        setImmediate(() => {
          chunks.push(...frames.map((r) => encodeFrame(toBinary(CommandResponseSchema, r))));
          last ||= frames.some((r) => !r.more);
          wake();
        });
      },
    };
    FakeSession.exchanges.push(exchange);
    const gone = () => {
      FakeSession.open -= 1;
      setImmediate(() => (FakeSession.held -= 1));
    };
    const pieces: Uint8Array[] = [];
    const writable = new WritableStream<Uint8Array>({
      write: (chunk) => void pieces.push(chunk.slice()),
      close: () => {
        exchange.finished = true;
        const [payload] = new FrameDecoder().push(concat(pieces));
        exchange.request = fromBinary(CommandRequestSchema, payload);
        exchange.send(FakeSession.answer(exchange.request, exchange));
      },
    });
    const readable = new ReadableStream<Uint8Array>(
      {
        async pull(controller) {
          while (chunks.length === 0 && !last) await new Promise<void>((resolve) => (wake = resolve));
          const chunk = chunks.shift();
          if (chunk !== undefined) return controller.enqueue(chunk);
          readToEnd();
          gone();
          controller.close();
        },
        cancel() {
          exchange.stopped = true;
          gone();
        },
      },
      { highWaterMark: 0 },
    );
    return { readable, writable };
  }

  close(): void {}
}

const clients: Client[] = [];
afterEach(() => {
  for (const client of clients.splice(0)) client.close();
  FakeSession.exchanges = [];
  Object.assign(FakeSession, { credit: Infinity, held: 0, open: 0, mostOpen: 0, refused: 0 });
});

async function client(options: Omit<ConnectOptions, "url" | "transport"> = {}): Promise<Client> {
  (globalThis as { WebTransport?: unknown }).WebTransport = FakeSession;
  try {
    const c = await connect({
      url: "https://qkv.test:9528",
      transport: "webtransport",
      webTransportUrl: "https://qkv.test:9527/",
      serverCertificateHashes: [],
      keepAliveMs: 0,
      maxFrameSize: 4096,
      ...options,
    });
    clients.push(c);
    return c;
  } finally {
    delete (globalThis as { WebTransport?: unknown }).WebTransport;
  }
}

const ok = (init: Parameters<typeof create<typeof CommandResponseSchema>>[1]) => create(CommandResponseSchema, { status: 200, ...init });

// The timeout fails a client that never reads a stream's end (the test would wait for it forever).
test("each request has a stream of its own, finished after its frame; the answer is read to the stream's end", { timeout: 10_000 }, async () => {
  FakeSession.answer = (request) =>
    request.requestData.case === "hmget"
      ? [ok({ more: true, values: [toPb("a")], versions: [1n] }), ok({ values: [toPb("b")], versions: [2n] })]
      : [ok({ values: [toPb(new Uint8Array([1]))] })];
  const c = await client();
  assert.equal(c.transport, "webtransport");
  const [entries] = await Promise.all([c.hmget("t", ["x", "y"]), c.ping(new Uint8Array([1]))]);
  assert.deepEqual(entries.map((e) => e?.version), [1n, 2n], "the frames of one answer, merged");
  assert.equal(FakeSession.exchanges.length, 2);
  assert.ok(FakeSession.exchanges.every((e) => e.finished), "FIN after the request");
  // The end is read after the answer's last frame has been handed over.
  await Promise.all(FakeSession.exchanges.map((e) => e.readToEnd));
});

test("a request over maxFrameSize opens no stream and is a 413 from the client", async () => {
  const c = await client();
  await assert.rejects(c.hset("t", "k", new Uint8Array(4096)), (e: QkvError) => e.status === 413 && e.executed === "no");
  assert.equal(FakeSession.exchanges.length, 0);
});

test("requests beyond maxStreams wait for a stream to end", async () => {
  FakeSession.answer = (request) => [ok({ values: [toPb(request.requestData.case ?? "")] })];
  const c = await client({ maxStreams: 4 });
  const answers = await Promise.all(Array.from({ length: 100 }, () => c.ping()));
  assert.equal(answers.length, 100);
  assert.equal(FakeSession.exchanges.length, 100, "one stream each");
  assert.ok(FakeSession.mostOpen <= 4, `at most maxStreams open: ${FakeSession.mostOpen}`);
  assert.equal(FakeSession.refused, 0);
});

// Chromium refuses a stream beyond the server's credit at once ("Failed to create bidirectional
// stream."): the requests beyond it wait for a stream to end rather than fail.
test("requests beyond the streams the server grants wait, and all are answered", async () => {
  FakeSession.answer = () => [ok({ values: [toPb("v")], versions: [1n] })];
  FakeSession.credit = 10;
  const c = await client();
  const results = await Promise.allSettled(Array.from({ length: 600 }, (_, i) => c.hget("t", `k${i}`)));
  const failed = results.filter((r) => r.status === "rejected");
  assert.equal(failed.length, 0, `all answered: ${failed.length} failed, first: ${(failed[0] as PromiseRejectedResult | undefined)?.reason}`);
  assert.equal(FakeSession.exchanges.length, 600, "a refused stream is not sent twice");
  // The first 256 tried at once, most refused; after that the client keeps to what it met.
  assert.ok(FakeSession.refused < 600, `not a refusal per request: ${FakeSession.refused}`);
});

// A network that starts dropping UDP: WebTransport sessions no longer open. In "auto" the client
// chooses again at a reconnection, as at connect(), and goes on over WebSocket.
test('"auto" falls back to WebSocket at a reconnection once WebTransport no longer opens', async () => {
  const pong = () => [ok({ values: [toPb(new Uint8Array([7]))] })];
  FakeSession.answer = pong;
  const server = new FakeServer(pong);
  let endSession!: () => void;
  class EndingSession extends FakeSession {
    override readonly closed = new Promise<void>((resolve) => (endSession = resolve));
  }
  const global = globalThis as { WebTransport?: unknown };
  global.WebTransport = EndingSession;
  try {
    const c = await connect({
      url: "https://qkv.test:9528",
      webTransportUrl: "https://qkv.test:9527/",
      serverCertificateHashes: [],
      WebSocket: server.WebSocket,
      keepAliveMs: 0,
      reconnect: { initialDelayMs: 1, maxDelayMs: 5 },
    });
    clients.push(c);
    assert.equal(c.transport, "webtransport");
    await c.ping();
    const states: string[] = [];
    c.onstatechange = (state) => states.push(state);
    global.WebTransport = class {
      constructor() {
        throw new Error("UDP blocked");
      }
    };
    endSession();
    assert.deepEqual([...(await c.ping()).payload], [7], "answered after the reconnection");
    assert.equal(c.transport, "websocket");
    assert.deepEqual(states, ["reconnecting", "connected"]);
    assert.equal(server.requests.length, 1, "the ping went over the WebSocket");
  } finally {
    delete global.WebTransport;
  }
});

/** Runs `f` with `fetch` answering as `answer` says, and, given `page`, as in a page of that origin. */
async function withFetch(answer: (url: string, init?: RequestInit) => Promise<Response>, page: string | undefined, f: () => Promise<void>) {
  const global = globalThis as { fetch: unknown; location?: unknown };
  const fetch = global.fetch;
  global.fetch = (url: URL | string, init?: RequestInit) => answer(String(url), init);
  if (page !== undefined) global.location = { origin: page };
  try {
    await f();
  } finally {
    global.fetch = fetch;
    delete global.location;
  }
}

// README: "Every call rejects with a QkvError", webTransportCert too: the HTTP status the server
// answered, or 0 when none came.
test("webTransportCert rejects with a QkvError: the server's status, or 0 when no usable answer came", async () => {
  const is = (status: number, pattern: RegExp) => (e: unknown) =>
    e instanceof QkvError && e.status === status && e.executed === "no" && pattern.test(e.message);
  const base = "https://qkv.test:9528";
  await withFetch(() => Promise.reject(new TypeError("fetch failed")), undefined, () =>
    assert.rejects(webTransportCert(base), is(0, /could not fetch https:\/\/qkv.test:9528\/webtransport-cert: fetch failed$/)),
  );
  await withFetch(async () => new Response("no", { status: 404 }), undefined, () =>
    assert.rejects(webTransportCert(base), is(404, /answered 404/)),
  );
  await withFetch(async () => new Response("<html>"), undefined, () => assert.rejects(webTransportCert(base), is(0, /did not answer JSON/)));
  await withFetch(async () => Response.json({ port: "x" }), undefined, () =>
    assert.rejects(webTransportCert(base), is(0, /did not answer a certificate hash and a port/)),
  );
  await withFetch(async () => Response.json({ port: 9527, sha256: "ab", self_issued: true }), undefined, async () => {
    assert.equal((await webTransportCert(base)).port, 9527);
  });
});

// A browser hides a refusal: a fetch the page may not read (CORS) is a TypeError, a WebSocket refused
// with 403 an error event. The server answers /webtransport-cert with CORS for allowed origins only:
// answered to an opaque (no-cors) request but unreadable, the page's origin is not allowed.
test("in a page of an origin the server does not allow, the error names --web-origin", async () => {
  const refusedOrigin = async (_url: string, init?: RequestInit) => {
    if (init?.mode === "no-cors") return new Response(null, { status: 200 });
    throw new TypeError("Failed to fetch");
  };
  const named = (e: unknown) =>
    e instanceof QkvError && e.status === 0 && /does not allow this page's origin, https:\/\/page.test \(start it with --web-origin https:\/\/page.test\), or that is not its web listener's/.test(e.message);
  await withFetch(refusedOrigin, "https://page.test", async () => {
    await assert.rejects(webTransportCert("https://qkv.test:9528"), named);
    const server = new FakeServer(() => []);
    server.refusing = true;
    await assert.rejects(connect({ transport: "websocket", url: "https://qkv.test:9528", WebSocket: server.WebSocket }), named);
  });
  // Unreachable: not a matter of origin alone; the page's own origin: always allowed, nothing to add.
  await withFetch(() => Promise.reject(new TypeError("Failed to fetch")), "https://page.test", () =>
    assert.rejects(webTransportCert("https://qkv.test:9528"), /not reached from this page, or the browser does not trust its certificate/),
  );
  await withFetch(() => Promise.reject(new TypeError("Failed to fetch")), "https://qkv.test:9528", () =>
    assert.rejects(webTransportCert("https://qkv.test:9528"), /Failed to fetch$/),
  );
});

/** Answers a Subscribe with its id (the stream then stays open) and ends it at its Unsubscribe; a Ping with a pong. */
function pubsub(): (request: CommandRequest, exchange: Exchange) => CommandResponse[] {
  const subscriptions = new Map<number, Exchange>();
  let id = 0;
  return (request, exchange) => {
    const r = request.requestData;
    if (r.case === "subscribe") {
      subscriptions.set(++id, exchange);
      return [ok({ more: true, values: [toPb(id)] })];
    }
    if (r.case === "unsubscribe") {
      subscriptions.get(r.value.id)?.send([ok({})]);
      return [ok({})];
    }
    return [ok({ values: [toPb(new Uint8Array(0))] })];
  };
}

const subscribes = () => FakeSession.exchanges.filter((e) => e.request?.requestData.case === "subscribe").length;

// A subscription holds a stream for its life, and the server runs at most --max-concurrent-requests
// (256) of a session's: 300 subscriptions used to hold every stream, leave 44 waiting for ever, and
// every other call with them.
test("subscriptions beyond maxSubscriptions (128) fail at once with a 429; calls keep their streams", { timeout: 10_000 }, async () => {
  FakeSession.answer = pubsub();
  const c = await client();
  const subscriptions = Array.from({ length: 300 }, (_, i) => c.subscribe(`topic-${i}`));
  const outcomes = await Promise.allSettled(subscriptions.map((s) => s.ready));
  assert.equal(outcomes.filter((o) => o.status === "fulfilled").length, 128);
  for (const outcome of outcomes.slice(128)) {
    assert.equal(outcome.status, "rejected");
    const e = (outcome as PromiseRejectedResult).reason;
    assert.ok(e instanceof QkvError && e.status === 429 && e.executed === "no", `${e}`);
    assert.match(e.message, /too many subscriptions: the client holds 128 \(maxSubscriptions\)/);
  }
  await assert.rejects(subscriptions[299][Symbol.asyncIterator]().next(), (e: unknown) => e instanceof QkvError && e.status === 429);
  assert.equal(subscribes(), 128, "only those it holds were sent, each once");
  const pongs = await Promise.all(Array.from({ length: 500 }, () => c.ping()));
  assert.equal(pongs.length, 500, "calls go on beside them");
  assert.ok(FakeSession.mostOpen <= 256, `at most maxStreams open: ${FakeSession.mostOpen}`);
  // Room again once one ends.
  await subscriptions[0].close();
  const again = c.subscribe("again");
  await again.ready;
  assert.equal(subscribes(), 129);
});

// The server may grant fewer streams than maxStreams: a refusal lowers the client's limit to what it
// has open, but never to the subscriptions' streams alone, which would leave calls waiting for ever.
test("calls beside subscriptions go on when the server grants fewer streams than maxStreams", { timeout: 10_000 }, async () => {
  FakeSession.answer = pubsub();
  FakeSession.credit = 100;
  const c = await client({ maxSubscriptions: 99 });
  const subscriptions = Array.from({ length: 99 }, (_, i) => c.subscribe(`topic-${i}`));
  await Promise.all(subscriptions.map((s) => s.ready));
  const pongs = await Promise.all(Array.from({ length: 200 }, () => c.ping()));
  assert.equal(pongs.length, 200);
  assert.ok(FakeSession.refused > 0, "the server's credit was met");
});

// A Subscribe sent again after its timeout was a second subscription (the server counted 768
// Subscribes for 300 subscriptions): one not answered in time is abandoned and fails.
test("a Subscribe not answered within the request timeout fails, its stream stopped, and is not sent again", { timeout: 10_000 }, async () => {
  FakeSession.answer = (request) => (request.requestData.case === "subscribe" ? [] : [ok({ values: [toPb(new Uint8Array(0))] })]);
  const c = await client({ requestTimeoutMs: 50 });
  const subscription = c.subscribe("slow");
  const timedOut = (e: unknown) =>
    e instanceof QkvError && e.status === 0 && /Subscribe to "slow" was not answered within the request timeout \(50 ms\)/.test(e.message);
  await assert.rejects(subscription.ready, timedOut);
  await assert.rejects(subscription[Symbol.asyncIterator]().next(), timedOut);
  assert.equal(subscribes(), 1, "sent once");
  assert.ok(FakeSession.exchanges[0].stopped, "its stream was stopped: the server ends the subscription");
  await c.ping();
});

test("maxSubscriptions must be below maxStreams where WebTransport may be used", async () => {
  await assert.rejects(client({ maxSubscriptions: 256 }), (e: unknown) => e instanceof RangeError && /below maxStreams \(256\)/.test(e.message));
  await assert.rejects(client({ maxStreams: 10, maxSubscriptions: 10 }), RangeError);
  await client({ maxStreams: 512, maxSubscriptions: 300 });
});

// A browser gives no reason when the server refuses the page's origin ("Opening handshake failed."):
// from a page, the error asks about it, naming the flag.
test("a WebTransport session that does not open asks, from a page, whether the server allows its origin", async () => {
  class Refused extends FakeSession {
    override readonly ready = Promise.reject(new Error("Opening handshake failed."));
  }
  const global = globalThis as { WebTransport?: unknown };
  global.WebTransport = Refused;
  try {
    await withFetch(() => Promise.reject(new TypeError("unused")), "https://page.test", () =>
      assert.rejects(
        connect({ url: "https://qkv.test:9528", transport: "webtransport", webTransportUrl: "https://qkv.test:9527/", serverCertificateHashes: [] }),
        /did not open: Opening handshake failed\. \(if the server runs, does it allow this page's origin\? --web-origin https:\/\/page\.test\)/,
      ),
    );
  } finally {
    delete global.WebTransport;
  }
});
