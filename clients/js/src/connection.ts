/**
 * What the client needs of a transport: send a request, read its answer frame by frame. WebSocket
 * (websocket.ts) pipelines requests on one byte stream; WebTransport (webtransport.ts) gives each its
 * own stream.
 */

import { create } from "@bufbuild/protobuf";
import { CommandResponseSchema, type CommandRequest, type CommandResponse } from "./gen/kv_pb.js";
import type { Executed } from "./errors.js";

/** The answer to one request, read frame by frame. */
export interface Answer {
  /** The next frame; undefined once the last one (more = false) has been read. Throws a TransportFailure. */
  next(): Promise<CommandResponse | undefined>;
  /** Whether the request may have left this client: false while it certainly has not. */
  readonly sent: boolean;
  /** No more interest: the rest of the answer is discarded (WebTransport: the stream is stopped, 0x12). */
  cancel(): void;
}

export interface Connection {
  readonly transport: "webtransport" | "websocket";
  /** Sends `request`; its answer comes in the order the transport keeps. */
  send(request: CommandRequest): Answer;
  /** False once the connection is closing or gone: nothing more can be sent on it. */
  readonly open: boolean;
  /** Resolves once the connection is gone, whichever side ended it. */
  readonly closed: Promise<void>;
  close(): void;
}

/** The connection failed before the answer was complete. */
export class TransportFailure extends Error {
  constructor(
    message: string,
    /** Whether the request may have run: "no" when it certainly did not. */
    readonly executed: Executed,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "TransportFailure";
  }
}

/**
 * A queue read as an async iterator: items pushed in order, then an end or a failure. It bounds
 * nothing itself: its users do (a request's answer, a subscription's `maxQueued`).
 */
export class Channel<T> {
  private items: T[] = [];
  private readers: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void }[] = [];
  private ended = false;
  private failure: { error: unknown } | undefined;

  get done(): boolean {
    return this.ended;
  }

  /** Items pushed and not yet read. */
  get size(): number {
    return this.items.length;
  }

  push(item: T): void {
    if (this.ended) return;
    const reader = this.readers.shift();
    if (reader) reader.resolve({ value: item, done: false });
    else this.items.push(item);
  }

  /** No more items: readers get those queued, then the end. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    for (const reader of this.readers.splice(0)) reader.resolve({ value: undefined, done: true });
  }

  /** No more items: readers get those queued, then `error`. */
  fail(error: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.failure = { error };
    for (const reader of this.readers.splice(0)) reader.reject(error);
  }

  next(): Promise<IteratorResult<T>> {
    if (this.items.length > 0) return Promise.resolve({ value: this.items.shift() as T, done: false });
    if (this.failure) return Promise.reject(this.failure.error);
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => this.readers.push({ resolve, reject }));
  }

  /** Drops what is queued (an abandoned answer's frames). */
  clear(): void {
    this.items.length = 0;
  }
}

/**
 * The answer to a request the client refuses to send, because its frame is over the server's maximum
 * frame size: a 413, as the server would answer (docs/PROTOCOL.md, section 3), without breaking the
 * connection, which a frame the server refuses unread would (TCP and WebSocket: it closes).
 */
export function tooLarge(length: number, maxFrameSize: number): Answer {
  let answered = false;
  return {
    sent: false,
    async next() {
      if (answered) return undefined;
      answered = true;
      return create(CommandResponseSchema, {
        status: 413,
        message: `the request's frame of ${length} bytes is over the maximum frame size, ${maxFrameSize} bytes: it was not sent`,
      });
    },
    cancel() {
      answered = true;
    },
  };
}

/** A promise and the means to settle it from outside. */
export function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
