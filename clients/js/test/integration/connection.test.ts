// Connecting from node: over wss:// with the server's certificate verified (through
// NODE_EXTRA_CA_CERTS, and refused without it), how the server treats node's WebSocket, which sends
// no Origin header (src/transport/origin.rs: like a QUIC or TCP client, not a page), reconnecting
// after the connection is lost, and the README's main example, run as written.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile, writeFile, rm } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { QkvError, connect, value, type ClientState } from "../../src/index.js";
import { WEB_URL, client, sockets, unique, withOrigin } from "./server.js";

const run = promisify(execFile);

test("the server's certificate is verified: without its CA, node refuses to connect", async () => {
  const index = new URL("../../src/index.js", import.meta.url).href;
  const script = `
    const { connect } = await import(${JSON.stringify(index)});
    try {
      const c = await connect({ url: ${JSON.stringify(WEB_URL)}, transport: "websocket", connectTimeoutMs: 5000 });
      c.close();
      console.log("connected");
    } catch (e) {
      console.log("refused:", e.status, e.message);
    }
    try {
      await fetch(${JSON.stringify(new URL("/webtransport-cert", WEB_URL).href)});
      console.log("fetched");
    } catch (e) {
      console.log("fetch refused:", e.cause?.code);
    }`;
  const env = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  const { stdout } = await run(process.execPath, ["--experimental-websocket", "--input-type=module", "-e", script], { env });
  assert.match(stdout, /^refused: 0 could not connect to qkv: WebSocket: /m, stdout);
  assert.match(stdout, /^fetch refused: (SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)$/m, stdout);
  // With the CA (this process has it), the same connects.
  const c = await client();
  await c.ping();
});

test("node's WebSocket sends no Origin and is accepted; a page's Origin is checked", async () => {
  // No Origin header: not a page, accepted like a QUIC or TCP client (docs/PROTOCOL.md, section 1.1).
  const plain = await client();
  await plain.ping();
  // The web listener's own origin (the console's) is allowed; another site's is refused (403).
  const own = await client({ WebSocket: withOrigin(new URL(WEB_URL).origin) });
  await own.ping();
  await assert.rejects(
    connect({ url: WEB_URL, transport: "websocket", WebSocket: withOrigin("https://evil.example") }),
    (e: unknown) => {
      assert.ok(e instanceof QkvError);
      assert.equal(e.status, 0, "no answer: the WebSocket never opened");
      assert.equal(e.executed, "no");
      assert.match(e.message, /could not connect to qkv: WebSocket: the WebSocket to wss:\/\/.*\/ws did not open/);
      return true;
    },
  );
});

test("the client reconnects after its connection is lost, and calls go on", async () => {
  const opened = sockets();
  const c = await client({ WebSocket: opened.WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 100 } });
  const table = unique("reconnect");
  await c.hset(table, "k", "before");
  const states: ClientState[] = [];
  const connectedAgain = new Promise<void>((resolve) => {
    c.onstatechange = (state) => {
      states.push(state);
      if (state === "connected") resolve();
    };
  });
  opened.list[0].close();
  // A call made meanwhile waits for the new connection.
  const read = c.hget(table, "k");
  await connectedAgain;
  assert.deepEqual(states, ["reconnecting", "connected"]);
  assert.equal(opened.list.length, 2);
  assert.deepEqual((await read)?.value, value("before"));
  await c.hset(table, "k", "after");
  assert.deepEqual((await c.hget(table, "k"))?.value, value("after"));
});

test("the README's main example runs as written", async () => {
  const readme = await readFile(new URL("../../../README.md", import.meta.url), "utf8");
  const example = /```js\n([\s\S]*?)```/.exec(readme)?.[1];
  assert.ok(example, "README.md has a ```js example");
  assert.match(example, /from "qkv-client"/);
  assert.match(example, /"https:\/\/localhost:9528"/);
  const file = fileURLToPath(new URL("./readme-example.mjs", import.meta.url));
  const index = new URL("../../src/index.js", import.meta.url).href;
  await writeFile(
    file,
    example.replace('from "qkv-client"', `from ${JSON.stringify(index)}`).replace('"https://localhost:9528"', JSON.stringify(WEB_URL)),
  );
  try {
    const { stdout } = await run(process.execPath, ["--experimental-websocket", file]);
    for (const line of [
      /^connected over websocket$/m,
      /^Ada Lovelace true$/m,
      /^conflict: the key is now Ada King at version \d+$/m,
      /^ada Ada King\nalan Alan Turing\ngrace Grace Hopper$/m,
      /^news: hello 42$/m,
    ]) {
      assert.match(stdout, line, stdout);
    }
  } finally {
    await rm(file, { force: true });
  }
});
