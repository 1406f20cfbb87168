// Values: plain JavaScript to qkv's Value and back, and the protobuf encoding of each kind.

import { test } from "node:test";
import assert from "node:assert/strict";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { ValueSchema } from "../src/gen/kv_pb.js";
import { float, formatValue, fromBase64, fromPb, toBase64, toPb, value, type Value } from "../src/value.js";

test("plain JavaScript values become the kind they name", () => {
  assert.deepEqual(value("text"), { kind: "string", value: "text" });
  assert.deepEqual(value(""), { kind: "string", value: "" });
  assert.deepEqual(value(true), { kind: "bool", value: true });
  assert.deepEqual(value(false), { kind: "bool", value: false });
  assert.deepEqual(value(42n), { kind: "integer", value: 42n });
  assert.deepEqual(value(42), { kind: "integer", value: 42n });
  assert.deepEqual(value(-0), { kind: "integer", value: 0n });
  assert.deepEqual(value(Number.MAX_SAFE_INTEGER), { kind: "integer", value: 9007199254740991n });
  assert.deepEqual(value(2 ** 53), { kind: "float", value: 2 ** 53 }, "beyond the safe integers: a float");
  assert.deepEqual(value(1.5), { kind: "float", value: 1.5 });
  assert.deepEqual(value(NaN), { kind: "float", value: NaN });
  assert.deepEqual(value(-Infinity), { kind: "float", value: -Infinity });
  assert.deepEqual(value(new Uint8Array([1, 2])), { kind: "binary", value: new Uint8Array([1, 2]) });
  assert.deepEqual(float(2), { kind: "float", value: 2 });
});

test("a Value passes through unchanged; anything else is refused", () => {
  const v: Value = { kind: "integer", value: -7n };
  assert.equal(value(v), v);
  assert.deepEqual(value({ kind: "float", value: 3 }), { kind: "float", value: 3 });
  assert.throws(() => value({ kind: "integer", value: 7 } as unknown as Value), TypeError, "an integer's value is a bigint");
  assert.throws(() => value(null as unknown as Value), TypeError);
  assert.throws(() => value(undefined as unknown as Value), TypeError);
  assert.throws(() => value({} as unknown as Value), TypeError);
  assert.throws(() => value([1] as unknown as Value), TypeError);
  assert.throws(() => float("2" as unknown as number), TypeError);
});

test("a string value must be well-formed: a lone surrogate has no UTF-8", () => {
  assert.deepEqual(value("😀"), { kind: "string", value: "😀" }, "a pair is one character");
  assert.throws(() => value("\ud800"), TypeError);
  assert.throws(() => value("a\udc00b"), /lone surrogate \(\\uDC00\) at index 1/);
  assert.throws(() => value({ kind: "string", value: "\ud83d" }), TypeError);
  assert.throws(() => toPb("\udfff"), TypeError);
});

test("integers are 64-bit", () => {
  assert.deepEqual(value(2n ** 63n - 1n), { kind: "integer", value: 2n ** 63n - 1n });
  assert.deepEqual(value(-(2n ** 63n)), { kind: "integer", value: -(2n ** 63n) });
  assert.throws(() => value(2n ** 63n), RangeError);
  assert.throws(() => value(-(2n ** 63n) - 1n), RangeError);
  assert.throws(() => value({ kind: "integer", value: 2n ** 64n }), RangeError);
});

test("formatValue shows each kind for a person", () => {
  assert.equal(formatValue(value("Ada")), "Ada");
  assert.equal(formatValue(value(1815)), "1815");
  assert.equal(formatValue(value(-(2n ** 63n))), "-9223372036854775808");
  assert.equal(formatValue(value(1.5)), "1.5");
  assert.equal(formatValue(float(2)), "2.0", "an integral float does not read as an integer");
  assert.equal(formatValue(float(-0)), "-0.0", "the sign of zero is kept");
  assert.equal(formatValue(float(1e21)), "1e+21");
  assert.equal(formatValue(float(NaN)), "NaN");
  assert.equal(formatValue(value(true)), "true");
  assert.equal(formatValue(value(false)), "false");
  assert.equal(formatValue(value(new Uint8Array([0, 1, 2, 253, 254, 255]))), "base64:AAEC/f7/");
  assert.equal(formatValue(value(new Uint8Array(0))), "base64:");
  assert.throws(() => formatValue(42 as unknown as Value), TypeError, "a number is not a Value");
});

test("base64 round-trips any bytes, large ones too", () => {
  const bytes = new Uint8Array(100_000).map((_, i) => (i * 7) & 0xff);
  assert.deepEqual(fromBase64(toBase64(bytes)), bytes);
  assert.equal(toBase64(new TextEncoder().encode("qkv")), "cWt2");
  assert.throws(() => fromBase64("not base64!"), SyntaxError);
});

test("every kind is encoded with its case set, even when empty or zero (docs/PROTOCOL.md, section 4)", () => {
  const encoded = (v: Value) => [...toBinary(ValueSchema, toPb(v))];
  assert.deepEqual(encoded(value("")), [0x0a, 0x00]);
  assert.deepEqual(encoded(value(new Uint8Array(0))), [0x12, 0x00]);
  assert.deepEqual(encoded(value(0)), [0x18, 0x00]);
  assert.deepEqual(encoded(float(0)), [0x21, 0, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(encoded(value(false)), [0x28, 0x00]);
  assert.deepEqual(encoded(value("Ada")), [0x0a, 0x03, 0x41, 0x64, 0x61]);
});

test("every kind round-trips through protobuf; the empty Value is no value", () => {
  const values: Value[] = [
    value("Ada Lovelace"),
    value(""),
    value(-(2n ** 63n)),
    value(2n ** 63n - 1n),
    float(2),
    float(-1.25),
    value(true),
    value(false),
    value(new Uint8Array([0, 255])),
    value(new Uint8Array(0)),
  ];
  for (const v of values) {
    assert.deepEqual(fromPb(fromBinary(ValueSchema, toBinary(ValueSchema, toPb(v)))), v);
  }
  assert.equal(fromPb(fromBinary(ValueSchema, new Uint8Array(0))), undefined);
  assert.equal(fromPb(undefined), undefined);
});
