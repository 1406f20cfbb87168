/**
 * qkv's frames (docs/PROTOCOL.md, section 3): a 4-byte big-endian length, then that many bytes of
 * protobuf. The same framing on every transport; over a WebSocket the frames form one byte stream
 * whose message boundaries mean nothing.
 */

/** The server's default maximum frame size (`--max-frame-size`), 16 MiB: the protocol does not announce it. */
export const DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024;

/** The largest WebSocket message the server takes by default (`--websocket-max-message`). */
export const MAX_WEBSOCKET_MESSAGE = 64 * 1024;

/** A frame whose declared length is over the maximum: the stream it came on is broken. */
export class FrameTooLarge extends Error {
  constructor(
    readonly length: number,
    readonly max: number,
  ) {
    super(`a frame of ${length} bytes is over the maximum frame size, ${max} bytes`);
    this.name = "FrameTooLarge";
  }
}

/** `payload` with its length in front. */
export function encodeFrame(payload: Uint8Array): Uint8Array {
  const frame = new Uint8Array(4 + payload.length);
  new DataView(frame.buffer).setUint32(0, payload.length);
  frame.set(payload, 4);
  return frame;
}

/**
 * Reassembles frames from a byte stream that arrives in pieces of any size: `push` each piece, and it
 * returns the payloads of the frames completed so far, in order.
 */
export class FrameDecoder {
  /** Pieces received and not yet consumed; the first `offset` bytes of the first are consumed. */
  private pieces: Uint8Array[] = [];
  private offset = 0;
  private buffered = 0;
  /** The length of the frame being received, once its 4-byte header is here. */
  private expected: number | undefined;

  constructor(readonly maxFrameSize = DEFAULT_MAX_FRAME_SIZE) {}

  /** Bytes received that belong to no complete frame yet: not 0 when a stream ends inside a frame. */
  get pending(): number {
    return this.buffered + (this.expected === undefined ? 0 : 4);
  }

  /** Takes `piece` (it is not copied: it must not change) and returns the payloads completed. */
  push(piece: Uint8Array): Uint8Array[] {
    if (piece.length > 0) {
      this.pieces.push(piece);
      this.buffered += piece.length;
    }
    const frames: Uint8Array[] = [];
    for (;;) {
      if (this.expected === undefined) {
        if (this.buffered < 4) break;
        const header = this.take(4);
        const length = new DataView(header.buffer, header.byteOffset, 4).getUint32(0);
        if (length > this.maxFrameSize) throw new FrameTooLarge(length, this.maxFrameSize);
        this.expected = length;
      }
      if (this.buffered < this.expected) break;
      frames.push(this.take(this.expected));
      this.expected = undefined;
    }
    return frames;
  }

  /** The next `n` buffered bytes (a view into a piece when they lie in one, else a copy). */
  private take(n: number): Uint8Array {
    this.buffered -= n;
    const first = this.pieces[0];
    if (n === 0) return new Uint8Array(0);
    if (first.length - this.offset >= n) {
      const bytes = first.subarray(this.offset, this.offset + n);
      this.offset += n;
      if (this.offset === first.length) {
        this.pieces.shift();
        this.offset = 0;
      }
      return bytes;
    }
    const bytes = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const piece = this.pieces[0];
      const count = Math.min(piece.length - this.offset, n - filled);
      bytes.set(piece.subarray(this.offset, this.offset + count), filled);
      filled += count;
      this.offset += count;
      if (this.offset === piece.length) {
        this.pieces.shift();
        this.offset = 0;
      }
    }
    return bytes;
  }
}

/** `bytes` cut into pieces of at most `max` bytes (views, not copies). */
export function split(bytes: Uint8Array, max = MAX_WEBSOCKET_MESSAGE): Uint8Array[] {
  const pieces: Uint8Array[] = [];
  for (let at = 0; at < bytes.length; at += max) pieces.push(bytes.subarray(at, at + max));
  return pieces;
}

/** The pieces joined into one array. */
export function concat(pieces: Uint8Array[]): Uint8Array {
  if (pieces.length === 1) return pieces[0];
  const all = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const piece of pieces) {
    all.set(piece, at);
    at += piece.length;
  }
  return all;
}
