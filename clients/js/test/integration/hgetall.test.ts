// Hgetall as an async iterator over pages, against a real server: a table larger than one response
// frame (64 KiB by default) comes in several pages, in the keys' UTF-8 byte order, each entry with its
// version; `pageSize` reads it in requests of that many; `after` and `limit` cut it; and leaving the
// loop early leaves the connection answering the next request correctly.

import { test } from "node:test";
import assert from "node:assert/strict";
import { value, type Entry } from "../../src/index.js";
import { client, unique } from "./server.js";

/** A table of `n` entries (about 40 bytes each, so 5000 are three frames), and keys that sort differently in UTF-16 and UTF-8. */
async function table(c: Awaited<ReturnType<typeof client>>, n: number) {
  const name = unique("scan");
  const entries: [string, string][] = Array.from({ length: n }, (_, i) => [`key-${String(i).padStart(5, "0")}`, `value number ${i}`]);
  entries.push(["\uffff", "last but one in UTF-8"], ["😀", "last in UTF-8, before \\uffff in UTF-16"]);
  const { versions } = await c.hmset(name, entries);
  const expected = entries.map(([key, v], i) => ({ key, value: value(v), version: versions[i] }));
  const utf8 = new TextEncoder();
  expected.sort((a, b) => Buffer.compare(utf8.encode(a.key), utf8.encode(b.key)));
  return { name, expected };
}

async function pages(iterable: AsyncIterable<Entry[]>): Promise<Entry[][]> {
  const all: Entry[][] = [];
  for await (const page of iterable) all.push(page);
  return all;
}

test("hgetall iterates a table of many pages, in key order, with versions", async () => {
  const c = await client();
  const { name, expected } = await table(c, 5000);
  // By default, requests of 1000 entries.
  const got = await pages(c.hgetall(name));
  assert.deepEqual(got.map((page) => page.length), [1000, 1000, 1000, 1000, 1000, 2]);
  assert.deepEqual(got.flat(), expected);
  assert.deepEqual(got.flat().slice(-2).map((e) => e.key), ["\uffff", "😀"], "UTF-8 byte order, not UTF-16's");
  // In one request, the server's answer comes in frames of about 64 KiB: a page each.
  const frames = await pages(c.hgetall(name, { pageSize: 0 }));
  assert.ok(frames.length >= 3, `${expected.length} entries of about 40 bytes are several frames, not ${frames.length}`);
  assert.ok(frames.every((page) => page.length > 0), "no empty pages");
  assert.deepEqual(frames.flat(), expected);
});

test("hgetall with pageSize reads the table in requests of that many; after and limit cut it", async () => {
  const c = await client();
  const { name, expected } = await table(c, 2000);
  const paged = await pages(c.hgetall(name, { pageSize: 300 }));
  assert.deepEqual(paged.flat(), expected);
  assert.ok(paged.every((page) => page.length <= 300));
  assert.ok(paged.length >= Math.ceil(expected.length / 300));

  const after = expected[99].key;
  assert.deepEqual((await pages(c.hgetall(name, { after, limit: 50 }))).flat(), expected.slice(100, 150));
  const limited = await pages(c.hgetall(name, { after, limit: 50, pageSize: 20 }));
  assert.deepEqual(limited.map((page) => page.length), [20, 20, 10]);
  assert.deepEqual(limited.flat(), expected.slice(100, 150));
  assert.deepEqual(await pages(c.hgetall(name, { after: expected[expected.length - 1].key })), []);
});

test("hgetall of a table that does not exist has no pages", async () => {
  const c = await client();
  assert.deepEqual(await pages(c.hgetall(unique("nothing"))), []);
  assert.deepEqual(await pages(c.hgetall(unique("nothing"), { pageSize: 10 })), []);
});

test("leaving an hgetall loop early leaves the connection answering the next requests rightly", async () => {
  const c = await client();
  const { name, expected } = await table(c, 5000);
  await c.hset(name, "probe", "answer");
  for await (const page of c.hgetall(name)) {
    assert.deepEqual(page[0], expected[0]);
    break; // The rest of the answer still comes on the WebSocket, before the next answers.
  }
  const [probe, count] = await Promise.all([c.hget(name, "probe"), c.hexist(name, expected[1].key)]);
  assert.deepEqual(probe?.value, value("answer"));
  assert.equal(count, true);
});

// The empty key sorts first, and an empty `after` means "from the first": no request can start after
// it (docs/PROTOCOL.md, section 6), so a client paging past it must not ask for it again.
test("hgetall pages past the empty key: each key once", async () => {
  const c = await client();
  const name = unique("empty-key");
  await c.hmset(name, { "": 0, a: 1, b: 2 });
  const keys = async (options: { pageSize?: number; limit?: number }) => {
    const got: string[] = [];
    for await (const page of c.hgetall(name, options)) {
      got.push(...page.map((e) => e.key));
      if (got.length > 10) break; // not for ever
    }
    return got;
  };
  assert.deepEqual(await keys({ pageSize: 1 }), ["", "a", "b"]);
  assert.deepEqual(await keys({ pageSize: 1, limit: 3 }), ["", "a", "b"]);
  assert.deepEqual(await keys({ pageSize: 2 }), ["", "a", "b"]);
  assert.deepEqual(await keys({}), ["", "a", "b"]);
});
