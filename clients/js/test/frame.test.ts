// Frames (docs/PROTOCOL.md, section 3): reassembled from pieces of any size.

import { test } from "node:test";
import assert from "node:assert/strict";
import { FrameDecoder, FrameTooLarge, concat, encodeFrame, split } from "../src/frame.js";

const bytes = (...values: number[]) => new Uint8Array(values);
const text = (s: string) => new TextEncoder().encode(s);

test("a frame is its payload after a 4-byte big-endian length", () => {
  assert.deepEqual(encodeFrame(bytes(7, 8, 9)), bytes(0, 0, 0, 3, 7, 8, 9));
  assert.deepEqual(encodeFrame(new Uint8Array(0)), bytes(0, 0, 0, 0));
  const large = encodeFrame(new Uint8Array(0x01020304 & 0xfffff));
  assert.deepEqual(large.subarray(0, 4), bytes(0, 0x02, 0x03, 0x04));
});

test("a frame split across two chunks at every byte offset is reassembled", () => {
  const frame = encodeFrame(text("a payload of some length"));
  for (let at = 0; at <= frame.length; at++) {
    const decoder = new FrameDecoder();
    const first = decoder.push(frame.slice(0, at));
    const second = decoder.push(frame.slice(at));
    assert.deepEqual([...first, ...second], [text("a payload of some length")], `split at ${at}`);
    assert.equal(decoder.pending, 0);
  }
});

test("two frames split at every pair of offsets are reassembled in order", () => {
  const stream = concat([encodeFrame(text("first")), encodeFrame(text("")), encodeFrame(text("third one"))]);
  for (let a = 0; a <= stream.length; a++) {
    for (let b = a; b <= stream.length; b++) {
      const decoder = new FrameDecoder();
      const frames = [stream.slice(0, a), stream.slice(a, b), stream.slice(b)].flatMap((piece) => decoder.push(piece));
      assert.deepEqual(frames, [text("first"), text(""), text("third one")], `split at ${a} and ${b}`);
    }
  }
});

test("a frame arriving one byte at a time is reassembled", () => {
  const payload = new Uint8Array(300).map((_, i) => i % 251);
  const frame = encodeFrame(payload);
  const decoder = new FrameDecoder();
  const frames: Uint8Array[] = [];
  for (let i = 0; i < frame.length; i++) {
    frames.push(...decoder.push(frame.subarray(i, i + 1)));
    if (i < frame.length - 1) assert.equal(frames.length, 0);
  }
  assert.deepEqual(frames, [payload]);
});

test("several frames in one chunk come out together, in order", () => {
  const payloads = [text("one"), text(""), text("three"), new Uint8Array(70_000).fill(1)];
  const decoder = new FrameDecoder();
  const tail = encodeFrame(text("partial"));
  const chunk = concat([...payloads.map(encodeFrame), tail.subarray(0, 6)]);
  assert.deepEqual(decoder.push(chunk), payloads);
  assert.equal(decoder.pending, 6, "the start of the next frame waits for the rest");
  assert.deepEqual(decoder.push(tail.subarray(6)), [text("partial")]);
});

test("a length over the maximum is refused as soon as it is read, before its payload", () => {
  const decoder = new FrameDecoder(1024);
  assert.deepEqual(decoder.push(encodeFrame(new Uint8Array(1024))).length, 1, "the maximum itself is allowed");
  assert.throws(
    () => decoder.push(bytes(0, 0, 4, 1)),
    (e: unknown) => e instanceof FrameTooLarge && e.length === 1025 && e.max === 1024,
  );
  assert.throws(() => new FrameDecoder().push(bytes(0xff, 0xff, 0xff, 0xff)), FrameTooLarge, "16 MiB by default");
  assert.doesNotThrow(() => new FrameDecoder().push(bytes(1, 0, 0, 0)), "exactly 16 MiB is allowed");
});

test("split cuts bytes into pieces of at most the maximum", () => {
  const all = new Uint8Array(150_000).map((_, i) => i & 0xff);
  const pieces = split(all, 65_536);
  assert.deepEqual(
    pieces.map((p) => p.length),
    [65_536, 65_536, 18_928],
  );
  assert.deepEqual(concat(pieces), all);
  assert.deepEqual(split(new Uint8Array(0)), []);
});
