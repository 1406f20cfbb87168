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
  options: { serverCertificateHashes?: Uint8Array[]; timeoutMs: number; maxFrameSize?: number },
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
    throw new TransportFailure(`the WebTransport session to ${url} did not open: ${errorText(e)}`, "no", { cause: e });
  } finally {
    clearTimeout(timer);
  }
  return new WebTransportConnection(session, options.maxFrameSize);
}

export class WebTransportConnection implements Connection {
  readonly transport = "webtransport";
  private isOpen = true;
  private gone = deferred<void>();

  constructor(
    private session: WebTransportSession,
    private maxFrameSize?: number,
  ) {
    const end = () => {
      this.isOpen = false;
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
    return new StreamAnswer(this.session, encodeFrame(payload), max);
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

/** One request's stream: the frame written and the stream finished at once, the answer read as asked for. */
class StreamAnswer implements Answer {
  sent = false;
  private reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  private decoder: FrameDecoder;
  private frames: Uint8Array[] = [];
  private finished = false;
  private cancelled = false;
  private started: Promise<void>;

  constructor(session: WebTransportSession, frame: Uint8Array, maxFrameSize?: number) {
    this.decoder = new FrameDecoder(maxFrameSize);
    this.started = this.start(session, frame);
    this.started.catch(() => {});
  }

  private async start(session: WebTransportSession, frame: Uint8Array): Promise<void> {
    let stream: Awaited<ReturnType<WebTransportSession["createBidirectionalStream"]>>;
    try {
      stream = await session.createBidirectionalStream();
    } catch (e) {
      throw new TransportFailure(`could not open a stream: ${errorText(e)}`, "no", { cause: e });
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
        throw new TransportFailure(`the request's stream failed: ${errorText(e)}`, "maybe", { cause: e });
      }
      if (this.cancelled) return undefined;
      if (chunk.done) {
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
    if (!this.finished) this.stop();
  }

  /** Stops reading the stream: STOP_SENDING with code 0x12, which ends the request on the server. */
  private stop(): void {
    this.reader?.cancel(abandoned()).catch(() => {});
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
