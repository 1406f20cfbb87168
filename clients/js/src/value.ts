/**
 * qkv's values (docs/PROTOCOL.md, section 4: the `Value` oneof) as plain JavaScript objects, and their
 * conversions to and from the generated protobuf messages.
 */

import { create } from "@bufbuild/protobuf";
import { ValueSchema, type Value as PbValue } from "./gen/kv_pb.js";

/** A stored value: exactly one of qkv's five kinds. Integers are `bigint` (64-bit, exact). */
export type Value =
  | { kind: "string"; value: string }
  | { kind: "integer"; value: bigint }
  | { kind: "float"; value: number }
  | { kind: "bool"; value: boolean }
  | { kind: "binary"; value: Uint8Array };

/**
 * What methods accept: a Value, or plain JavaScript: string → string, boolean → bool, bigint →
 * integer, number → integer when `Number.isSafeInteger`, otherwise float; Uint8Array → binary.
 */
export type ValueLike = Value | string | boolean | bigint | number | Uint8Array;

/** A key, its value and its version (docs/PROTOCOL.md, section 7). */
export interface Entry {
  key: string;
  value: Value;
  version: bigint;
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/**
 * `v` as a Value (see ValueLike); a TypeError for anything else, and for a string that is not
 * well-formed (see `wellFormed`); a RangeError for a bigint beyond 64 bits.
 */
export function value(v: ValueLike): Value {
  switch (typeof v) {
    case "string":
      return { kind: "string", value: wellFormed("a string value", v) };
    case "boolean":
      return { kind: "bool", value: v };
    case "bigint":
      return { kind: "integer", value: int64(v) };
    case "number":
      return Number.isSafeInteger(v) ? { kind: "integer", value: BigInt(v) } : { kind: "float", value: v };
    case "object":
      if (v instanceof Uint8Array) return { kind: "binary", value: v };
      if (v !== null && isValue(v)) {
        if (v.kind === "integer") int64(v.value);
        if (v.kind === "string") wellFormed("a string value", v.value);
        return v;
      }
  }
  throw new TypeError(`not a qkv value: ${describe(v)} (a string, boolean, bigint, number, Uint8Array or Value)`);
}

/** String.prototype.isWellFormed (ES2024: node 20, current browsers), else the same test: no lone surrogate. */
const isWellFormed: (s: string) => boolean =
  typeof (String.prototype as { isWellFormed?: unknown }).isWellFormed === "function"
    ? (s) => (s as unknown as { isWellFormed(): boolean }).isWellFormed()
    : (s) => !/\p{Cs}/u.test(s);

/**
 * `s`, a string that UTF-8 can carry, else a TypeError naming `what`: a lone surrogate (half of a
 * UTF-16 pair) has no UTF-8, and encoding it would send U+FFFD instead, so that two different
 * strings would reach the server as one.
 */
export function wellFormed(what: string, s: string): string {
  if (isWellFormed(s)) return s;
  const at = s.search(/\p{Cs}/u);
  const unit = s.charCodeAt(at).toString(16).toUpperCase();
  throw new TypeError(`${what} is not well-formed Unicode: a lone surrogate (\\u${unit}) at index ${at}, which UTF-8 cannot carry`);
}

/** A float Value, even when `x` is integral (`value(2)` is the integer 2, `float(2)` the float 2.0). */
export function float(x: number): Value {
  if (typeof x !== "number") throw new TypeError(`float() takes a number, not ${describe(x)}`);
  return { kind: "float", value: x };
}

/**
 * A Value as text, for display: strings as they are, integers in decimal, floats as JavaScript prints
 * them with ".0" added when integral (so that 2.0 does not read as the integer 2), bools as
 * true/false, binary as base64 after "base64:".
 */
export function formatValue(v: Value): string {
  switch (v?.kind) {
    case "string":
      return v.value;
    case "integer":
      return v.value.toString();
    case "float": {
      // String(-0) is "0": the sign is kept, as Rust and the server print it.
      const text = Object.is(v.value, -0) ? "-0" : String(v.value);
      return /^-?\d+$/.test(text) ? `${text}.0` : text;
    }
    case "bool":
      return v.value ? "true" : "false";
    case "binary":
      return `base64:${toBase64(v.value)}`;
    default:
      throw new TypeError(`formatValue takes a Value (as reads return, or value(x) makes), not ${typeof v === "object" ? JSON.stringify(v) : String(v)}`);
  }
}

/** Standard base64, with padding. */
export function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let at = 0; at < bytes.length; at += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(at, at + 0x8000));
  }
  return btoa(binary);
}

/** The bytes of standard base64 text; a SyntaxError if it is not base64. */
export function fromBase64(text: string): Uint8Array {
  let binary: string;
  try {
    binary = atob(text);
  } catch {
    throw new SyntaxError("not base64");
  }
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** The protobuf message of `v`: exactly one case of the oneof set, even for "", 0, false and empty bytes. */
export function toPb(v: ValueLike): PbValue {
  const normal = value(v);
  switch (normal.kind) {
    case "string":
      return create(ValueSchema, { value: { case: "string", value: normal.value } });
    case "integer":
      return create(ValueSchema, { value: { case: "integer", value: normal.value } });
    case "float":
      return create(ValueSchema, { value: { case: "float", value: normal.value } });
    case "bool":
      return create(ValueSchema, { value: { case: "bool", value: normal.value } });
    case "binary":
      return create(ValueSchema, { value: { case: "binary", value: normal.value } });
  }
}

/** The Value of a protobuf message; undefined for the empty Value (no case set: "no value"). */
export function fromPb(pb: PbValue | undefined): Value | undefined {
  const v = pb?.value;
  switch (v?.case) {
    case "string":
      return { kind: "string", value: v.value };
    case "integer":
      return { kind: "integer", value: v.value };
    case "float":
      return { kind: "float", value: v.value };
    case "bool":
      return { kind: "bool", value: v.value };
    case "binary":
      return { kind: "binary", value: v.value };
    default:
      return undefined;
  }
}

function int64(v: bigint): bigint {
  if (v < INT64_MIN || v > INT64_MAX) throw new RangeError(`${v} is beyond a 64-bit integer`);
  return v;
}

function isValue(v: object): v is Value {
  const { kind, value } = v as { kind?: unknown; value?: unknown };
  switch (kind) {
    case "string":
      return typeof value === "string";
    case "integer":
      return typeof value === "bigint";
    case "float":
      return typeof value === "number";
    case "bool":
      return typeof value === "boolean";
    case "binary":
      return value instanceof Uint8Array;
    default:
      return false;
  }
}

/** What `v` is, for a TypeError's message. */
export function describe(v: unknown): string {
  if (v === null) return "null";
  if (typeof v === "object") return v.constructor?.name ?? "an object";
  return typeof v;
}
