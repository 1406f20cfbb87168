/**
 * The client: `connect()` picks a transport (WebTransport, else WebSocket), and `Client` sends each
 * command over it, retries what may be retried, reconnects with backoff, and keeps subscriptions going.
 */

import type { CommandRequest, CommandResponse } from "./gen/kv_pb.js";
import { backoffDelay, reconnectPolicy, type ReconnectOptions, type ReconnectPolicy } from "./backoff.js";
import { hiddenCause, pageOrigin } from "./browser.js";
import { errorFor, isReadOnly, merge, pairsOf, requests, results, text } from "./commands.js";
import { TransportFailure, Channel, deferred, type Answer, type Connection } from "./connection.js";
import { NO_ANSWER, QkvError } from "./errors.js";
import { DEFAULT_MAX_FRAME_SIZE, MAX_WEBSOCKET_MESSAGE } from "./frame.js";
import { fromPb, type Entry, type Value, type ValueLike } from "./value.js";
import { errorText, openWebSocket, type WebSocketConstructor } from "./websocket.js";
import { DEFAULT_MAX_STREAMS, hexBytes, openWebTransport, type WebTransportCert } from "./webtransport.js";

export interface ConnectOptions {
  /** The web listener's origin, e.g. "https://localhost:9528"; default `globalThis.location.origin`. */
  url?: string;
  /**
   * "auto" (the default): WebTransport when `globalThis.WebTransport` exists and the session opens
   * (within min(connectTimeoutMs, 5 s)), else WebSocket.
   */
  transport?: "auto" | "webtransport" | "websocket";
  /** Default "https://<host from /webtransport-cert, else hostname of url>:<its port><its path>". */
  webTransportUrl?: string;
  /** Default: the `sha256` of `${url}/webtransport-cert` when it says `self_issued`, else none. */
  serverCertificateHashes?: Uint8Array[];
  /** A WebSocket constructor (node without a global one); default `globalThis.WebSocket`. */
  WebSocket?: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  /** Reconnecting after the connection is lost: `false` for never; default { 100 ms, 5000 ms, 20 attempts }. */
  reconnect?: false | ReconnectOptions;
  /** Each call's deadline, every attempt included. Default 10000 ms. */
  requestTimeoutMs?: number;
  /** Each attempt to open a connection. Default 10000 ms. */
  connectTimeoutMs?: number;
  /** A Ping is sent after this long without requests, so the server does not close the connection as idle (its default idle timeout is 30 s). 0: never. Default 10000 ms. */
  keepAliveMs?: number;
  /**
   * The server's maximum frame size (`--max-frame-size`): a larger request is refused without being
   * sent (a 413), a larger answer breaks the connection. Default 16 MiB.
   */
  maxFrameSize?: number;
  /**
   * WebSocket: the server's `--websocket-max-message`, the largest message it takes (a larger one
   * ends the connection, code 1009): requests go in messages of at most this many bytes, a frame
   * split over several. Default 64 KiB, the server's default; at least 1 KiB.
   */
  maxMessageSize?: number;
  /**
   * WebTransport: the streams open at once, one per request in flight (a subscription holds one for
   * its life); more requests wait for one to end. Default 256, the server's default
   * `--max-concurrent-requests`. A browser refuses a stream beyond what the server grants rather than
   * waiting, so the client also keeps to fewer when it meets such a refusal: requests then wait for
   * a stream to end, and are not failed.
   */
  maxStreams?: number;
  /**
   * Subscriptions the client holds at once, over either transport; `subscribe()` beyond it fails at
   * once with a QkvError (429), sending nothing. Over WebTransport each holds one of the session's
   * streams for its life, and the server runs at most `--max-concurrent-requests` (256) of a
   * session's streams: so this must be below `maxStreams`, which leaves the rest to calls (a
   * RangeError otherwise, where WebTransport may be used). Over WebSocket each has a WebSocket of its
   * own, and browsers cap the WebSockets open to a host (Chromium: about 255). Default 128, or half
   * of `maxStreams` when that is less.
   */
  maxSubscriptions?: number;
  /**
   * Events each subscription holds that its reader has not taken yet. Beyond it, messages are
   * dropped and counted, and the reader gets a "missed" event with their number where they were
   * dropped, as the server does for a subscriber whose queue is full. Default 1024.
   */
  subscriptionQueue?: number;
}

export type ClientState = "connected" | "reconnecting" | "closed";

export type SubscriptionEvent =
  | { kind: "message"; values: Value[] }
  /**
   * `count` messages were not delivered: the server's queue for this subscriber was full. After a
   * reconnection (`reconnected: true`) the subscription was made again and `count` is 1: messages
   * may have been published meanwhile, how many is not known.
   */
  | { kind: "missed"; count: bigint; reconnected?: boolean };

export interface Subscription extends AsyncIterable<SubscriptionEvent> {
  readonly topic: string;
  /** The server's id of the subscription, once it is made (it changes when it is made again). */
  readonly id: number | undefined;
  /** Resolves once the server has registered the subscription: messages published from then on arrive. */
  readonly ready: Promise<void>;
  /** Unsubscribes (its iterator ends after the messages received before); breaking out of a `for await` does it too. */
  close(): Promise<void>;
}

export interface HgetallOptions {
  /** Start after this key (entries come in key order, by the keys' UTF-8 bytes). Default: from the first. */
  after?: string;
  /** At most this many entries in all; 0 or absent: all of them. */
  limit?: number;
  /**
   * Read the table in requests of this many entries each (`after` = the last key of the previous), so
   * that a long listing neither holds up the requests after it on a WebSocket nor piles up in memory
   * while the loop is slow: at most one request's answer is held. Default 1000; 0: the whole listing
   * in one request (over WebSocket its frames are then held as they arrive, however slowly they are read).
   */
  pageSize?: number;
}

export interface Client {
  /** The transport in use: in "auto" it is chosen again at each reconnection. */
  readonly transport: "webtransport" | "websocket";
  /** Pings the server; `identity` is the client's certificate subject when the server requires one. */
  ping(payload?: Uint8Array): Promise<{ identity?: string; payload: Uint8Array }>;
  /** The key's entry, or undefined when it does not exist. */
  hget(table: string, key: string): Promise<Entry | undefined>;
  /** One entry per key, in order; undefined for a missing key. */
  hmget(table: string, keys: string[]): Promise<(Entry | undefined)[]>;
  /** Writes a key; with `expectedVersion`, only if its version is that (0: only if it does not exist), else a 409 QkvError. */
  hset(
    table: string,
    key: string,
    value: ValueLike,
    options?: { expectedVersion?: bigint | number },
  ): Promise<{ version: bigint; previous?: Value }>;
  /** Writes several keys (not a transaction): each one's new version and previous value, in order. */
  hmset(
    table: string,
    entries: Record<string, ValueLike> | [string, ValueLike][],
  ): Promise<{ versions: bigint[]; previous: (Value | undefined)[] }>;
  /** Deletes a key (a missing key too); with `expectedVersion`, only if its version is that, else a 409 QkvError. */
  hdel(table: string, key: string, options?: { expectedVersion?: bigint | number }): Promise<{ previous?: Value; version?: bigint }>;
  /** Deletes several keys: each one's deleted value, in order (undefined if it did not exist). */
  hmdel(table: string, keys: string[]): Promise<(Value | undefined)[]>;
  hexist(table: string, key: string): Promise<boolean>;
  hmexist(table: string, keys: string[]): Promise<boolean[]>;
  /** The table's entries in key order, one array per page as the server sends them (its answer's frames, or requests of `pageSize`). */
  hgetall(table: string, options?: HgetallOptions): AsyncIterable<Entry[]>;
  /** Publishes a message; resolves to how many subscribers it was queued for. */
  publish(topic: string, values: ValueLike[]): Promise<number>;
  /**
   * Publishes a message: how many subscribers it was queued for (`receivers`), and how many did not
   * get it because their queues on the server were full (`lagging`; they get a "missed" event).
   */
  publishCounts(topic: string, values: ValueLike[]): Promise<{ receivers: number; lagging: number }>;
  /** Subscribes to a topic: an async iterator of its messages (and of missed-message counts). */
  subscribe(topic: string): Subscription;
  /** Closes the connection and every subscription; calls in flight fail with status 0. */
  close(): void;
  /** "connected" | "reconnecting" | "closed"; for a UI. */
  readonly state: ClientState;
  onstatechange?: (state: ClientState) => void;
  /** Once the client is "closed": why (closed by `close()`, or reconnecting given up, and what it met). */
  readonly closedError: QkvError | undefined;
}

/** How many times a call is sent at most (docs/PROTOCOL.md, section 13). */
const MAX_ATTEMPTS = 3;

/** Events a subscription holds for its reader by default (ConnectOptions.subscriptionQueue). */
const DEFAULT_SUBSCRIPTION_QUEUE = 1024;

/**
 * Subscriptions a client holds at once by default (ConnectOptions.maxSubscriptions): half of the
 * default streams of a WebTransport session, so that calls keep the other half, and half of what
 * Chromium lets a browser open of WebSockets to one host.
 */
const DEFAULT_MAX_SUBSCRIPTIONS = 128;

/** Entries per request of an Hgetall by default (HgetallOptions.pageSize). */
const DEFAULT_PAGE_SIZE = 1000;

/** The largest `limit` of an Hgetall: the protocol's is a uint32. */
const MAX_LIMIT = 0xffffffff;

/** In "auto", how long WebTransport gets before the client falls back to WebSocket. */
const WEBTRANSPORT_AUTO_TIMEOUT_MS = 5000;

interface Settings {
  base: string;
  webTransportUrl?: string;
  serverCertificateHashes?: Uint8Array[];
  WebSocket?: WebSocketConstructor;
  reconnect?: ReconnectPolicy;
  requestTimeoutMs: number;
  connectTimeoutMs: number;
  keepAliveMs: number;
  maxFrameSize: number;
  maxMessageSize: number;
  maxStreams: number;
  maxSubscriptions: number;
  subscriptionQueue: number;
}

/** Connects to a qkv server's web listener; rejects with a QkvError (status 0) if no transport opens. */
export async function connect(options: ConnectOptions = {}): Promise<Client> {
  const settings = settingsOf(options);
  const choice = options.transport ?? "auto";
  if (!["auto", "webtransport", "websocket"].includes(choice)) {
    throw new TypeError(`transport is "auto", "webtransport" or "websocket", not ${JSON.stringify(choice)}`);
  }
  const webTransportPossible =
    choice === "webtransport" || (choice === "auto" && typeof (globalThis as { WebTransport?: unknown }).WebTransport === "function");
  if (webTransportPossible && settings.maxSubscriptions >= settings.maxStreams) {
    throw new RangeError(
      `maxSubscriptions (${settings.maxSubscriptions}) must be below maxStreams (${settings.maxStreams}): over WebTransport ` +
        "each subscription holds a stream for its life, and calls need the others",
    );
  }
  // The same choice at every reconnection: in "auto", WebTransport first again, so that a client that
  // connected over it still falls back to WebSocket once UDP is blocked.
  const open =
    choice === "auto"
      ? () => openAuto(settings)
      : choice === "webtransport"
        ? () => named("WebTransport", openWebTransportOf(settings, settings.connectTimeoutMs))
        : () => named("WebSocket", openWebSocketOf(settings));
  let first: Connection;
  try {
    first = await open();
  } catch (e) {
    throw new QkvError(`could not connect to qkv: ${errorText(e)}`, { status: NO_ANSWER, executed: "no", cause: e });
  }
  return new QkvClient(settings, open, first);
}

/**
 * "auto": WebTransport when the environment has it and the session opens within
 * min(connectTimeoutMs, 5 s), else WebSocket; a failure says why each failed.
 */
async function openAuto(settings: Settings): Promise<Connection> {
  let tried = "";
  if (typeof (globalThis as { WebTransport?: unknown }).WebTransport === "function") {
    try {
      return await openWebTransportOf(settings, Math.min(settings.connectTimeoutMs, WEBTRANSPORT_AUTO_TIMEOUT_MS));
    } catch (e) {
      tried = `WebTransport: ${errorText(e)}; `;
    }
  }
  return named("WebSocket", openWebSocketOf(settings), tried);
}

/** `opening`, its failure's message prefixed with the transport's name (and what was tried before). */
async function named(transport: string, opening: Promise<Connection>, before = ""): Promise<Connection> {
  try {
    return await opening;
  } catch (e) {
    throw new TransportFailure(`${before}${transport}: ${errorText(e)}`, "no", { cause: e });
  }
}

function settingsOf(options: ConnectOptions): Settings {
  const base = options.url ?? (globalThis as { location?: { origin?: string } }).location?.origin;
  if (base === undefined) throw new TypeError("options.url is needed outside a web page: the web listener's origin, such as https://localhost:9528");
  const number = (name: keyof ConnectOptions, fallback: number) => {
    const given = options[name];
    if (given === undefined) return fallback;
    if (typeof given !== "number" || !(given >= 0)) throw new RangeError(`${name} must be a number ≥ 0`);
    return given;
  };
  const maxStreams = Math.max(1, number("maxStreams", DEFAULT_MAX_STREAMS));
  const maxMessageSize = number("maxMessageSize", MAX_WEBSOCKET_MESSAGE);
  if (maxMessageSize < 1024) throw new RangeError("maxMessageSize must be at least 1024 (the server's --websocket-max-message is)");
  return {
    base: base.endsWith("/") ? base : `${base}/`,
    webTransportUrl: options.webTransportUrl,
    serverCertificateHashes: options.serverCertificateHashes,
    WebSocket: options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket,
    reconnect: reconnectPolicy(options.reconnect),
    requestTimeoutMs: number("requestTimeoutMs", 10_000),
    connectTimeoutMs: number("connectTimeoutMs", 10_000),
    keepAliveMs: number("keepAliveMs", 10_000),
    maxFrameSize: number("maxFrameSize", DEFAULT_MAX_FRAME_SIZE),
    maxMessageSize,
    maxStreams,
    maxSubscriptions: number("maxSubscriptions", Math.min(DEFAULT_MAX_SUBSCRIPTIONS, Math.floor(maxStreams / 2))),
    subscriptionQueue: Math.max(1, number("subscriptionQueue", DEFAULT_SUBSCRIPTION_QUEUE)),
  };
}

/** The WebSocket URL of the web listener at `base`: its path `ws`, in scheme ws: or wss:. */
export function webSocketUrl(base: string): string {
  const url = new URL("ws", base.endsWith("/") ? base : `${base}/`);
  url.protocol = url.protocol === "http:" ? "ws:" : url.protocol === "https:" ? "wss:" : url.protocol;
  return url.href;
}

function openWebSocketOf(settings: Settings): Promise<Connection> {
  if (settings.WebSocket === undefined) {
    return Promise.reject(
      new TransportFailure("this environment has no WebSocket: pass options.WebSocket (node 20: run it with --experimental-websocket)", "no"),
    );
  }
  return openWebSocket(webSocketUrl(settings.base), settings.WebSocket, {
    timeoutMs: settings.connectTimeoutMs,
    maxFrameSize: settings.maxFrameSize,
    maxMessage: settings.maxMessageSize,
  }).catch(async (e: unknown) => {
    // A browser says nothing of a refused handshake (a 403 for the page's origin): ask what it may.
    const cause = e instanceof TransportFailure && pageOrigin() !== undefined ? await hiddenCause(settings.base, settings.connectTimeoutMs) : "";
    throw cause === "" ? e : new TransportFailure(`${errorText(e)}${cause}`, "no", { cause: e });
  });
}

async function openWebTransportOf(settings: Settings, timeoutMs: number): Promise<Connection> {
  let url = settings.webTransportUrl;
  let hashes = settings.serverCertificateHashes;
  if (url === undefined || hashes === undefined) {
    const cert = await webTransportCert(settings.base, timeoutMs);
    url ??= `https://${cert.host ?? new URL(settings.base).hostname}:${cert.port}${cert.path ?? "/"}`;
    hashes ??= cert.self_issued ? [hexBytes(cert.sha256)] : [];
  }
  return openWebTransport(url, {
    serverCertificateHashes: hashes,
    timeoutMs,
    maxFrameSize: settings.maxFrameSize,
    maxStreams: settings.maxStreams,
  });
}

/**
 * `GET /webtransport-cert` of the web listener at `base`: its certificate's hash and the QUIC port.
 * Rejects with a QkvError: the HTTP status the server answered, or 0 when no usable answer came (in a
 * page, with the likely cause the browser hides).
 */
export async function webTransportCert(base: string, timeoutMs = 10_000): Promise<WebTransportCert> {
  const url = new URL("webtransport-cert", base.endsWith("/") ? base : `${base}/`);
  const signal = typeof AbortSignal.timeout === "function" ? AbortSignal.timeout(timeoutMs) : undefined;
  const failure = (message: string, status = NO_ANSWER, cause?: unknown) => new QkvError(message, { status, executed: "no", cause });
  let response: Response;
  try {
    response = await fetch(url, { signal, cache: "no-store" });
  } catch (e) {
    throw failure(`could not fetch ${url}: ${errorText(e)}${await hiddenCause(base, timeoutMs)}`, NO_ANSWER, e);
  }
  if (!response.ok) throw failure(`${url} answered ${response.status}`, response.status);
  let cert: WebTransportCert;
  try {
    cert = (await response.json()) as WebTransportCert;
  } catch (e) {
    throw failure(`${url} did not answer JSON: ${errorText(e)}`, NO_ANSWER, e);
  }
  if (typeof cert?.port !== "number" || typeof cert.sha256 !== "string") {
    throw failure(`${url} did not answer a certificate hash and a port`);
  }
  return cert;
}

/** A timer that `wake()` ends early. */
class Sleep {
  private wakers = new Set<() => void>();

  wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakers.add(done);
    });
  }

  wake(): void {
    for (const waker of [...this.wakers]) waker();
  }
}

/** Rejects with `onTimeout()` if `work` has not settled by `deadline` (a Date.now() time). */
function beforeDeadline<T>(work: Promise<T>, deadline: number, onTimeout: () => unknown): Promise<T> {
  if (deadline === Infinity) return work;
  work.catch(() => {});
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(onTimeout()), Math.max(0, deadline - Date.now()));
    work.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

class QkvClient implements Client {
  onstatechange?: (state: ClientState) => void;
  private currentState: ClientState = "connected";
  private current: "webtransport" | "websocket";
  private connection: Connection | undefined;
  private waiters = new Set<{ resolve: (c: Connection) => void; reject: (e: unknown) => void }>();
  private closedBy: QkvError | undefined;
  private subscriptions = new Set<QkvSubscription>();
  private keepAlive: ReturnType<typeof setTimeout> | undefined;
  /** When the last request was sent (Date.now()). */
  private lastSent = Date.now();
  readonly sleep = new Sleep();

  constructor(
    readonly settings: Settings,
    readonly openConnection: () => Promise<Connection>,
    first: Connection,
  ) {
    this.current = first.transport;
    this.adopt(first);
  }

  /** The transport of the connection, or of the last one while reconnecting (in "auto" it may change then). */
  get transport(): "webtransport" | "websocket" {
    return this.current;
  }

  get state(): ClientState {
    return this.currentState;
  }

  private setState(state: ClientState): void {
    if (state === this.currentState) return;
    this.currentState = state;
    try {
      this.onstatechange?.(state);
    } catch {
      // A UI's callback failing is not the client's failure.
    }
  }

  private adopt(connection: Connection): void {
    this.connection = connection;
    this.current = connection.transport;
    this.setState("connected");
    for (const waiter of this.waiters) waiter.resolve(connection);
    this.waiters.clear();
    void connection.closed.then(() => {
      if (this.connection === connection) this.lost();
    });
    this.scheduleKeepAlive();
  }

  /** The connection is gone: reconnect (with backoff) unless the client is closed or told not to. */
  private lost(): void {
    this.connection = undefined;
    if (this.closedBy !== undefined) return;
    const policy = this.settings.reconnect;
    if (policy === undefined) {
      this.shutDown(new QkvError("the connection was lost, and reconnecting is off", { status: NO_ANSWER, executed: "no" }));
      return;
    }
    this.setState("reconnecting");
    void this.reconnect(policy);
  }

  private async reconnect(policy: ReconnectPolicy): Promise<void> {
    let failure: unknown;
    for (let attempt = 0; attempt < policy.maxAttempts; attempt++) {
      await this.sleep.wait(backoffDelay(attempt, policy));
      if (this.closedBy !== undefined) return;
      try {
        const connection = await this.openConnection();
        if (this.closedBy !== undefined) {
          connection.close();
          return;
        }
        this.adopt(connection);
        return;
      } catch (e) {
        failure = e;
      }
    }
    const why = failure === undefined ? "" : `: ${errorText(failure)}`;
    this.shutDown(
      new QkvError(`the connection was lost and ${policy.maxAttempts} attempts to reconnect failed${why}`, {
        status: NO_ANSWER,
        executed: "no",
        cause: failure,
      }),
    );
  }

  /** The client is closed for good: calls waiting for a connection fail with `error`. */
  private shutDown(error: QkvError): void {
    this.closedBy ??= error;
    clearTimeout(this.keepAlive);
    this.sleep.wake();
    for (const waiter of this.waiters) waiter.reject(this.closedBy);
    this.waiters.clear();
    this.setState("closed");
  }

  close(): void {
    if (this.closedBy !== undefined) return;
    const closed = new QkvError("the client is closed", { status: NO_ANSWER, executed: "no" });
    this.shutDown(closed);
    // Each subscription's iterator throws it (after the events it holds), so that a reader tells a
    // closed client from an unsubscribe, which ends the iterator.
    for (const subscription of this.subscriptions) subscription.abort(closed);
    this.connection?.close();
    this.connection = undefined;
  }

  /** The connection to send on: the current one, or the next one, if it comes before `deadline`. */
  connectionBefore(deadline: number): Promise<Connection> {
    if (this.closedBy !== undefined) return Promise.reject(this.closedBy);
    if (this.connection?.open) return Promise.resolve(this.connection);
    return new Promise((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const waiter = {
        resolve: (c: Connection) => {
          clearTimeout(timer);
          resolve(c);
        },
        reject: (e: unknown) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      if (deadline !== Infinity) {
        timer = setTimeout(() => {
          this.waiters.delete(waiter);
          reject(new QkvError("no connection to the server within the request timeout", { status: NO_ANSWER, executed: "no" }));
        }, Math.max(0, deadline - Date.now()));
      }
      this.waiters.add(waiter);
    });
  }

  /**
   * A connection for a subscription: over WebTransport the client's, over WebSocket one of its own
   * (a subscription's answer would hold up the requests behind it on the client's byte stream).
   */
  async subscriptionConnection(): Promise<Connection> {
    if (this.closedBy !== undefined) throw this.closedBy;
    if (this.transport === "webtransport") {
      const shared = await this.connectionBefore(Infinity);
      if (shared.transport === "webtransport") return shared;
    }
    return named("WebSocket", openWebSocketOf(this.settings));
  }

  /** A Ping once no request has been sent for keepAliveMs. */
  private scheduleKeepAlive(): void {
    clearTimeout(this.keepAlive);
    const every = this.settings.keepAliveMs;
    if (every <= 0 || this.closedBy !== undefined) return;
    this.keepAlive = setTimeout(
      () => {
        const connection = this.connection;
        if (Date.now() - this.lastSent >= every && connection?.open) {
          this.lastSent = Date.now();
          // No answer within the request timeout: the connection is gone without a word (a network
          // that dropped it, a peer that vanished). Close it, and so reconnect.
          this.ping().catch((e: unknown) => {
            if (e instanceof QkvError && e.status === NO_ANSWER && this.connection === connection) connection.close();
          });
        }
        this.scheduleKeepAlive();
      },
      Math.max(0, this.lastSent + every - Date.now()),
    );
  }

  /**
   * Sends `request` and returns its whole answer (every frame merged), sending it again, up to 3 times
   * within the request timeout, when it certainly was not executed (no connection, a lost connection
   * before it was sent, a 503) or changes nothing (docs/PROTOCOL.md, section 13).
   */
  async call(request: CommandRequest): Promise<CommandResponse> {
    const readOnly = isReadOnly(request);
    const deadline = Date.now() + this.settings.requestTimeoutMs;
    for (let attempt = 1; ; attempt++) {
      const connection = await this.connectionBefore(deadline);
      const answer = connection.send(request);
      this.lastSent = Date.now();
      let response: CommandResponse;
      try {
        response = await this.whole(answer, deadline);
      } catch (e) {
        if (!(e instanceof TransportFailure)) throw e;
        const again = (e.executed === "no" || readOnly) && attempt < MAX_ATTEMPTS && this.closedBy === undefined;
        if (again && Date.now() < deadline) continue;
        throw new QkvError(e.message, { status: NO_ANSWER, executed: e.executed, cause: e });
      }
      if (response.status === 503 && attempt < MAX_ATTEMPTS && this.closedBy === undefined) {
        const wait = backoffDelay(attempt, this.settings.reconnect);
        if (Date.now() + wait < deadline) {
          await this.sleep.wait(wait);
          continue;
        }
      }
      return response;
    }
  }

  /** Every frame of `answer`, merged; a QkvError (status 0) at `deadline`. */
  private whole(answer: Answer, deadline: number): Promise<CommandResponse> {
    const read = async () => {
      const frames: CommandResponse[] = [];
      for (;;) {
        const frame = await answer.next();
        if (frame === undefined) break;
        frames.push(frame);
      }
      if (frames.length === 0) throw new TransportFailure("the answer was abandoned", answer.sent ? "maybe" : "no");
      return merge(frames);
    };
    return beforeDeadline(read(), deadline, () => {
      answer.cancel();
      return this.timedOut(answer);
    });
  }

  timedOut(answer: Answer): QkvError {
    return new QkvError(`no answer within the request timeout (${this.settings.requestTimeoutMs} ms)`, {
      status: NO_ANSWER,
      executed: answer.sent ? "maybe" : "no",
    });
  }

  async ping(payload?: Uint8Array): Promise<{ identity?: string; payload: Uint8Array }> {
    return results.ping(await this.call(requests.ping(payload)));
  }

  async hget(table: string, key: string): Promise<Entry | undefined> {
    return results.hget(await this.call(requests.hget(table, key)), key);
  }

  async hmget(table: string, keys: string[]): Promise<(Entry | undefined)[]> {
    return results.hmget(await this.call(requests.hmget(table, keys)), keys);
  }

  async hset(
    table: string,
    key: string,
    value: ValueLike,
    options?: { expectedVersion?: bigint | number },
  ): Promise<{ version: bigint; previous?: Value }> {
    return results.hset(await this.call(requests.hset(table, key, value, options?.expectedVersion)), key);
  }

  async hmset(
    table: string,
    entries: Record<string, ValueLike> | [string, ValueLike][],
  ): Promise<{ versions: bigint[]; previous: (Value | undefined)[] }> {
    const pairs = pairsOf(entries);
    return results.hmset(await this.call(requests.hmset(table, pairs)), pairs.length);
  }

  async hdel(
    table: string,
    key: string,
    options?: { expectedVersion?: bigint | number },
  ): Promise<{ previous?: Value; version?: bigint }> {
    return results.hdel(await this.call(requests.hdel(table, key, options?.expectedVersion)), key);
  }

  async hmdel(table: string, keys: string[]): Promise<(Value | undefined)[]> {
    return results.hmdel(await this.call(requests.hmdel(table, keys)), keys.length);
  }

  async hexist(table: string, key: string): Promise<boolean> {
    return results.hexist(await this.call(requests.hexist(table, key)));
  }

  async hmexist(table: string, keys: string[]): Promise<boolean[]> {
    return results.hmexist(await this.call(requests.hmexist(table, keys)), keys.length);
  }

  async publish(topic: string, values: ValueLike[]): Promise<number> {
    return (await this.publishCounts(topic, values)).receivers;
  }

  async publishCounts(topic: string, values: ValueLike[]): Promise<{ receivers: number; lagging: number }> {
    return results.publish(await this.call(requests.publish(topic, values)));
  }

  hgetall(table: string, options: HgetallOptions = {}): AsyncIterable<Entry[]> {
    const { after = "", limit = 0, pageSize = DEFAULT_PAGE_SIZE } = options;
    text("table", table);
    text("after", after);
    for (const [name, n] of [["limit", limit], ["pageSize", pageSize]] as const) {
      if (!Number.isInteger(n) || n < 0 || n > MAX_LIMIT) throw new RangeError(`${name} must be an integer from 0 to 2^32 - 1`);
    }
    return { [Symbol.asyncIterator]: () => this.scan(table, after, limit, pageSize) };
  }

  /**
   * The entries of `table` after `after`, at most `limit` (0: all), each frame's as it arrives; in
   * requests of `pageSize` (0: one request). A request cut off by a lost connection is sent again
   * from the last key received (a listing changes nothing, and is weakly consistent anyway).
   *
   * The empty key sorts first, and an empty `after` means "from the first key": no request can start
   * after the empty key (docs/PROTOCOL.md, section 6, Hgetall). Once it has been received, the next
   * request starts from the first key again, asks for one entry more, and drops the empty key, so
   * that each key comes once whatever the page size.
   */
  private async *scan(table: string, after: string, limit: number, pageSize: number): AsyncGenerator<Entry[]> {
    let cursor = after;
    /** The empty key has been received: `cursor` "" means after it, not from the first key. */
    let pastEmptyKey = false;
    let remaining = limit; // 0: no limit
    let attempt = 1;
    for (;;) {
      const asked = pageSize > 0 ? (remaining > 0 ? Math.min(pageSize, remaining) : pageSize) : remaining;
      const skipEmptyKey = pastEmptyKey && cursor === "";
      const wanted = skipEmptyKey && asked > 0 ? Math.min(asked + 1, MAX_LIMIT) : asked;
      const deadline = () => Date.now() + this.settings.requestTimeoutMs;
      const connection = await this.connectionBefore(deadline());
      const answer = connection.send(requests.hgetall(table, cursor, wanted));
      this.lastSent = Date.now();
      /** Entries of this request's answer, the empty key dropped included; and those yielded. */
      let received = 0;
      let kept = 0;
      let complete = false;
      try {
        for (;;) {
          let frame: CommandResponse | undefined;
          try {
            frame = await beforeDeadline(answer.next(), deadline(), () => this.timedOut(answer));
          } catch (e) {
            if (!(e instanceof TransportFailure)) throw e;
            if (attempt >= MAX_ATTEMPTS || this.closedBy !== undefined) {
              throw new QkvError(e.message, { status: NO_ANSWER, executed: "no", cause: e });
            }
            break;
          }
          if (frame === undefined) throw new QkvError("the listing was abandoned", { status: NO_ANSWER, executed: "no" });
          if (frame.status === 503 && received === 0 && !frame.more && attempt < MAX_ATTEMPTS) break;
          let entries = results.hgetall(frame);
          const first = received === 0;
          received += entries.length;
          if (skipEmptyKey) {
            if (first && entries[0]?.key === "") entries = entries.slice(1);
            // The empty key deleted since it was received: the entry asked for in its place belongs
            // to the next page (a limit must not be overrun).
            if (asked > 0) entries = entries.slice(0, Math.max(0, asked - kept));
          }
          kept += entries.length;
          if (entries.length > 0) {
            cursor = entries[entries.length - 1].key;
            if (cursor === "") pastEmptyKey = true;
            if (remaining > 0) remaining -= entries.length;
            attempt = 1;
            yield entries;
          }
          if (!frame.more) {
            complete = true;
            break;
          }
        }
      } finally {
        if (!complete) answer.cancel();
      }
      if (!complete) {
        // Cut off (or a 503): the rest of it, from the last key received.
        attempt++;
        await this.sleep.wait(backoffDelay(attempt, this.settings.reconnect));
        continue;
      }
      if (pageSize === 0 || received < wanted || (limit > 0 && remaining === 0)) return;
    }
  }

  subscribe(topic: string): Subscription {
    text("topic", topic);
    const max = this.settings.maxSubscriptions;
    const refusal =
      this.closedBy ??
      (this.subscriptions.size < max
        ? undefined
        : new QkvError(
            `too many subscriptions: the client holds ${max} (maxSubscriptions), and each holds a ` +
              `${this.current === "webtransport" ? "stream of the session" : "WebSocket"} for its life; close one, or raise maxSubscriptions`,
            { status: 429, executed: "no" },
          ));
    const subscription = new QkvSubscription(this, topic, refusal);
    if (refusal === undefined) this.subscriptions.add(subscription);
    return subscription;
  }

  forget(subscription: QkvSubscription): void {
    this.subscriptions.delete(subscription);
  }

  get closedError(): QkvError | undefined {
    return this.closedBy;
  }
}

class QkvSubscription implements Subscription {
  id: number | undefined;
  readonly ready: Promise<void>;
  private readied = deferred<void>();
  private events = new Channel<SubscriptionEvent>();
  /** Messages dropped because `events` was full, not yet reported as a "missed" event. */
  private dropped = 0n;
  private closing = false;
  /** Why the subscription was ended without an unsubscribe (the client was closed). */
  private abortedBy: QkvError | undefined;
  /** The subscription's own connection (WebSocket). */
  private own: Connection | undefined;
  /** The current Subscribe's answer, and whether it is going (between its first and last frames). */
  private answer: Answer | undefined;
  private active = false;
  private sleep = new Sleep();
  private finished = deferred<void>();

  /** Made by `client.subscribe`, which passes `refusal` instead when the subscription may not be made: then nothing is sent. */
  constructor(
    private client: QkvClient,
    readonly topic: string,
    refusal?: QkvError,
  ) {
    this.ready = this.readied.promise;
    this.ready.catch(() => {});
    if (refusal === undefined) {
      void this.run();
      return;
    }
    this.closing = true;
    this.abortedBy = refusal;
    this.events.fail(refusal);
    this.readied.reject(refusal);
    this.finished.resolve();
  }

  [Symbol.asyncIterator](): AsyncIterator<SubscriptionEvent> {
    return {
      next: () => {
        // Messages dropped after everything now queued: reported once the reader has caught up.
        if (this.events.size === 0 && this.dropped > 0n && !this.events.done) {
          const count = this.dropped;
          this.dropped = 0n;
          return Promise.resolve({ value: { kind: "missed", count }, done: false });
        }
        return this.events.next();
      },
      return: async () => {
        await this.close();
        return { value: undefined, done: true };
      },
    };
  }

  /** Makes the subscription, and makes it again after its connection is lost, while the reconnect policy allows. */
  private async run(): Promise<void> {
    const policy = this.client.settings.reconnect;
    let attempt = 0;
    let madeBefore = false;
    try {
      while (!this.closing) {
        let failure: unknown;
        try {
          const connection = await this.client.subscriptionConnection();
          if (connection.transport === "websocket") this.own = connection;
          if (this.closing) {
            // Closed while its WebSocket was opening: close() looked for it before it was there.
            if (connection.transport === "websocket") connection.close();
            break;
          }
          const answer = connection.send(requests.subscribe(this.topic));
          this.answer = answer;
          const deadline = Date.now() + this.client.settings.requestTimeoutMs;
          // Not answered in time: abandoned (its stream stopped, its WebSocket closed, which ends it
          // on the server if it got there). A first Subscribe then fails, never sent again: a second
          // could only add to what kept the first waiting (a session's streams all held). One made
          // again after a lost connection is tried again after the reconnect policy's pause, as a
          // lost connection is: a server busy recovering (a Redis failover) must not end a
          // long-lived subscription.
          const first = await beforeDeadline(answer.next(), deadline, () => {
            answer.cancel();
            const message =
              `the Subscribe to ${JSON.stringify(this.topic)} was not answered within the request timeout ` +
              `(${this.client.settings.requestTimeoutMs} ms)`;
            return madeBefore
              ? new TransportFailure(message, "maybe")
              : new QkvError(`${message}: the subscription was abandoned`, { status: NO_ANSWER, executed: "maybe" });
          });
          if (first === undefined) throw new TransportFailure("the Subscribe's answer ended before it began", "maybe");
          if (first.status !== 200 || !first.more) {
            // Refused: only a 503 (nothing executed, for want of a resource that comes back) is worth retrying.
            if (first.status !== 503 || policy === undefined) throw errorFor(first);
            failure = errorFor(first);
          } else {
            this.id = results.subscribed(first);
            this.active = true;
            this.readied.resolve();
            if (madeBefore) this.offer({ kind: "missed", count: 1n, reconnected: true });
            madeBefore = true;
            attempt = 0;
            const last = await this.pump(answer);
            this.active = false;
            if (this.closing) break;
            // 429: dropped for not keeping up; anything else (410 shutting down, 200 the connection ending): make it again.
            if (last.status === 429 || policy === undefined) throw errorFor(last);
            failure = errorFor(last);
          }
        } catch (e) {
          this.active = false;
          if (this.closing) break;
          if (!(e instanceof TransportFailure)) throw e;
          failure = e;
        } finally {
          if (!this.closing) this.own?.close();
        }
        if (policy === undefined || attempt >= policy.maxAttempts) {
          throw failure instanceof QkvError
            ? failure
            : new QkvError(`the subscription to ${JSON.stringify(this.topic)} was lost: ${errorText(failure)}`, {
                status: NO_ANSWER,
                executed: "maybe",
                cause: failure,
              });
        }
        await this.sleep.wait(backoffDelay(attempt++, policy));
      }
      this.flushDropped();
      this.events.end();
      this.readied.reject(this.abortedBy ?? new QkvError("the subscription was closed", { status: NO_ANSWER, executed: "no" }));
    } catch (e) {
      const error = e instanceof QkvError ? e : new QkvError(errorText(e), { status: NO_ANSWER, executed: "maybe", cause: e });
      this.readied.reject(error);
      this.flushDropped();
      this.events.fail(error);
    } finally {
      this.client.forget(this);
      this.finished.resolve();
    }
  }

  /** Hands the subscription's messages on until its last frame, which it returns. */
  private async pump(answer: Answer): Promise<CommandResponse> {
    for (;;) {
      const frame = await answer.next();
      if (frame === undefined) throw new TransportFailure("the subscription's answer ended without its last frame", "maybe");
      if (!frame.more) return frame;
      if (frame.missed > 0n) this.offer({ kind: "missed", count: frame.missed });
      else this.offer({ kind: "message", values: frame.values.map(fromPb).filter((v): v is Value => v !== undefined) });
    }
  }

  /**
   * Queues `event` for the reader, or, when it holds `subscriptionQueue` events already, drops it and
   * counts the messages it stands for: a bounded queue, whatever the transport delivers (a WebSocket
   * cannot be told to wait).
   */
  private offer(event: SubscriptionEvent): void {
    const room = this.client.settings.subscriptionQueue - this.events.size;
    if (room >= (this.dropped > 0n ? 2 : 1)) {
      if (this.dropped > 0n) {
        this.events.push({ kind: "missed", count: this.dropped });
        this.dropped = 0n;
      }
      this.events.push(event);
    } else {
      this.dropped += event.kind === "missed" ? event.count : 1n;
    }
  }

  async close(): Promise<void> {
    if (this.closing) return this.finished.promise;
    this.closing = true;
    this.sleep.wake();
    const { id, answer, own } = this;
    let unsubscribed = false;
    if (this.active && id !== undefined) {
      // Unsubscribe: the subscription's answer ends with its last frame (the messages before it are
      // handed on), then the Unsubscribe's answer comes.
      try {
        if (own !== undefined) {
          const unsubscribe = own.send(requests.unsubscribe(this.topic, id));
          const deadline = Date.now() + this.client.settings.requestTimeoutMs;
          await beforeDeadline(drain(unsubscribe), deadline, () => new Error("timeout"));
        } else {
          await this.client.call(requests.unsubscribe(this.topic, id));
        }
        unsubscribed = true;
      } catch {
        // The connection is gone, or the subscription ended on its own: nothing is left to undo.
      }
    }
    // Abandoned instead (a WebTransport stream stopped, a WebSocket closed): the server removes it at once.
    if (!unsubscribed) answer?.cancel();
    await this.finished.promise;
    own?.close();
  }

  /** The count of messages dropped, as the reader's last event before the end. */
  private flushDropped(): void {
    if (this.dropped === 0n) return;
    this.events.push({ kind: "missed", count: this.dropped });
    this.dropped = 0n;
  }

  /**
   * Ends the subscription without unsubscribing (its connection is going away): its iterator throws
   * `error` after the events it holds, and `ready`, if pending, rejects with it.
   */
  abort(error: QkvError): void {
    if (this.closing) return;
    this.closing = true;
    this.abortedBy = error;
    this.sleep.wake();
    this.answer?.cancel();
    this.own?.close();
    this.flushDropped();
    this.events.fail(error);
  }
}

async function drain(answer: Answer): Promise<void> {
  while ((await answer.next()) !== undefined);
}
