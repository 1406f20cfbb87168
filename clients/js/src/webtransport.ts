/**
 * qkv over WebTransport: a session to the server's QUIC port, each request on a bidirectional stream
 * of its own, as on QUIC (docs/PROTOCOL.md, section 2.1): write one frame, close the writable side,
 * read answer frames until the one with more = false. Streams are independent: no ordering between them.
 */

import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { CommandRequestSchema, CommandResponseSchema, type CommandRequest, type CommandResponse } from "./gen/kv_pb.js";
import { TransportFailure, deferred, tooLarge, type Answer, type Connection } from "./connection.js";
import { DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encodeFrame } from "./frame.js";
import { errorText } from "./websocket.js";

/** The application code of a stream the client abandons (docs/PROTOCOL.md, section 8). */
export const ABANDONED = 0x12;

/** Streams a session has open at once by default (ConnectOptions.maxStreams): the server's default `--max-concurrent-requests`. */
export const DEFAULT_MAX_STREAMS = 256;

/** How long a request waits before trying again to open a stream the browser refused while none of the session's was open. */
const REFUSED_RETRY_MS = { first: 5, max: 250 };

/** What `GET /webtransport-cert` on the web listener answers. */
export interface WebTransportCert {
  /** Lowercase hex of the SHA-256 of the DER certificate WebTransport sessions are presented. */
  sha256: string;
  /** When that certificate expires (RFC 3339). */
  not_after?: string | null;
  /** Whether it is the server's own (a development CA's): then pages pass its hash as serverCertificateHashes. */
  self_issued: boolean;
  /**
   * The host to dial (an IP literal, IPv6 in brackets), or null for the page's own host name: given
   * when the certificate is pinned by hash and the server listens on one address, which the page's
   * host name may not resolve to first (`localhost` is ::1 before 127.0.0.1 in Chromium).
   */
  host?: string | null;
  /** The QUIC port, where sessions go. */
  port: number;
  /** The session's path (`/`). */
  path?: string;
}

/** The bytes of lowercase (or uppercase) hex text. */
export function hexBytes(hex: string): Uint8Array {
  if (!/^([0-9a-fA-F]{2})*$/.test(hex)) throw new SyntaxError(`not hex: ${JSON.stringify(hex)}`);
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return bytes;
}

/* The WebTransport API (https://w3c.github.io/webtransport/), as far as it is used here. */
interface WebTransportSession {
  readonly ready: Promise<unknown>;
  readonly closed: Promise<unknown>;
  createBidirectionalStream(): Promise<{ readable: ReadableStream<Uint8Array>; writable: WritableStream<Uint8Array> }>;
  close(info?: { closeCode?: number; reason?: string }): void;
}

type WebTransportConstructor = new (
  url: string,
  options?: { serverCertificateHashes?: { algorithm: string; value: Uint8Array }[] },
) => WebTransportSession;

/** Opens a session to `url`; a TransportFailure if it does not open within `timeoutMs`. */
export async function openWebTransport(
  url: string,
  options: { serverCertificateHashes?: Uint8Array[]; timeoutMs: number; maxFrameSize?: number; maxStreams?: number },
): Promise<WebTransportConnection> {
  const WebTransport = (globalThis as { WebTransport?: WebTransportConstructor }).WebTransport;
  if (WebTransport === undefined) throw new TransportFailure("this environment has no WebTransport", "no");
  const hashes = options.serverCertificateHashes ?? [];
  let session: WebTransportSession;
  try {
    session = new WebTransport(
      url,
      hashes.length > 0 ? { serverCertificateHashes: hashes.map((value) => ({ algorithm: "sha-256", value })) } : {},
    );
  } catch (e) {
    throw new TransportFailure(`could not open a WebTransport session to ${url}: ${errorText(e)}`, "no", { cause: e });
  }
  session.closed.catch(() => {});
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new TransportFailure(`the WebTransport session to ${url} did not open within ${options.timeoutMs} ms`, "no")),
      options.timeoutMs,
    );
  });
  try {
    await Promise.race([session.ready, timeout]);
  } catch (e) {
    try {
      session.close();
    } catch {
      // It never opened.
    }
    if (e instanceof TransportFailure) throw e;
    // A browser says no more when the server refuses the page's origin (a 403 to the session).
    const page = typeof location === "undefined" ? undefined : location.origin;
    const hint = page === undefined ? "" : ` (if the server runs, does it allow this page's origin? --web-origin ${page})`;
    throw new TransportFailure(`the WebTransport session to ${url} did not open: ${errorText(e)}${hint}`, "no", { cause: e });
  } finally {
    clearTimeout(timer);
  }
  return new WebTransportConnection(session, options.maxFrameSize, options.maxStreams);
}

/**
 * The streams a session may have open at once, and the requests waiting for one, first come first
 * served. A browser refuses a stream beyond the server's stream credit at once rather than waiting
 * for more (Chromium: "Failed to create bidirectional stream"), and the page cannot ask what the
 * credit is: so at most `max` streams are open, and a refusal while the session is up lowers the limit
 * to the streams open then, and the refused request waits, first in line, for one of them to end. The
 * limit grows again by one for every `limit` streams that end (the server may have raised its credit,
 * and credit comes back only once the server has seen a stream's end), up to `max`: refusals stay a
 * small share of the streams opened. A subscription's stream lasts as long as the subscription: it
 * is counted apart, so that the limit leaves a place beside them and no request waits for them to end.
 */
export class StreamSlots {
  private inUse = 0;
  private held = 0;
  private limit: number;
  private ended = 0;
  private waiting: Array<(granted: boolean) => void> = [];
  private gone = false;

  constructor(readonly max: number) {
    this.limit = max;
  }

  /** Streams open (or being opened) now. */
  get open(): number {
    return this.inUse;
  }

  /** Streams open for a subscription's life (`hold`), among those `open`. */
  get lasting(): number {
    return this.held;
  }

  /** How many streams may be open now: `max`, or fewer after refusals. */
  get current(): number {
    return this.limit;
  }

  /**
   * A place for a stream (`first`: ahead of those waiting): `granted` resolves to true once the
   * stream may be opened, to false once the session is gone or the place is withdrawn.
   */
  take(first = false): { granted: Promise<boolean>; withdraw: () => void } {
    if (this.gone) return { granted: Promise.resolve(false), withdraw: () => {} };
    if (this.inUse < this.limit && (first || this.waiting.length === 0)) {
      this.inUse += 1;
      return { granted: Promise.resolve(true), withdraw: () => {} };
    }
    let wake!: (granted: boolean) => void;
    const granted = new Promise<boolean>((resolve) => (wake = resolve));
    if (first) this.waiting.unshift(wake);
    else this.waiting.push(wake);
    const withdraw = () => {
      const i = this.waiting.indexOf(wake);
      if (i < 0) return;
      this.waiting.splice(i, 1);
      wake(false);
    };
    return { granted, withdraw };
  }

  /** A stream that was granted a place is a subscription's: it ends only with it. */
  hold(): void {
    this.held += 1;
  }

  /**
   * A stream that was granted a place has ended (or never opened), a subscription's (`hold`) if
   * `held`: its place goes to the first waiting.
   */
  give(held = false): void {
    if (held) this.held = Math.max(0, this.held - 1);
    this.inUse = Math.max(0, this.inUse - 1);
    this.ended += 1;
    if (this.ended >= this.limit) {
      this.ended = 0;
      this.limit = Math.min(this.max, this.limit + 1);
    }
    this.wake();
  }

  /**
   * The browser refused a stream while the session was up: its place is given back, and the limit
   * becomes the streams still open, and at least one more than the subscriptions' (whose ends would
   * never make room). The caller then takes a place again, first.
   */
  refused(): void {
    this.inUse = Math.max(0, this.inUse - 1);
    this.limit = Math.max(this.held + 1, this.inUse);
    this.ended = 0;
  }

  /** The session is gone: every waiting request is told so. */
  end(): void {
    this.gone = true;
    for (const wake of this.waiting.splice(0)) wake(false);
  }

  private wake(): void {
    while (this.inUse < this.limit && this.waiting.length > 0) {
      this.inUse += 1;
      (this.waiting.shift() as (granted: boolean) => void)(true);
    }
  }
}

export class WebTransportConnection implements Connection {
  readonly transport = "webtransport";
  private isOpen = true;
  private gone = deferred<void>();
  readonly slots: StreamSlots;

  constructor(
    private session: WebTransportSession,
    private maxFrameSize?: number,
    maxStreams = DEFAULT_MAX_STREAMS,
  ) {
    this.slots = new StreamSlots(Math.max(1, maxStreams));
    const end = () => {
      this.isOpen = false;
      this.slots.end();
      this.gone.resolve();
    };
    session.closed.then(end, end);
  }

  get open(): boolean {
    return this.isOpen;
  }

  get closed(): Promise<void> {
    return this.gone.promise;
  }

  send(request: CommandRequest): Answer {
    const payload = toBinary(CommandRequestSchema, request);
    const max = this.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE;
    if (payload.length > max) return tooLarge(payload.length, max);
    return new StreamAnswer(this, this.session, encodeFrame(payload), max, request.requestData.case === "subscribe");
  }

  close(): void {
    if (!this.isOpen) return;
    this.isOpen = false;
    try {
      this.session.close({ closeCode: 0, reason: "" });
    } catch {
      // Already closed.
    }
  }
}

/**
 * One request's stream: opened once the session has a place for it (StreamSlots), the frame written
 * and the stream finished at once, the answer read as asked for. Its place is given back once the
 * stream is done with: its end read, or stopped, or failed.
 */
class StreamAnswer implements Answer {
  sent = false;
  private reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  private decoder: FrameDecoder;
  private frames: Uint8Array[] = [];
  private finished = false;
  private cancelled = false;
  private started: Promise<void>;
  /** Whether this request holds one of the session's places (until `release`). */
  private holding = false;
  /** Whether its place is held for a subscription's life (StreamSlots.hold). */
  private held = false;
  private withdraw: () => void = () => {};

  constructor(
    private connection: WebTransportConnection,
    session: WebTransportSession,
    frame: Uint8Array,
    maxFrameSize?: number,
    /** A Subscribe: its stream lasts as long as the subscription. */
    private lasting = false,
  ) {
    this.decoder = new FrameDecoder(maxFrameSize);
    this.started = this.start(session, frame);
    this.started.catch(() => {});
  }

  private async start(session: WebTransportSession, frame: Uint8Array): Promise<void> {
    const slots = this.connection.slots;
    let stream: Awaited<ReturnType<WebTransportSession["createBidirectionalStream"]>> | undefined;
    let retryMs = REFUSED_RETRY_MS.first;
    for (let refusals = 0; stream === undefined; ) {
      const place = slots.take(refusals > 0);
      this.withdraw = place.withdraw;
      const granted = await place.granted;
      if (this.cancelled) {
        if (granted) slots.give();
        return;
      }
      if (!granted) throw new TransportFailure("the WebTransport session ended before the request was sent", "no");
      try {
        stream = await session.createBidirectionalStream();
      } catch (e) {
        if (!this.connection.open) {
          slots.give();
          throw new TransportFailure(`could not open a stream: ${errorText(e)}`, "no", { cause: e });
        }
        // The session is up: the server's stream credit is spent. Wait for a stream of the session to
        // end, or, with none open but subscriptions', a moment (credit comes back once the server has
        // seen a stream end).
        slots.refused();
        refusals += 1;
        if (slots.open <= slots.lasting) {
          await new Promise((resolve) => setTimeout(resolve, retryMs));
          retryMs = Math.min(REFUSED_RETRY_MS.max, retryMs * 2);
        }
      }
    }
    this.holding = true;
    if (this.lasting) {
      this.held = true;
      slots.hold();
    }
    this.reader = stream.readable.getReader();
    if (this.cancelled) {
      this.stop();
      stream.writable.abort(abandoned()).catch(() => {});
      return;
    }
    const writer = stream.writable.getWriter();
    this.sent = true;
    // The server may refuse the request before reading all of it (413: STOP_SENDING 0x10): the answer
    // says why, so a failed write is not the outcome; reading is.
    writer.write(frame).catch(() => {});
    writer.close().catch(() => {});
  }

  /** The stream is done with: its place goes to the next request. */
  private release(): void {
    if (!this.holding) return;
    this.holding = false;
    this.connection.slots.give(this.held);
  }

  async next(): Promise<CommandResponse | undefined> {
    await this.started;
    for (;;) {
      if (this.cancelled) return undefined;
      const payload = this.frames.shift();
      if (payload !== undefined) {
        const response = this.decode(payload);
        if (!response.more) {
          this.finished = true;
          const extra = this.frames.length > 0 || this.decoder.pending > 0;
          this.frames.length = 0;
          // The stream ends right after its last frame: read its end, so that the stream is done with
          // on both sides; anything after the last frame is not qkv's, and the stream is stopped.
          if (extra) this.stop();
          else void this.readToEnd();
        }
        return response;
      }
      if (this.finished) return undefined;
      const reader = this.reader as ReadableStreamDefaultReader<Uint8Array>;
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (e) {
        this.release();
        throw new TransportFailure(`the request's stream failed: ${errorText(e)}`, "maybe", { cause: e });
      }
      if (this.cancelled) return undefined;
      if (chunk.done) {
        this.release();
        const where = this.decoder.pending > 0 ? "inside a frame" : "before the answer's last frame";
        throw new TransportFailure(`the request's stream ended ${where}`, "maybe");
      }
      try {
        this.frames.push(...this.decoder.push(chunk.value));
      } catch (e) {
        this.stop();
        throw new TransportFailure(`the server sent a bad frame: ${errorText(e)}`, "maybe", { cause: e });
      }
    }
  }

  /** Reads the stream's end after its last frame (the server's FIN), stopping it if more comes. */
  private async readToEnd(): Promise<void> {
    const reader = this.reader;
    if (reader === undefined) return;
    try {
      for (;;) {
        const chunk = await reader.read();
        if (chunk.done) return reader.releaseLock();
        if (chunk.value.length > 0) return this.stop();
      }
    } catch {
      // Reset after its last frame: nothing of the answer is lost.
    } finally {
      this.release();
    }
  }

  private decode(payload: Uint8Array): CommandResponse {
    try {
      return fromBinary(CommandResponseSchema, payload);
    } catch (e) {
      this.stop();
      throw new TransportFailure(`the server sent an undecodable response: ${errorText(e)}`, "maybe", { cause: e });
    }
  }

  cancel(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    this.withdraw();
    if (!this.finished) this.stop();
  }

  /** Stops reading the stream: STOP_SENDING with code 0x12, which ends the request on the server. */
  private stop(): void {
    this.reader?.cancel(abandoned()).catch(() => {});
    this.release();
  }
}

/** The reason that carries the stream error code 0x12, where the browser has WebTransportError. */
function abandoned(): unknown {
  const WebTransportError = (globalThis as { WebTransportError?: new (message?: string, init?: object) => Error })
    .WebTransportError;
  if (WebTransportError === undefined) return undefined;
  try {
    return new WebTransportError("the client abandoned the request", { streamErrorCode: ABANDONED });
  } catch {
    return undefined;
  }
}
