// Drives the qkv web console (src/web/console) in headless Chromium like a person would, once per
// transport: it sets a key and reads it back, meets a version conflict made by another writer and
// reloads, pages through a table, subscribes to a topic and watches published messages arrive, and
// checks that the console says which transport it uses, and that the browser really used that one
// (DevTools' network events: WebTransport sessions and WebSockets the page opened).
//
//   QKV_WEB_URL=https://localhost:PORT QKV_CA=ca.pem [QKV_OUT_DIR=dir] node console.mjs [webtransport] [websocket]
//   QKV_WEB_URL=... QKV_CA=... node console.mjs no-figures    (a server started without --admin)
//   QKV_WEB_URL=... QKV_CA=... node console.mjs readme        (the README's JavaScript example)
//   QKV_WEB_URL=... QKV_CA=... node console.mjs names         (empty and padded names)
//   QKV_WEB_URL=... QKV_CA=... node console.mjs many-requests (600 requests at once over WebTransport)
//
// tests/browser.rs runs it against a real server. It prints "all checks passed" last when every
// visit passed; on a failure it prints the page's console messages and saves a screenshot to
// QKV_OUT_DIR (console-NAME.png). It waits for what it checks (Playwright's locators), never
// for a fixed time.

import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

import { launchTrusting } from "./chromium.mjs";

const WEB_URL = required("QKV_WEB_URL");
const CA = required("QKV_CA");
const OUT = process.env.QKV_OUT_DIR ?? mkdtempSync(path.join(tmpdir(), "qkv-browser-"));
const NAMES = { webtransport: "WebTransport", websocket: "WebSocket" };
/** What each visit checks, by the name the command line gives it. */
const VISITS = {
  webtransport: { title: "the console over WebTransport", visit: (page, opened) => visit(page, "webtransport", opened) },
  websocket: { title: "the console over WebSocket", visit: (page, opened) => visit(page, "websocket", opened) },
  "no-figures": { title: "the console without figures", visit: (page) => visitWithoutFigures(page) },
  readme: { title: "the README's browser example", visit: (page) => runTheReadmeExample(page) },
  names: { title: "the console with empty and padded names", visit: (page) => visitNames(page) },
  "many-requests": { title: "600 requests at once over WebTransport", visit: (page) => manyRequestsAtOnce(page) },
  resubscribe: { title: "the console's subscriptions on a new connection", visit: (page) => resubscribe(page) },
};
const ASKED = process.argv.length > 2 ? process.argv.slice(2) : ["webtransport", "websocket"];
/** How long any one thing may take to appear: generous for a loaded machine, small beside 20 s. */
const WAIT_MS = 10_000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set (see the top of ${path.basename(import.meta.url)})`);
    process.exit(2);
  }
  return value;
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

function escape(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Waits until the element's text is `expected` (a string, whole; or a RegExp), or fails saying what it saw. */
async function expectText(locator, expected, what) {
  const pattern = expected instanceof RegExp ? expected : new RegExp(`^\\s*${escape(String(expected))}\\s*$`);
  try {
    await locator.filter({ hasText: pattern }).first().waitFor({ timeout: WAIT_MS });
  } catch {
    const seen = await locator.first().textContent({ timeout: 500 }).catch(() => "(no such element)");
    throw new Error(`${what}: expected ${pattern}, the page shows ${JSON.stringify(seen?.trim())}`);
  }
}

/** Waits until status line `id` says exactly `text`, spaces included (Playwright's text matching trims and collapses them). */
async function expectStatus(page, id, text, what) {
  try {
    await page.waitForFunction(([id, text]) => document.getElementById(id)?.textContent === text, [id, text], { timeout: WAIT_MS });
  } catch {
    const seen = await page.locator(`#${id}`).textContent();
    throw new Error(`${what}: expected ${JSON.stringify(text)}, the page shows ${JSON.stringify(seen)}`);
  }
}

async function expectVisible(locator, what) {
  try {
    await locator.first().waitFor({ state: "visible", timeout: WAIT_MS });
  } catch {
    throw new Error(`${what}: not shown within ${WAIT_MS} ms`);
  }
}

async function expectHidden(locator, what) {
  try {
    await locator.first().waitFor({ state: "hidden", timeout: WAIT_MS });
  } catch {
    throw new Error(`${what}: still shown after ${WAIT_MS} ms`);
  }
}

/**
 * A request to the REST API from inside the page (same origin, so the browser's own TLS trust): the
 * other writer and publisher, independent of the console and of the JS client.
 */
function rest(page, method, url, body, type) {
  return page.evaluate(
    async ({ method, url, body, type }) => {
      const answer = await fetch(url, { method, body, headers: type ? { "content-type": type } : {} });
      return { status: answer.status, etag: answer.headers.get("etag"), text: await answer.text() };
    },
    { method, url, body, type },
  );
}

/** The version an ETag carries ("123" → 123n). */
function versionOf(etag) {
  check(/^"\d+"$/.test(etag ?? ""), `an ETag holding a version, not ${etag}`);
  return BigInt(etag.slice(1, -1));
}

async function versionShown(page, id) {
  return BigInt((await page.locator(id).textContent()).trim());
}

/** The whole visit, over one transport. Each step waits for what the person would see. */
async function visit(page, transport, opened) {
  const table = `console-${transport}`;
  const keyPath = `/v1/tables/${table}/keys/ada`;

  // The console says which transport it uses, and that it is connected.
  await page.goto(`${WEB_URL}/?transport=${transport}`);
  await expectText(page.locator("#transport"), NAMES[transport], "the transport in use");
  check((await page.locator("#transport-select").inputValue()) === transport, "the selector shows the transport asked for");
  await expectText(page.locator("#state"), /^\s*(?!connecting|reconnecting|closed|failed)\w+/, "the connection state");

  // Set a key: read it first (absent, version 0), then a conditional set creates it.
  await page.fill("#key-table", table);
  await page.fill("#key", "ada");
  await page.click("#get-key");
  await expectText(page.locator("#key-status"), /no such key/, "reading a missing key");
  await expectText(page.locator("#result-version"), "0", "a missing key's version");
  await page.fill("#value", "Ada Lovelace");
  await page.selectOption("#kind", "string");
  check(await page.isChecked("#only-if-unchanged"), "writes are conditional by default");
  await page.click("#set-key");
  await expectText(page.locator("#key-status"), /^written at .*: version \d+, a new key$/, "creating the key");
  const v1 = await versionShown(page, "#result-version");
  const stored = await rest(page, "GET", keyPath);
  check(stored.status === 200 && stored.text === "Ada Lovelace", `the server holds what was set: ${JSON.stringify(stored)}`);
  check(versionOf(stored.etag) === v1, `the console shows the version the server has (${v1} vs ${stored.etag})`);

  // Read it back: value, kind and version.
  await page.fill("#value", "");
  await page.click("#get-key");
  await expectText(page.locator("#key-status"), /^read at/, "reading the key back");
  await expectText(page.locator("#result-value"), "Ada Lovelace", "the value read back");
  await expectText(page.locator("#result-kind"), "string", "the kind read back");
  await expectText(page.locator("#result-version"), String(v1), "the version read back");
  check((await page.inputValue("#value")) === "Ada Lovelace", "the editor holds the value read");

  // Someone else writes the key behind the console's back; the console's conditional set conflicts.
  const other = await rest(page, "PUT", keyPath, "Ada King", "text/plain");
  check(other.status === 200, `the other writer's PUT: ${JSON.stringify(other)}`);
  const v2 = versionOf(other.etag);
  await page.fill("#value", "Lady Lovelace");
  await page.click("#set-key");
  await expectVisible(page.locator("#conflict"), "the conflict");
  await expectText(page.locator("#conflict-value"), "Ada King", "the other writer's value in the conflict");
  await expectText(page.locator("#conflict-version"), String(v2), "the other writer's version in the conflict");
  await expectText(page.locator("#key-status"), /^409/, "the status line");
  const untouched = await rest(page, "GET", keyPath);
  check(untouched.text === "Ada King", `a conflicting set writes nothing: the server holds ${untouched.text}`);

  // Reload, and the same change now goes through, conditional on the other writer's version.
  await page.click("#conflict-reload");
  await expectHidden(page.locator("#conflict"), "the conflict after reloading");
  await expectText(page.locator("#result-value"), "Ada King", "the reloaded value");
  await expectText(page.locator("#result-version"), String(v2), "the reloaded version");
  await page.fill("#value", "Lady Lovelace");
  await page.click("#set-key");
  await expectText(page.locator("#key-status"), /^written at .*, replacing/, "the set after reloading");
  const v3 = await versionShown(page, "#result-version");
  check(v3 > v2, `a write takes a newer version (${v3} after ${v2})`);
  check((await rest(page, "GET", keyPath)).text === "Lady Lovelace", "the server holds the console's value");

  // Browse the table, five keys a page: eight keys in key order, the second page starting after the fifth.
  const added = await rest(
    page,
    "POST",
    `/v1/tables/${table}/mset`,
    JSON.stringify({
      items: [
        { key: "turing", value: "Alan Turing" },
        { key: "born", value: 1815 },
        { key: "babbage", value: "Charles Babbage" },
        { key: "height", value: 1.65 },
        { key: "hopper", value: "Grace Hopper" },
        { key: "boole", value: true },
        { key: "logo", value: { binary: "AP8=" } },
        { key: "markup", value: '<img src=x onerror="document.title=1">' },
      ],
    }),
    "application/json",
  );
  check(added.status === 200, `the REST mset: ${JSON.stringify(added)}`);
  await page.fill("#table", table);
  await page.selectOption("#page-size", "5");
  await page.click("#load-table");
  await expectText(page.locator("#table-status"), /^keys 1–5 of/, "the first page");
  const rows = page.locator("#table-rows tr[data-key]");
  const firstPage = await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.key));
  check(
    JSON.stringify(firstPage) === JSON.stringify(["ada", "babbage", "boole", "born", "height"]),
    `the first page in key order: ${firstPage}`,
  );
  await expectText(page.locator('#table-rows tr[data-key="born"] td:nth-child(3)'), "integer", "born's kind");
  await expectText(page.locator('#table-rows tr[data-key="height"] td:nth-child(3)'), "float", "height's kind");
  await page.click("#next-page");
  await expectText(page.locator("#table-status"), /^keys 6–9 \(the last\)/, "the second page");
  const secondPage = await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.key));
  check(
    JSON.stringify(secondPage) === JSON.stringify(["hopper", "logo", "markup", "turing"]),
    `the second page: ${secondPage}`,
  );
  check(await page.isDisabled("#next-page"), "no page after the last");
  // A value is shown as text, never as markup.
  await expectText(page.locator('#table-rows tr[data-key="markup"] td:nth-child(2)'), '<img src=x onerror="document.title=1">', "markup as text");
  check((await page.locator("#table-rows img").count()) === 0, "a value's markup made no element");
  await page.click("#prev-page");
  await expectText(page.locator("#table-status"), /^keys 1–5 of/, "back to the first page");
  await page.click("#next-page");
  await expectText(page.locator("#table-status"), /^keys 6–9 \(the last\)/, "the second page again");
  // A row opens its key in the editor.
  await page.click('#table-rows tr[data-key="hopper"]');
  await expectText(page.locator("#result-value"), "Grace Hopper", "the key opened from the table");

  // Subscribe, publish from the console, and from another publisher (REST): both messages arrive.
  const topic = `news-${transport}`;
  await page.fill("#topic", topic);
  await page.click("#subscribe");
  await expectVisible(page.locator(`#subscriptions li[data-topic="${topic}"][data-state="subscribed"]`), "the subscription");
  await page.fill("#publish-topic", topic);
  await page.fill("#publish-value", `hello over ${transport}`);
  await page.selectOption("#publish-kind", "string");
  await page.click("#publish");
  await expectText(page.locator("#publish-status"), /: 1 subscriber got it$/, "the publish's answer");
  const messages = page.locator(`#messages li[data-kind="message"][data-topic="${topic}"]`);
  await expectVisible(messages.filter({ hasText: `hello over ${transport}` }), "the published message in the list");
  const published = await rest(page, "POST", `/v1/topics/${topic}`, JSON.stringify([42, "from REST"]), "application/json");
  check(published.status === 200, `the REST publish: ${JSON.stringify(published)}`);
  await expectVisible(messages.filter({ hasText: "from REST" }), "the other publisher's message");
  await expectText(messages.first().locator('[data-kind="integer"]'), "42", "an integer value of a message");

  // The server's figures, from GET /v1/stats (`qkv stat --json`'s fields). The requests just made
  // (the REST publish above) are in the next interval's figures, by command.
  const stats = page.locator('#stats[data-state="ok"]');
  await expectVisible(stats.locator('tr[data-stat^="commands."]'), "requests by command in the figures");
  await expectText(stats.locator('[data-stat="requests_per_second"] dd'), /^[\d,.]+\/s$/, "requests per second");
  await expectText(stats.locator('[data-stat="p99_ms"] dd'), /^([\d,.]+ ms|–)$/, "the p99 latency");
  await expectText(stats.locator('[data-stat="pubsub.published"]'), /published [\d,.]+\/s \(\d+\)/, "messages published");
  await expectVisible(stats.locator('[data-stat="storage"]'), "the store's figures");
  if (transport === "webtransport") {
    // A WebTransport session is a connection on the QUIC port.
    await expectText(stats.locator('[data-stat="connections.quic"]'), /^QUIC [1-9]/, "QUIC connections open");
  }

  // And the transport has not changed underneath.
  await expectText(page.locator("#transport"), NAMES[transport], "the transport at the end");

  // The browser really talked over the transport the console names, and not over the other one.
  const cert = JSON.parse((await rest(page, "GET", "/webtransport-cert")).text);
  const web = new URL(WEB_URL);
  if (transport === "webtransport") {
    const sessions = opened.webtransport.filter((s) => new URL(s.url).port === String(cert.port));
    check(sessions.some((s) => s.established), `a WebTransport session to the QUIC port ${cert.port}: ${JSON.stringify(opened)}`);
    check(opened.websocket.length === 0, `no WebSocket over WebTransport: ${JSON.stringify(opened)}`);
  } else {
    const sockets = opened.websocket.filter((w) => w.url === `wss://${web.host}/ws`);
    check(sockets.some((w) => w.received > 0), `a WebSocket to /ws that carried answers: ${JSON.stringify(opened)}`);
    check(opened.webtransport.length === 0, `no WebTransport session over WebSocket: ${JSON.stringify(opened)}`);
  }
}

/** A server without --admin records no figures: the console says so, with the server's reason, and works. */
async function visitWithoutFigures(page) {
  await page.goto(`${WEB_URL}/`);
  await expectText(page.locator("#state"), "connected", "the connection state");
  const stats = page.locator('#stats[data-state="unavailable"]');
  await expectText(stats, /^Figures unavailable 404: .*--admin/, "what the console says without figures");
  check((await page.locator("#stats [data-stat]").count()) === 1, "no figures are shown, only why");
}

/**
 * The README's JavaScript example (section "From a browser"), as a person would run it on the console's
 * page: its `import` made a dynamic one (a page script cannot be one here: the console's CSP allows no
 * inline scripts), the README's address replaced by the server's. What it logs must be what the README
 * shows in its last comment.
 */
async function runTheReadmeExample(page) {
  const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
  const section = readme.split("\n## From a browser\n")[1]?.split("\n## ")[0] ?? "";
  const example = section.split("```js\n")[1]?.split("\n```")[0];
  check(example !== undefined, "the README's section From a browser has a js block");
  const shown = example.match(/\/\/ (.+)\s*$/)?.[1];
  check(shown !== undefined, "the example ends with a comment showing what it logs");
  const code = example
    .replaceAll("https://localhost:9443", WEB_URL)
    .replace(/^import (\{[^}]*\}) from ("[^"]+");$/m, "const $1 = await import($2);");
  await page.goto(`${WEB_URL}/`);
  const logged = await page.evaluate(async (code) => {
    const lines = [];
    const log = console.log;
    console.log = (...args) => lines.push(args.map(String).join(" "));
    try {
      await new Function(`return (async () => {\n${code}\n})();`)();
    } finally {
      console.log = log;
    }
    return lines;
  }, code);
  check(logged.length === 1 && logged[0] === shown, `the example logged ${JSON.stringify(logged)}, the README shows ${JSON.stringify(shown)}`);
}

/**
 * Any string is a name (docs/PROTOCOL.md, section 4), the empty one and one with spaces at its ends
 * included: the console takes them as typed, lists them, and opens them.
 */
/**
 * A subscription lasts across a new connection: the console makes it again on the next one (here a
 * change of transport; a Reconnect after the client gave up does the same), and says so.
 */
async function resubscribe(page) {
  await page.goto(`${WEB_URL}/?transport=websocket`);
  await expectText(page.locator("#transport"), NAMES.websocket, "the first transport");
  const topic = "kept";
  await page.fill("#topic", topic);
  await page.click("#subscribe");
  const chip = page.locator(`#subscriptions li[data-topic="${topic}"][data-state="subscribed"]`);
  await expectVisible(chip, "the subscription");
  await page.selectOption("#transport-select", "webtransport");
  await expectText(page.locator("#transport"), NAMES.webtransport, "the new transport");
  await expectVisible(chip, "the subscription made again on the new connection");
  const notes = page.locator(`#messages li[data-kind="note"][data-topic="${topic}"]`);
  await expectVisible(notes.filter({ hasText: "subscribing again on the new one" }), "the note saying so");
  const published = await rest(page, "POST", `/v1/topics/${topic}`, JSON.stringify(["after the change"]), "application/json");
  check(published.status === 200, `the REST publish: ${JSON.stringify(published)}`);
  check(JSON.parse(published.text).subscribers === 1, `one subscriber, not two: ${published.text}`);
  const messages = page.locator(`#messages li[data-kind="message"][data-topic="${topic}"]`);
  await expectVisible(messages.filter({ hasText: "after the change" }), "a message on the new connection");
}

async function visitNames(page) {
  await page.goto(`${WEB_URL}/?transport=websocket`);
  await expectText(page.locator("#state"), "connected", "the connection state");
  await page.evaluate(async () => {
    const { connect } = await import("/console/qkv-client.js");
    const c = await connect({ transport: "websocket", reconnect: false });
    try {
      await c.hmset("names", [["", "the empty key's"], ["a", "A"]]);
      await c.hset("", "k", "in the empty table");
      await c.hset(" padded ", "k", "in the padded table");
    } finally {
      c.close();
    }
  });

  // The empty key is listed first, and its row opens it.
  await page.fill("#table", "names");
  await page.click("#load-table");
  await expectText(page.locator("#table-status"), /^keys 1–2/, "the table with the empty key");
  await page.fill("#key", "zzz");
  await page.click('#table-rows tr[data-key=""]');
  await expectText(page.locator("#result-value"), "the empty key's", "the empty key opened from its row");
  check((await page.inputValue("#key")) === "", "the key field holds the empty key");
  check((await page.inputValue("#key-table")) === "names", "the key's table");

  // Get and Set take the empty key, and the empty table.
  await page.fill("#value", "written to the empty key");
  await page.click("#set-key");
  await expectText(page.locator("#key-status"), /^written at .*, replacing/, "a set of the empty key");
  await page.fill("#key-table", "");
  await page.fill("#key", "k");
  await page.click("#get-key");
  await expectText(page.locator("#result-value"), "in the empty table", "a key of the empty table");

  // The empty table and a padded one load under their own names, not trimmed.
  await page.fill("#table", "");
  await page.click("#load-table");
  await expectStatus(page, "table-status", 'keys 1–1 (the last) of ""', "the empty table");
  await page.fill("#table", " padded ");
  await page.click("#load-table");
  await expectStatus(page, "table-status", 'keys 1–1 (the last) of " padded "', "the padded table");
  await expectText(page.locator('#table-rows tr[data-key="k"] td:nth-child(2)'), "in the padded table", "its value");

  // The empty topic: subscribed to, published to.
  await page.fill("#topic", "");
  await page.click("#subscribe");
  await expectVisible(page.locator('#subscriptions li[data-topic=""][data-state="subscribed"]'), "the empty topic's subscription");
  await page.fill("#publish-topic", "");
  await page.fill("#publish-value", "to the empty topic");
  await page.click("#publish");
  await expectText(page.locator("#publish-status"), /: 1 subscriber got it$/, "the publish to the empty topic");
}

/**
 * 600 requests at once over WebTransport, as `Promise.all(keys.map(...))` makes them: more than the
 * streams the server grants a session (its --max-concurrent-requests, 256 by default), which Chromium
 * refuses at once rather than waiting for. Every one is answered: the client waits for a stream.
 */
async function manyRequestsAtOnce(page) {
  await page.goto(`${WEB_URL}/`);
  const outcome = await page.evaluate(async () => {
    const { connect } = await import("/console/qkv-client.js");
    const client = await connect({ transport: "webtransport", reconnect: false });
    try {
      const keys = Array.from({ length: 600 }, (_, i) => `k${i}`);
      await client.hmset("many", keys.map((key, i) => [key, i]));
      const results = await Promise.allSettled(keys.map((key) => client.hget("many", key)));
      const wrong = results.filter((r, i) => r.status !== "fulfilled" || r.value?.value.value !== BigInt(i));
      const reasons = [...new Set(wrong.map((r) => (r.status === "rejected" ? r.reason.message : `got ${String(r.value?.value.value)}`)))];
      return { transport: client.transport, answered: results.length - wrong.length, reasons };
    } finally {
      client.close();
    }
  });
  check(outcome.transport === "webtransport", `over WebTransport: ${JSON.stringify(outcome)}`);
  check(outcome.answered === 600, `all 600 answered: ${JSON.stringify(outcome)}`);
}

/**
 * Records the WebTransport sessions (DevTools' Network events) and WebSockets (Playwright's) that
 * `page` opens: which transport the browser really used, whatever the page says.
 */
async function watchTransports(context, page) {
  const opened = { webtransport: [], websocket: [] };
  const devtools = await context.newCDPSession(page);
  devtools.on("Network.webTransportCreated", ({ transportId, url }) =>
    opened.webtransport.push({ id: transportId, url, established: false }),
  );
  devtools.on("Network.webTransportConnectionEstablished", ({ transportId }) => {
    const session = opened.webtransport.find((s) => s.id === transportId);
    if (session) session.established = true;
  });
  await devtools.send("Network.enable");
  page.on("websocket", (socket) => {
    const seen = { url: socket.url(), received: 0 };
    opened.websocket.push(seen);
    socket.on("framereceived", () => (seen.received += 1));
  });
  return opened;
}

async function run(browser, name) {
  const { title, visit } = VISITS[name];
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  const heard = [];
  page.on("console", (message) => heard.push(`console.${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => heard.push(`uncaught: ${error.stack ?? error.message}`));
  page.on("response", (response) => {
    if (response.status() >= 400) heard.push(`answer ${response.status()}: ${response.request().method()} ${response.url()}`);
  });
  page.on("requestfailed", (request) => heard.push(`request failed: ${request.method()} ${request.url()}: ${request.failure()?.errorText}`));
  const opened = await watchTransports(context, page);
  const started = performance.now();
  try {
    await visit(page, opened);
    const uncaught = heard.filter((line) => line.startsWith("uncaught"));
    check(uncaught.length === 0, `the page threw:\n${uncaught.join("\n")}`);
    console.log(`ok: ${title} (${((performance.now() - started) / 1000).toFixed(1)} s)`);
    return true;
  } catch (error) {
    const shot = path.join(OUT, `console-${name}.png`);
    await page.screenshot({ path: shot, fullPage: true }).catch((e) => console.error(`no screenshot: ${e.message}`));
    console.error(`FAILED: ${title}: ${error.message}`);
    console.error(`the page (${page.url()}) said:\n${heard.map((line) => `  ${line}`).join("\n") || "  nothing"}`);
    console.error(`screenshot: ${shot}`);
    return false;
  } finally {
    await context.close();
  }
}

const chromium = await launchTrusting(CA, OUT);
let passed = true;
try {
  for (const name of ASKED) {
    if (!VISITS[name]) throw new Error(`unknown visit ${name}: ${Object.keys(VISITS).join(", ")}`);
    passed = (await run(chromium.browser, name)) && passed;
  }
} finally {
  await chromium.close();
}
if (!passed) process.exit(1);
console.log("all checks passed");
