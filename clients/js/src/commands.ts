/**
 * Each command of docs/PROTOCOL.md, section 6: the request it sends, and what its answer means. Pure
 * functions of protobuf messages, apart from any connection.
 */

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  CommandRequestSchema,
  CommandResponseSchema,
  type CommandRequest,
  type CommandResponse,
} from "./gen/kv_pb.js";
import { QkvError } from "./errors.js";
import { describe, fromPb, toPb, wellFormed, type Entry, type Value, type ValueLike } from "./value.js";

type Request = NonNullable<MessageInitShape<typeof CommandRequestSchema>["requestData"]>;

function request(data: Request): CommandRequest {
  return create(CommandRequestSchema, { requestData: data });
}

/** A version as the protocol carries it: an unsigned 64-bit integer. */
export function version(v: bigint | number): bigint {
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`a version is an integer ≥ 0, not ${v}`);
    return BigInt(v);
  }
  if (typeof v !== "bigint") throw new TypeError(`a version is a bigint or a number, not a ${typeof v} (${String(v)})`);
  if (v < 0n || v >= 2n ** 64n) throw new RangeError(`a version is a 64-bit unsigned integer, not ${v}`);
  return v;
}

/**
 * A table, key or topic: a string, well-formed (a TypeError otherwise). The protocol's are any UTF-8,
 * so the empty string too; but `undefined` is not "", nor 5 "5": the mistake is caught here, at the
 * call, rather than written to another table.
 */
export function text(what: string, s: unknown): string {
  if (typeof s !== "string") throw new TypeError(`${what} must be a string, not ${describe(s)}`);
  return wellFormed(what, s);
}

/** A list of keys: an array of strings (`text`), else a TypeError. */
export function texts(what: string, list: unknown): string[] {
  if (!Array.isArray(list)) throw new TypeError(`${what} must be an array of strings, not ${describe(list)}`);
  list.forEach((s, i) => text(`${what}[${i}]`, s));
  return list;
}

/** The pairs of Hmset's argument, in order: an object's own entries, or an array of [key, value]. */
export function pairsOf(entries: Record<string, ValueLike> | [string, ValueLike][]): [string, ValueLike][] {
  if (Array.isArray(entries)) {
    entries.forEach((pair, i) => {
      if (!Array.isArray(pair) || pair.length !== 2) throw new TypeError(`entries[${i}] must be a [key, value] pair, not ${describe(pair)}`);
    });
    return entries;
  }
  if (typeof entries !== "object" || entries === null) {
    throw new TypeError(`entries must be an object of keys and values or an array of [key, value] pairs, not ${describe(entries)}`);
  }
  return Object.entries(entries);
}

/** Each command's request; a TypeError or RangeError for an argument it cannot carry, before anything is sent. */
export const requests = {
  hget: (table: string, key: string) => request({ case: "hget", value: { table: text("table", table), key: text("key", key) } }),
  hgetall: (table: string, after = "", limit = 0) =>
    request({ case: "hgetall", value: { table: text("table", table), after: text("after", after), limit } }),
  hmget: (table: string, keys: string[]) => request({ case: "hmget", value: { table: text("table", table), keys: texts("keys", keys) } }),
  hset: (table: string, key: string, v: ValueLike, expectedVersion?: bigint | number) =>
    request({
      case: "hset",
      value: {
        table: text("table", table),
        pair: { key: text("key", key), value: toPb(v) },
        ...(expectedVersion === undefined ? {} : { expectedVersion: version(expectedVersion) }),
      },
    }),
  hmset: (table: string, pairs: [string, ValueLike][]) =>
    request({
      case: "hmset",
      value: { table: text("table", table), pairs: pairs.map(([key, v], i) => ({ key: text(`entries[${i}]'s key`, key), value: toPb(v) })) },
    }),
  hdel: (table: string, key: string, expectedVersion?: bigint | number) =>
    request({
      case: "hdel",
      value: {
        table: text("table", table),
        key: text("key", key),
        ...(expectedVersion === undefined ? {} : { expectedVersion: version(expectedVersion) }),
      },
    }),
  hmdel: (table: string, keys: string[]) => request({ case: "hmdel", value: { table: text("table", table), keys: texts("keys", keys) } }),
  hexist: (table: string, key: string) => request({ case: "hexist", value: { table: text("table", table), key: text("key", key) } }),
  hmexist: (table: string, keys: string[]) =>
    request({ case: "hmexist", value: { table: text("table", table), keys: texts("keys", keys) } }),
  subscribe: (topic: string) => request({ case: "subscribe", value: { topic: text("topic", topic) } }),
  unsubscribe: (topic: string, id: number) => request({ case: "unsubscribe", value: { topic, id } }),
  publish: (topic: string, values: ValueLike[]) => {
    if (!Array.isArray(values)) throw new TypeError(`values must be an array of values, not ${describe(values)}`);
    return request({ case: "publish", value: { topic: text("topic", topic), data: values.map((v) => toPb(v)) } });
  },
  ping: (payload: Uint8Array = new Uint8Array(0)) => {
    if (!(payload instanceof Uint8Array)) throw new TypeError(`a ping's payload must be a Uint8Array, not ${describe(payload)}`);
    return request({ case: "ping", value: { payload } });
  },
};

/** Requests that change nothing: sent again after any failure (docs/PROTOCOL.md, section 8). */
export function isReadOnly(request: CommandRequest): boolean {
  switch (request.requestData.case) {
    case "hget":
    case "hgetall":
    case "hmget":
    case "hexist":
    case "hmexist":
    case "ping":
      return true;
    default:
      return false;
  }
}

/**
 * One response of several frames (docs/PROTOCOL.md, section 5): values, pairs and versions
 * concatenated, status and message those of the last frame.
 */
export function merge(frames: CommandResponse[]): CommandResponse {
  if (frames.length === 1) return frames[0];
  const last = frames[frames.length - 1];
  return create(CommandResponseSchema, {
    status: last.status,
    message: last.message,
    values: frames.flatMap((f) => f.values),
    pairs: frames.flatMap((f) => f.pairs),
    versions: frames.flatMap((f) => f.versions),
  });
}

/** The error a response that is not a 200 stands for; `key` is the key a 409's current value belongs to. */
export function errorFor(response: CommandResponse, key?: string): QkvError {
  const status = response.status;
  const message = response.message || `the server answered status ${status}`;
  let current: Entry | undefined;
  if (status === 409 && key !== undefined) {
    const value = fromPb(response.values[0]);
    const version = response.versions[0] ?? 0n;
    if (value !== undefined && version !== 0n) current = { key, value, version };
  }
  return new QkvError(message, { status, current });
}

/** Throws the response's error unless it is a 200. */
export function check(response: CommandResponse, key?: string): CommandResponse {
  if (response.status !== 200) throw errorFor(response, key);
  return response;
}

function entry(key: string, value: Value | undefined, version: bigint | undefined): Entry | undefined {
  return value === undefined ? undefined : { key, value, version: version ?? 0n };
}

/** What each answer means, from its (merged) response: a result, or a thrown QkvError. */
export const results = {
  hget(response: CommandResponse, key: string): Entry | undefined {
    if (response.status === 404) return undefined;
    check(response);
    return entry(key, fromPb(response.values[0]), response.versions[0]);
  },
  hmget(response: CommandResponse, keys: string[]): (Entry | undefined)[] {
    check(response);
    return keys.map((key, i) => entry(key, fromPb(response.values[i]), response.versions[i]));
  },
  hset(response: CommandResponse, key: string): { version: bigint; previous?: Value } {
    check(response, key);
    const previous = fromPb(response.values[0]);
    return { version: response.versions[0] ?? 0n, ...(previous === undefined ? {} : { previous }) };
  },
  hmset(response: CommandResponse, count: number): { versions: bigint[]; previous: (Value | undefined)[] } {
    check(response);
    const indices = Array.from({ length: count }, (_, i) => i);
    return {
      versions: indices.map((i) => response.versions[i] ?? 0n),
      previous: indices.map((i) => fromPb(response.values[i])),
    };
  },
  hdel(response: CommandResponse, key: string): { previous?: Value; version?: bigint } {
    check(response, key);
    const previous = fromPb(response.values[0]);
    return { ...(previous === undefined ? {} : { previous }), version: response.versions[0] ?? 0n };
  },
  hmdel(response: CommandResponse, count: number): (Value | undefined)[] {
    check(response);
    return Array.from({ length: count }, (_, i) => fromPb(response.values[i]));
  },
  hexist(response: CommandResponse): boolean {
    check(response);
    return fromPb(response.values[0])?.value === true;
  },
  hmexist(response: CommandResponse, count: number): boolean[] {
    check(response);
    return Array.from({ length: count }, (_, i) => fromPb(response.values[i])?.value === true);
  },
  /** Entries of one frame of an Hgetall answer (or of a whole one). */
  hgetall(response: CommandResponse): Entry[] {
    check(response);
    const entries: Entry[] = [];
    response.pairs.forEach((pair, i) => {
      const e = entry(pair.key, fromPb(pair.value), response.versions[i]);
      if (e !== undefined) entries.push(e);
    });
    return entries;
  },
  /** How many subscribers the message was queued for (`values[0]`; `values[1]` counts those it missed). */
  publish(response: CommandResponse): { receivers: number; lagging: number } {
    check(response);
    const count = (i: number) => {
      const v = fromPb(response.values[i]);
      return v?.kind === "integer" ? Number(v.value) : 0;
    };
    return { receivers: count(0), lagging: count(1) };
  },
  ping(response: CommandResponse): { payload: Uint8Array; identity?: string } {
    check(response);
    const payload = fromPb(response.values[0]);
    const identity = fromPb(response.values[1]);
    return {
      payload: payload?.kind === "binary" ? payload.value : new Uint8Array(0),
      ...(identity?.kind === "string" ? { identity: identity.value } : {}),
    };
  },
  /** The subscription id of a Subscribe's first frame. */
  subscribed(response: CommandResponse): number {
    check(response);
    const id = fromPb(response.values[0]);
    if (id?.kind !== "integer") throw new QkvError("the Subscribe's first frame carries no subscription id", { status: 500 });
    return Number(id.value);
  },
};
