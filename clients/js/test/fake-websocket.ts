// A stand-in for the server's `/ws` in unit tests: WebSockets that carry qkv's byte stream to a
// handler answering each request in order, and hand the answers back cut at random places, so that
// frames straddle messages and messages hold several frames. The integration tests use the real server.

import { fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  CommandRequestSchema,
  CommandResponseSchema,
  type CommandRequest,
  type CommandResponse,
} from "../src/gen/kv_pb.js";
import { FrameDecoder, concat, encodeFrame } from "../src/frame.js";
import { connect, type Client, type ConnectOptions } from "../src/index.js";
import { afterEach } from "node:test";

/** The frames answering one request; none for an answer the test will send itself (a subscription's). */
export type Handler = (request: CommandRequest, socket: FakeSocket) => CommandResponse[];

/** A small deterministic PRNG (mulberry32), so that a failing cut can be reproduced. */
export function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class FakeServer {
  readonly sockets: FakeSocket[] = [];
  /** Every request received, on any socket, in order. */
  readonly requests: CommandRequest[] = [];
  /** The size of every message received. */
  readonly messageSizes: number[] = [];
  /** While true, answers wait until `release()`. */
  holding = false;
  /** While true, new sockets fail to open. */
  refusing = false;
  private held: { socket: FakeSocket; bytes: Uint8Array }[] = [];
  private next: () => number;

  constructor(
    public handler: Handler,
    seed = 1,
  ) {
    this.next = random(seed);
  }

  /** A WebSocket constructor whose sockets reach this server. */
  get WebSocket(): new (url: string) => FakeSocket {
    const server = this;
    return class extends FakeSocket {
      constructor(url: string) {
        super(server, url);
      }
    };
  }

  /** The bytes of `frames`, sent to the client in messages cut at random places. */
  deliver(socket: FakeSocket, frames: CommandResponse[]): void {
    const bytes = concat(frames.map((f) => encodeFrame(toBinary(CommandResponseSchema, f))));
    if (this.holding) this.held.push({ socket, bytes });
    else this.cut(socket, bytes);
  }

  /** Sends every held answer, all of them cut together. */
  release(): void {
    this.holding = false;
    const held = this.held.splice(0);
    for (const socket of new Set(held.map((h) => h.socket))) {
      this.cut(socket, concat(held.filter((h) => h.socket === socket).map((h) => h.bytes)));
    }
  }

  private cut(socket: FakeSocket, bytes: Uint8Array): void {
    let at = 0;
    while (at < bytes.length) {
      const size = 1 + Math.floor(this.next() * Math.min(bytes.length - at, this.next() < 0.3 ? 8 : 3000));
      socket.receive(bytes.slice(at, at + size));
      at += size;
    }
  }
}

export class FakeSocket {
  binaryType = "blob";
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code?: number; reason?: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  open = false;
  closedByClient = false;
  private decoder = new FrameDecoder();

  constructor(
    readonly server: FakeServer,
    readonly url: string,
  ) {
    server.sockets.push(this);
    setTimeout(() => {
      if (server.refusing) {
        this.onerror?.({ message: "connection refused" });
        this.onclose?.({ code: 1006 });
        return;
      }
      this.open = true;
      this.onopen?.({});
    });
  }

  send(data: Uint8Array): void {
    if (!this.open) throw new Error("not open");
    this.server.messageSizes.push(data.byteLength);
    for (const payload of this.decoder.push(data.slice())) {
      const request = fromBinary(CommandRequestSchema, payload);
      this.server.requests.push(request);
      const frames = this.server.handler(request, this);
      if (frames.length > 0) this.server.deliver(this, frames);
    }
  }

  close(): void {
    this.open = false;
    this.closedByClient = true;
  }

  /** A message from the server, a moment later (as a network would). */
  receive(bytes: Uint8Array): void {
    setTimeout(() => {
      if (this.open) this.onmessage?.({ data: bytes.buffer });
    });
  }

  /** The WebSocket fails (a network error), after the messages already on their way. */
  fail(): void {
    setTimeout(() => {
      if (!this.open) return;
      this.open = false;
      this.onerror?.({ message: "the network went away" });
    });
  }

  /** The server closes the WebSocket, after the messages already on their way. */
  serverClose(code = 1006): void {
    setTimeout(() => {
      if (!this.open) return;
      this.open = false;
      this.onclose?.({ code, reason: "" });
    });
  }
}

/**
 * Connects clients to fake servers over WebSocket (no keep-alive, quick reconnection): call it at the
 * top of a test file; the clients it made are closed after each test.
 */
export function fakeClients(): (server: FakeServer, options?: ConnectOptions) => Promise<Client> {
  const clients: Client[] = [];
  afterEach(() => {
    for (const client of clients.splice(0)) client.close();
  });
  return async (server, options = {}) => {
    const client = await connect({
      url: "https://qkv.test",
      transport: "websocket",
      WebSocket: server.WebSocket,
      keepAliveMs: 0,
      reconnect: { initialDelayMs: 1, maxDelayMs: 5 },
      ...options,
    });
    clients.push(client);
    return client;
  };
}
