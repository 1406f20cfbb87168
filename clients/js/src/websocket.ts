/**
 * qkv over a WebSocket (`GET /ws` on the web listener): the binary messages carry the byte stream of
 * qkv's TCP transport (docs/PROTOCOL.md, sections 2.2 and 3). Message boundaries mean nothing: a frame
 * may span messages and a message may carry several frames. Requests are pipelined and answered in
 * order, so the answers are matched to a FIFO of the requests sent.
 */

import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { CommandRequestSchema, CommandResponseSchema, type CommandRequest, type CommandResponse } from "./gen/kv_pb.js";
import { Channel, TransportFailure, deferred, tooLarge, type Answer, type Connection } from "./connection.js";
import { FrameDecoder, MAX_WEBSOCKET_MESSAGE, concat, encodeFrame, split } from "./frame.js";

/** How the message of a refusal after which the server closes the connection ends. */
const CLOSING = "; closing the connection";

/** The part of the WebSocket API used here (browsers', node's (undici's), or the `ws` package's). */
export interface WebSocketLike {
  binaryType: string;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code?: number; reason?: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Opens a WebSocket to `url` and resolves once it is open; a TransportFailure if it does not open in time. */
export function openWebSocket(
  url: string,
  WebSocket: WebSocketConstructor,
  options: { timeoutMs: number; maxFrameSize?: number; maxMessage?: number },
): Promise<WebSocketConnection> {
  return new Promise((resolve, reject) => {
    let socket: WebSocketLike;
    try {
      socket = new WebSocket(url);
    } catch (e) {
      reject(new TransportFailure(`could not open a WebSocket to ${url}: ${errorText(e)}`, "no", { cause: e }));
      return;
    }
    socket.binaryType = "arraybuffer";
    const fail = (why: string) => {
      clearTimeout(timer);
      socket.onopen = socket.onerror = socket.onclose = null;
      try {
        socket.close();
      } catch {
        // It never opened.
      }
      reject(new TransportFailure(`the WebSocket to ${url} did not open (${why})`, "no"));
    };
    const timer = setTimeout(() => fail(`not within ${options.timeoutMs} ms`), options.timeoutMs);
    // Browsers follow an error with a close event; node's WebSocket (undici) does not when the
    // handshake fails (a refused origin, an untrusted certificate): the error says it all.
    socket.onerror = (event) => fail(errorText(event));
    socket.onclose = (event) => fail(`closed with code ${event.code ?? "?"}${event.reason ? `: ${event.reason}` : ""}`);
    socket.onopen = () => {
      clearTimeout(timer);
      socket.onopen = socket.onerror = socket.onclose = null;
      resolve(new WebSocketConnection(socket, options.maxFrameSize, options.maxMessage));
    };
  });
}

/** One request's place in the FIFO: the frames of its answer, as they come. */
class PipelinedAnswer implements Answer {
  sent = false;
  private frames = new Channel<CommandResponse>();
  private cancelled = false;

  deliver(response: CommandResponse): void {
    if (this.cancelled) return;
    this.frames.push(response);
    if (!response.more) this.frames.end();
  }

  fail(failure: TransportFailure): void {
    this.frames.fail(failure);
  }

  async next(): Promise<CommandResponse | undefined> {
    const result = await this.frames.next();
    return result.done ? undefined : result.value;
  }

  /** The answer keeps its place in the FIFO (the server sends it anyway); its frames are dropped. */
  cancel(): void {
    this.cancelled = true;
    this.frames.clear();
    this.frames.end();
  }
}

export class WebSocketConnection implements Connection {
  readonly transport = "websocket";
  /** Requests sent and not fully answered, in order: the next frame belongs to the first. */
  private pending: PipelinedAnswer[] = [];
  /** Frames not yet handed to the socket: sent together at the end of the current task. */
  private outgoing: { bytes: Uint8Array; answer: PipelinedAnswer }[] = [];
  private flushing = false;
  private decoder: FrameDecoder;
  private isOpen = true;
  /**
   * The server said it closes the connection (a refusal ending "; closing the connection": a bad frame,
   * shutdown, its memory spent): it executed nothing after it, and nothing more is sent on it.
   */
  private closing = false;
  private gone = deferred<void>();

  constructor(
    private socket: WebSocketLike,
    maxFrameSize?: number,
    private maxMessage = MAX_WEBSOCKET_MESSAGE,
  ) {
    this.decoder = new FrameDecoder(maxFrameSize);
    socket.onmessage = (event) => this.received(event.data);
    socket.onclose = (event) =>
      this.ended(`the server closed the WebSocket (code ${event.code ?? "?"}${event.reason ? `: ${event.reason}` : ""})`);
    // An error ends a WebSocket (browsers follow it with a close event, node's not always).
    socket.onerror = (event) => this.broken(`the WebSocket failed: ${errorText(event)}`);
  }

  get open(): boolean {
    return this.isOpen && !this.closing;
  }

  get closed(): Promise<void> {
    return this.gone.promise;
  }

  /** Requests sent and not fully answered (including those whose answers were abandoned). */
  get inFlight(): number {
    return this.pending.length;
  }

  send(request: CommandRequest): Answer {
    const answer = new PipelinedAnswer();
    if (!this.open) {
      answer.fail(new TransportFailure(this.isOpen ? "the server is closing the WebSocket" : "the WebSocket is closed", "no"));
      return answer;
    }
    const payload = toBinary(CommandRequestSchema, request);
    if (payload.length > this.decoder.maxFrameSize) return tooLarge(payload.length, this.decoder.maxFrameSize);
    this.pending.push(answer);
    this.outgoing.push({ bytes: encodeFrame(payload), answer });
    if (!this.flushing) {
      this.flushing = true;
      queueMicrotask(() => this.flush());
    }
    return answer;
  }

  close(): void {
    this.closeSocket();
    this.ended("the client closed the WebSocket");
  }

  private closeSocket(): void {
    if (!this.isOpen) return;
    this.socket.onclose = null;
    this.socket.onmessage = null;
    try {
      this.socket.close(1000);
    } catch {
      // Closing an already failing socket: it is gone either way.
    }
  }

  /** Sends every queued frame, in messages of at most `maxMessage` bytes (frames may straddle them). */
  private flush(): void {
    this.flushing = false;
    if (!this.isOpen) return;
    const batch = this.outgoing.splice(0);
    for (const { answer } of batch) answer.sent = true;
    try {
      for (const message of split(concat(batch.map((b) => b.bytes)), this.maxMessage)) this.socket.send(message);
    } catch (e) {
      this.broken(`sending on the WebSocket failed: ${errorText(e)}`);
    }
  }

  private received(data: unknown): void {
    if (!this.isOpen) return;
    let bytes: Uint8Array;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else {
      this.broken("the server sent a message that is not binary: qkv's frames travel in binary messages");
      return;
    }
    let payloads: Uint8Array[];
    try {
      payloads = this.decoder.push(bytes);
    } catch (e) {
      this.broken(`the server sent a bad frame: ${errorText(e)}`);
      return;
    }
    for (const payload of payloads) {
      let response: CommandResponse;
      try {
        response = fromBinary(CommandResponseSchema, payload);
      } catch (e) {
        this.broken(`the server sent an undecodable response: ${errorText(e)}`);
        return;
      }
      // docs/PROTOCOL.md, sections 8 and 10: a refusal the server ends the connection after says so.
      const closes = !response.more && response.status !== 200 && response.message.endsWith(CLOSING);
      if (closes) this.closing = true;
      // An answer with no request waiting is a 503 announcing the end of the connection: nothing to do.
      const head = this.pending[0];
      if (head === undefined) continue;
      head.deliver(response);
      if (!response.more) this.pending.shift();
    }
  }

  /** The byte stream cannot be trusted any more: close it. */
  private broken(reason: string): void {
    this.closeSocket();
    this.ended(reason);
  }

  private ended(reason: string): void {
    const failed = this.pending.splice(0);
    this.outgoing.length = 0;
    if (this.isOpen) {
      this.isOpen = false;
      this.socket.onmessage = null;
      this.socket.onclose = null;
    }
    for (const answer of failed) {
      // After a refusal that closes the connection the server executed nothing more on it, however the
      // connection then ends (docs/PROTOCOL.md, sections 8 and 10). A 503 without that ending refused
      // its own request alone, even when the connection ends right after it: the server also closes
      // when it cannot hold an answer, after executing its request.
      const executed = this.closing || !answer.sent ? "no" : "maybe";
      answer.fail(new TransportFailure(reason, executed));
    }
    this.gone.resolve();
  }
}

export function errorText(e: unknown): string {
  if (e instanceof Error) return e.message;
  if (typeof e === "object" && e !== null) {
    const { message, error } = e as { message?: unknown; error?: unknown };
    if (typeof message === "string" && message) return message;
    if (error instanceof Error) return error.message;
    return "an error event";
  }
  return String(e);
}
