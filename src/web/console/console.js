// The qkv web console: a page served by qkv's web listener that talks to the same server over
// WebTransport or WebSocket through the JS client (/console/qkv-client.js), and reads the server's
// figures from GET /v1/stats. Plain ES module, no framework and no build step.
//
// Each panel owns its piece of state: the connection (one client at a time; a transport change
// replaces it), the table browser (the page shown and the `after` keys of the pages before it), the
// key editor (the version last read, which a conditional write expects), the subscriptions (one
// per topic, each read by a loop of its own), and the server figures (polled every 2 s).

import * as qkv from "/console/qkv-client.js";

const $ = (id) => document.getElementById(id);

const TRANSPORTS = ["auto", "webtransport", "websocket"];
const TRANSPORT_NAMES = { webtransport: "WebTransport", websocket: "WebSocket" };
const STATS_EVERY_MS = 2000;
const MESSAGES_KEPT = 200;

// ---------------------------------------------------------------------------------------------
// The connection

/** The client in use, or undefined while connecting (or after a failure). */
let client;
/** Counts connection attempts, so that an older attempt's late answer or state change is ignored. */
let attempt = 0;

/** The transport the page asks for: `?transport=` when it names one, otherwise auto. */
function requestedTransport() {
  const asked = new URLSearchParams(location.search).get("transport");
  return TRANSPORTS.includes(asked) ? asked : "auto";
}

async function connect(transport) {
  const mine = ++attempt;
  dropClient();
  showTransport(undefined);
  showState("connecting");
  hideConnectionError();
  try {
    const connected = await qkv.connect({ transport });
    if (mine !== attempt) {
      connected.close();
      return;
    }
    client = connected;
    client.onstatechange = (state) => {
      if (mine !== attempt) return;
      // In "auto" a reconnection may change the transport (WebSocket once UDP is blocked).
      showTransport(connected.transport);
      showState(state);
      if (state === "connected") restoreSubscriptions();
      if (state === "closed") {
        // The client gave up reconnecting: say so where a person looks first, with its reason.
        const why = connected.closedError?.message ?? "the connection was lost";
        showConnectionError(`Disconnected: ${why}. Press Reconnect once the server is back: the subscriptions are made again then.`);
      }
    };
    showTransport(client.transport);
    showState(client.state);
    document.body.classList.add("connected");
    if ($("table").value !== "") action($("load-table"), "table-status", loadFirstPage);
    restoreSubscriptions();
  } catch (error) {
    if (mine !== attempt) return;
    showState("failed");
    showConnectionError(`Could not connect over ${TRANSPORT_NAMES[transport] ?? "any transport"}: ${describe(error)}`);
  }
}

/** Closes the current client and ends what it carried (its subscriptions, to be made again on the next). */
function dropClient() {
  for (const [topic, { chip }] of [...subscriptions]) {
    if (chip.dataset.closing === "true") {
      endSubscription(topic, "unsubscribed");
      continue;
    }
    toRestore.add(topic);
    endSubscription(topic, "the connection was replaced; subscribing again on the new one");
  }
  if (client) {
    client.onstatechange = undefined;
    client.close();
  }
  client = undefined;
  document.body.classList.remove("connected");
}

function showTransport(transport) {
  const badge = $("transport");
  badge.textContent = transport ? TRANSPORT_NAMES[transport] ?? transport : "none";
  badge.dataset.transport = transport ?? "";
}

function showState(state) {
  const badge = $("state");
  badge.textContent = state;
  badge.dataset.state = state;
  $("reconnect").hidden = !["closed", "failed"].includes(state);
}

function showConnectionError(text) {
  const banner = $("connection-error");
  banner.textContent = text;
  banner.hidden = false;
}

function hideConnectionError() {
  $("connection-error").hidden = true;
}

/** The client, or an error a panel shows when there is none. */
function connected() {
  if (!client) throw new Error("not connected to the server yet");
  return client;
}

// ---------------------------------------------------------------------------------------------
// Values: what a person types, and how a value is shown

/** A typed value from an input's text and the kind chosen beside it; throws on text of another kind. */
function parseValue(text, kind) {
  const trimmed = text.trim();
  switch (kind) {
    case "string":
      return { kind, value: text };
    case "integer":
      if (!/^[+-]?\d+$/.test(trimmed)) throw new Error(`"${text}" is not an integer`);
      return { kind, value: BigInt(trimmed) };
    case "float": {
      const x = Number(trimmed);
      if (trimmed === "" || (Number.isNaN(x) && trimmed !== "NaN")) throw new Error(`"${text}" is not a number`);
      return qkv.float(x);
    }
    case "bool":
      if (!/^(true|false)$/i.test(trimmed)) throw new Error(`"${text}" is not a boolean: true or false`);
      return { kind, value: trimmed.toLowerCase() === "true" };
    case "binary":
      try {
        return { kind, value: Uint8Array.from(atob(trimmed.replace(/\s+/g, "")), (c) => c.charCodeAt(0)) };
      } catch {
        throw new Error(`"${text}" is not base64`);
      }
    default:
      throw new Error(`unknown kind ${kind}`);
  }
}

/** The text that parseValue reads back as `value`: what the editor shows for a value it read. */
function editableText(value) {
  switch (value.kind) {
    case "string":
      return value.value;
    case "binary":
      return btoa(Array.from(value.value, (b) => String.fromCharCode(b)).join(""));
    default:
      return qkv.formatValue(value);
  }
}

/** An element showing a value as the client formats it, its kind in a data attribute. */
function valueElement(value) {
  const span = document.createElement("span");
  span.className = `value kind-${value.kind}`;
  span.dataset.kind = value.kind;
  if (value.kind === "string" && value.value === "") {
    span.classList.add("empty");
    span.textContent = '""';
    span.title = "the empty string";
  } else {
    span.textContent = qkv.formatValue(value);
  }
  return span;
}

/** One line for any error: qkv's status and whether the request may have run, or the message. */
function describe(error) {
  if (error instanceof qkv.QkvError) {
    const maybe = error.executed === "maybe" ? " (it may have been executed)" : "";
    const status = error.status === qkv.NO_ANSWER ? "no answer" : String(error.status);
    return `${status}: ${error.message}${maybe}`;
  }
  return error?.message ?? String(error);
}

function setStatus(id, text, kind = "info") {
  const line = $(id);
  line.textContent = text;
  line.dataset.kind = kind;
}

/** Runs a button's action with the button disabled meanwhile; an error goes to the status line. */
async function action(button, statusId, run) {
  button.disabled = true;
  try {
    await run();
  } catch (error) {
    setStatus(statusId, describe(error), "error");
  } finally {
    button.disabled = false;
    showPager();
  }
}

function timeNow() {
  return new Date().toLocaleTimeString([], { hour12: false });
}

// ---------------------------------------------------------------------------------------------
// The table browser: one page at a time, in key order

/** The page shown: its table, size, the key it started after, and the `after` keys of the pages before it. */
let page = { table: "", size: 10, after: undefined, before: [], next: undefined };

/** Counts page loads: only the latest one's page is shown. */
let pageLoads = 0;

/**
 * Loads the first page of the table named in the browser's form. Names are taken as typed: any string
 * is a name (docs/PROTOCOL.md, section 4), the empty one and one with spaces at its ends included.
 */
function loadFirstPage() {
  const table = $("table").value;
  return loadPage(table, Number($("page-size").value), undefined, []);
}

/** Loads the page of `table` after key `after` (undefined: the first); `before` are the pages before it. */
async function loadPage(table, size, after, before) {
  const c = connected();
  const mine = ++pageLoads;
  setStatus("table-status", "loading…");
  // One entry more than the page shows says whether there is a next page.
  const entries = [];
  for await (const chunk of c.hgetall(table, { after, limit: size + 1 })) {
    entries.push(...chunk);
    if (entries.length > size) break;
  }
  if (mine !== pageLoads) return;
  const shown = entries.slice(0, size);
  page = { table, size, after, before, next: entries.length > size ? shown.at(-1).key : undefined };
  renderRows(shown);
  const first = before.length * size + 1;
  setStatus(
    "table-status",
    shown.length === 0
      ? before.length === 0 ? `"${table}" is empty` : "no more keys"
      : `keys ${first}–${first + shown.length - 1}${page.next === undefined ? " (the last)" : ""} of "${table}"`,
  );
  showPager();
}

/** The pager's buttons: a previous page when this is not the first, a next one when there are more keys. */
function showPager() {
  $("prev-page").disabled = page.before.length === 0;
  $("next-page").disabled = page.next === undefined;
}

function renderRows(entries) {
  const body = $("table-rows");
  body.replaceChildren();
  if (entries.length === 0) {
    const row = body.insertRow();
    row.className = "empty";
    const cell = row.insertCell();
    cell.colSpan = 4;
    cell.textContent = "No keys.";
    return;
  }
  for (const entry of entries) {
    const row = body.insertRow();
    row.dataset.key = entry.key;
    row.dataset.test = "row";
    row.tabIndex = 0;
    row.title = "Open this key in the key editor";
    row.insertCell().textContent = entry.key;
    row.insertCell().append(valueElement(entry.value));
    row.insertCell().textContent = entry.value.kind;
    const version = row.insertCell();
    version.className = "num mono";
    version.textContent = String(entry.version);
  }
}

/** Opens a listed key in the key editor, read afresh. */
function openRow(row) {
  // The empty key is a key: only a row without one (the "No keys." row) opens nothing.
  if (row?.dataset.key === undefined) return;
  $("key-table").value = page.table;
  $("key").value = row.dataset.key;
  action($("get-key"), "key-status", readKey);
}

/** Shows the current page again, if it is of `table` (after a write to it). */
function refreshPageOf(table) {
  if (client && page.table === table) {
    loadPage(page.table, page.size, page.after, page.before).catch((error) =>
      setStatus("table-status", describe(error), "error"),
    );
  }
}

// ---------------------------------------------------------------------------------------------
// The key editor: get, set and delete, conditional on the version last read

/** The key last read or written here and its version then (0n: it did not exist). */
let lastRead;

/** The table and key as typed: any string is a name, the empty one included. */
function keyFields() {
  return { table: $("key-table").value, key: $("key").value };
}

/** The options of a write: the version last read when "only if unchanged" is checked. */
function writeOptions(table, key) {
  if (!$("only-if-unchanged").checked) return {};
  if (lastRead?.table !== table || lastRead?.key !== key) {
    throw new Error("read the key first (Get), or uncheck \"only if unchanged\" to write whatever it holds");
  }
  return { expectedVersion: lastRead.version };
}

function showResult(value, version) {
  $("key-result").hidden = false;
  $("result-value").replaceChildren(value ? valueElement(value) : "(none)");
  $("result-kind").textContent = value ? value.kind : "";
  $("result-version").textContent = String(version);
}

async function readKey() {
  const { table, key } = keyFields();
  hideConflict();
  const entry = await connected().hget(table, key);
  if (entry) {
    lastRead = { table, key, version: entry.version };
    $("value").value = editableText(entry.value);
    $("kind").value = entry.value.kind;
    showResult(entry.value, entry.version);
    setStatus("key-status", `read at ${timeNow()}`, "ok");
  } else {
    lastRead = { table, key, version: 0n };
    showResult(undefined, 0n);
    setStatus("key-status", "no such key: a conditional set creates it only if it is still absent", "info");
  }
}

async function writeKey() {
  const { table, key } = keyFields();
  hideConflict();
  const value = parseValue($("value").value, $("kind").value);
  const options = writeOptions(table, key);
  try {
    const written = await connected().hset(table, key, value, options);
    lastRead = { table, key, version: written.version };
    showResult(value, written.version);
    const previous = written.previous ? `, replacing ${qkv.formatValue(written.previous)}` : ", a new key";
    setStatus("key-status", `written at ${timeNow()}: version ${written.version}${previous}`, "ok");
    refreshPageOf(table);
  } catch (error) {
    if (!showConflictOf(error, table, key)) throw error;
  }
}

async function deleteKey() {
  const { table, key } = keyFields();
  hideConflict();
  const options = writeOptions(table, key);
  try {
    const deleted = await connected().hdel(table, key, options);
    lastRead = { table, key, version: 0n };
    $("key-result").hidden = true;
    const previous = deleted.previous ? `deleted: it held ${qkv.formatValue(deleted.previous)}` : "there was no such key";
    setStatus("key-status", `${previous} (${timeNow()})`, "ok");
    refreshPageOf(table);
  } catch (error) {
    if (!showConflictOf(error, table, key)) throw error;
  }
}

/** Shows a version conflict (409) with the key's current value; false for any other error. */
function showConflictOf(error, table, key) {
  if (!(error instanceof qkv.QkvError) || error.status !== 409) return false;
  const current = error.current;
  const panel = $("conflict");
  panel.dataset.table = table;
  panel.dataset.key = key;
  if (current?.value) {
    const read = lastRead.version;
    $("conflict-detail").textContent = `Nothing was changed: "${key}" is no longer at version ${read}. It now holds:`;
    $("conflict-value").replaceChildren(valueElement(current.value));
    $("conflict-kind").textContent = current.value.kind;
    $("conflict-version").textContent = String(current.version);
  } else {
    const since = lastRead.version === 0n ? "was absent" : `was at version ${lastRead.version}`;
    $("conflict-detail").textContent = `Nothing was changed: "${key}" ${since} when read, and does not exist now.`;
    $("conflict-value").replaceChildren("(none)");
    $("conflict-kind").textContent = "";
    $("conflict-version").textContent = String(current?.version ?? 0n);
  }
  panel.hidden = false;
  setStatus("key-status", `409: ${error.message}`, "error");
  return true;
}

function hideConflict() {
  $("conflict").hidden = true;
}

/** After a conflict: read the key again, so that the next conditional write expects its new version. */
async function reloadConflicted() {
  const panel = $("conflict");
  $("key-table").value = panel.dataset.table;
  $("key").value = panel.dataset.key;
  await readKey();
}

// ---------------------------------------------------------------------------------------------
// Publish and subscribe

/** Topic → its subscription and the chip that shows it. */
const subscriptions = new Map();

/**
 * Topics whose subscriptions ended with their connection (replaced, or given up by the client): made
 * again when the next connection is made, as a person who subscribed expects.
 */
const toRestore = new Set();

async function subscribe() {
  await subscribeTo($("topic").value);
}

/** Makes the subscriptions a lost or replaced connection ended again, on the client's connection. */
function restoreSubscriptions() {
  if (!client) return;
  const restoring = [...toRestore];
  toRestore.clear();
  for (const topic of restoring) subscribeTo(topic);
}

async function subscribeTo(topic) {
  if (subscriptions.has(topic)) {
    setStatus("publish-status", `already subscribed to "${topic}"`);
    return;
  }
  const subscription = connected().subscribe(topic);
  const chip = addChip(topic, subscription);
  subscriptions.set(topic, { subscription, chip });
  readSubscription(topic, subscription, chip);
  // The client registers the subscription when it is first read; the chip says when that is done.
  await subscription.ready?.catch(() => {});
}

function addChip(topic, subscription) {
  const chip = document.createElement("li");
  chip.dataset.topic = topic;
  chip.dataset.test = "subscription";
  chip.dataset.state = "subscribing";
  const name = document.createElement("span");
  name.textContent = topic;
  const state = document.createElement("small");
  state.className = "chip-state";
  state.textContent = "subscribing…";
  const close = document.createElement("button");
  close.type = "button";
  close.className = "chip-close";
  close.title = `Unsubscribe from ${topic}`;
  close.setAttribute("aria-label", `Unsubscribe from ${topic}`);
  close.textContent = "×";
  close.addEventListener("click", () => {
    close.disabled = true;
    // Asked to end: not made again on a new connection, even if it has not ended by then.
    chip.dataset.closing = "true";
    subscription.close().catch(() => {});
  });
  chip.append(name, state, close);
  $("subscriptions").append(chip);
  subscription.ready?.then(
    () => markChip(chip, "subscribed"),
    () => {},
  );
  return chip;
}

function markChip(chip, state) {
  chip.dataset.state = state;
  chip.querySelector(".chip-state").textContent = state;
}

/** Reads a subscription's events into the message list until it ends. */
async function readSubscription(topic, subscription, chip) {
  let why = "unsubscribed";
  let lost = false;
  try {
    for await (const event of subscription) {
      if (chip.dataset.state !== "subscribed") markChip(chip, "subscribed");
      addEvent(topic, event);
    }
  } catch (error) {
    why = describe(error);
    // Its connection was lost for good (status 0: no answer), not ended by an unsubscribe or a refusal.
    lost = error?.status === 0 && chip.dataset.closing !== "true";
  }
  // (A reader of a subscription already replaced, by a new connection, has nothing more to say.)
  if (subscriptions.get(topic)?.subscription !== subscription) return;
  if (lost) {
    // Made again on the client's next connection, or on Reconnect; at once, when the client is
    // connected (over WebSocket a subscription has a connection of its own, which may give up while
    // the client's is fine), only if it had worked since it was made: else each round would start
    // another, without end.
    toRestore.add(topic);
    const now = client?.state === "connected" && chip.dataset.state === "subscribed";
    why += now ? "; subscribing again" : "; made again on the next connection, or on Reconnect";
    if (now) queueMicrotask(restoreSubscriptions);
  }
  endSubscription(topic, why);
}

function endSubscription(topic, why) {
  const entry = subscriptions.get(topic);
  if (!entry) return;
  subscriptions.delete(topic);
  entry.chip.remove();
  entry.subscription.close().catch(() => {});
  addNote(topic, `subscription ended: ${why}`);
}

function messageItem(topic, kind) {
  const list = $("messages");
  list.querySelector(".empty")?.remove();
  const item = document.createElement("li");
  item.dataset.test = "message";
  item.dataset.kind = kind;
  item.dataset.topic = topic;
  const time = document.createElement("time");
  time.textContent = timeNow();
  const name = document.createElement("span");
  name.className = "topic";
  name.textContent = topic;
  item.append(time, name);
  list.prepend(item);
  while (list.children.length > MESSAGES_KEPT) list.lastElementChild.remove();
  return item;
}

function addEvent(topic, event) {
  if (event.kind === "missed") {
    const item = messageItem(topic, "missed");
    const text = document.createElement("span");
    text.className = "missed";
    text.textContent = event.reconnected
      ? "subscribed again after the connection was lost: messages published meanwhile were missed"
      : `missed ${event.count} message${event.count === 1n ? "" : "s"} (this subscriber fell behind)`;
    item.append(text);
    return;
  }
  const item = messageItem(topic, "message");
  const values = document.createElement("span");
  values.className = "values";
  if (event.values.length === 0) values.textContent = "(no values)";
  for (const value of event.values) values.append(valueElement(value));
  item.append(values);
}

function addNote(topic, text) {
  const item = messageItem(topic, "note");
  const note = document.createElement("span");
  note.className = "note";
  note.textContent = text;
  item.append(note);
}

async function publish() {
  const topic = $("publish-topic").value;
  const value = parseValue($("publish-value").value, $("publish-kind").value);
  const receivers = await connected().publish(topic, [value]);
  setStatus(
    "publish-status",
    `published to "${topic}" at ${timeNow()}: ${receivers} subscriber${receivers === 1 ? "" : "s"} got it`,
    "ok",
  );
}

// ---------------------------------------------------------------------------------------------
// The server's figures: GET /v1/stats, every 2 s while the page is shown
//
// The answer is `qkv stat --json`'s object (src/stat/figures.rs, `Interval`), over the time since the
// server was last asked (at least a second): requests, errors and their rates, latency quantiles
// (null without requests), the same by command, connections open by transport, limits hit, the
// store's keys and memory, and pub/sub's subscriptions and messages. Without --admin the server
// records no figures and answers 404 with a problem document that says so.

const TRANSPORT_LABELS = { quic: "QUIC", tls: "TLS", tcp: "TCP", http: "HTTP", grpc: "gRPC" };
/** How often to ask again when the server has no figures: only a restart with --admin changes that. */
const STATS_UNAVAILABLE_EVERY_MS = 30_000;

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

/** A count or a rate: whole numbers as they are, others to two or three significant places. */
function number(n) {
  if (n === null || n === undefined) return "–";
  if (Number.isInteger(n)) return n.toLocaleString("en");
  return n.toLocaleString("en", { maximumFractionDigits: Math.abs(n) < 10 ? 2 : 1 });
}

const rate = (n) => `${number(n)}/s`;

/** A latency in milliseconds; "–" when the interval had no requests to measure. */
function ms(n) {
  if (n === null || n === undefined) return "–";
  return `${n.toLocaleString("en", { maximumFractionDigits: n < 1 ? 3 : n < 10 ? 2 : 1 })} ms`;
}

/** An element of `tag` with `text`, a class and a data-stat name (what the test and the CSS find). */
function el(tag, text, { className, stat } = {}) {
  const element = document.createElement(tag);
  if (text !== undefined) element.textContent = text;
  if (className) element.className = className;
  if (stat) element.dataset.stat = stat;
  return element;
}

/** A headline figure: its name, its value, and a smaller line under it. */
function tile(stat, name, value, note) {
  const item = el("div", undefined, { className: "tile", stat });
  item.append(el("dt", name), el("dd", value));
  if (note) item.append(el("small", note, { className: "muted" }));
  return item;
}

/** A row of figures under a heading: [stat, name, value] each. */
function line(stat, name, parts, extra) {
  const row = el("div", undefined, { className: "line", stat });
  const detail = el("dd");
  if (parts.length === 0) detail.append(el("small", "none", { className: "muted" }));
  for (const [partStat, partName, value] of parts) {
    const part = el("span", undefined, { stat: partStat });
    part.append(el("small", partName, { className: "muted" }), ` ${value}`);
    detail.append(part);
  }
  if (extra) detail.append(extra);
  row.append(el("dt", name), detail);
  return row;
}

function sum(object) {
  return Object.values(object ?? {}).reduce((a, b) => a + b, 0);
}

function renderStats(stats) {
  const connections = stats.connections ?? {};
  const storage = stats.storage ?? {};
  const pubsub = stats.pubsub ?? {};

  const tiles = el("div", undefined, { className: "tiles" });
  tiles.append(
    tile("requests_per_second", "Requests", rate(stats.requests_per_second), `${number(stats.requests)} in the interval`),
    tile("errors_per_second", "Errors", rate(stats.errors_per_second), `${number(stats.errors)} not 2xx`),
    tile("p50_ms", "Latency p50", ms(stats.p50_ms)),
    tile("p99_ms", "Latency p99", ms(stats.p99_ms)),
    tile("connections", "Connections", number(sum(connections)), "open now"),
    tile("storage.keys", "Keys", number(storage.keys), storage.keys == null ? "not reported" : "stored"),
    tile("pubsub.subscriptions", "Subscriptions", number(pubsub.subscriptions), "open now"),
  );
  if (stats.errors > 0) tiles.querySelector('[data-stat="errors_per_second"]').classList.add("bad");

  const rows = [];
  rows.push(
    line(
      "connections",
      "Connections",
      Object.entries(connections).map(([name, n]) => [`connections.${name}`, TRANSPORT_LABELS[name] ?? name, number(n)]),
    ),
  );

  const used = storage.memory_used_bytes;
  const budget = storage.memory_budget_bytes;
  let meter;
  if (typeof used === "number" && typeof budget === "number" && budget > 0) {
    meter = document.createElement("meter");
    Object.assign(meter, { min: 0, max: budget, value: used, high: budget * 0.8 });
    meter.title = `${((100 * used) / budget).toFixed(1)}% of the budget`;
  }
  const memory = [];
  if (typeof used === "number") memory.push(["storage.memory_used_bytes", "memory used", bytes(used)]);
  if (typeof budget === "number") memory.push(["storage.memory_budget_bytes", "of a budget of", bytes(budget)]);
  const storageLine = line("storage", "Storage", memory, meter);
  // `null`: the backend does not report its memory (or the server has not measured it yet).
  if (memory.length === 0) {
    storageLine.querySelector("dd").replaceChildren(el("small", "memory not reported", { className: "muted" }));
  }
  rows.push(storageLine);

  rows.push(
    line("pubsub", "Pub/sub", [
      ["pubsub.published", "published", `${rate(pubsub.published_per_second)} (${number(pubsub.published)})`],
      ["pubsub.delivered", "delivered", `${rate(pubsub.delivered_per_second)} (${number(pubsub.delivered)})`],
      ["pubsub.missed", "missed", `${rate(pubsub.missed_per_second)} (${number(pubsub.missed)})`],
    ]),
  );

  const limits = Object.entries(stats.limits ?? {}).filter(([, n]) => n > 0);
  const limitsLine = line(
    "limits",
    "Limits hit",
    limits.map(([name, n]) => [`limits.${name}`, name, number(n)]),
    stats.limits_hit > 0 ? el("small", `(${rate(stats.limits_hit_per_second)})`, { className: "muted" }) : undefined,
  );
  if (stats.limits_hit > 0) limitsLine.classList.add("bad");
  rows.push(limitsLine);

  rows.push(commandsTable(stats.commands ?? {}));
  $("stats").replaceChildren(tiles, ...rows);
}

/** Requests by command, the busiest first: the commands answered in the interval. */
function commandsTable(commands) {
  const row = el("div", undefined, { className: "line", stat: "commands" });
  const detail = el("dd");
  const entries = Object.entries(commands).sort(([a, x], [b, y]) => y.requests - x.requests || a.localeCompare(b));
  if (entries.length === 0) {
    detail.append(el("small", "no requests in the interval", { className: "muted" }));
  } else {
    const table = el("table", undefined, { className: "figures-table" });
    const head = table.createTHead().insertRow();
    for (const name of ["", "req/s", "requests", "errors", "p50", "p99"]) head.append(el("th", name));
    const body = table.createTBody();
    for (const [command, figures] of entries) {
      const tr = body.insertRow();
      tr.dataset.stat = `commands.${command}`;
      tr.append(el("th", command));
      for (const text of [
        rate(figures.requests_per_second),
        number(figures.requests),
        number(figures.errors),
        ms(figures.p50_ms),
        ms(figures.p99_ms),
      ]) {
        tr.insertCell().textContent = text;
      }
      if (figures.errors > 0) tr.classList.add("bad");
    }
    detail.append(table);
  }
  row.append(el("dt", "By command"), detail);
  return row;
}

/** Why the server gave no figures: its status and its problem document's detail. */
async function refusal(answer) {
  let detail;
  try {
    detail = (await answer.json())?.detail;
  } catch {
    // not a problem document: the status says enough
  }
  const status = answer.statusText ? `${answer.status} ${answer.statusText}` : String(answer.status);
  return detail ? `${status}: ${detail}` : status;
}

let statsTimer;
let statsAsking = false;

async function refreshStats() {
  if (statsAsking) return;
  statsAsking = true;
  clearTimeout(statsTimer);
  let next = STATS_EVERY_MS;
  try {
    const answer = await fetch("/v1/stats", { cache: "no-store", headers: { accept: "application/json" } });
    if (!answer.ok) {
      if (answer.status === 404) next = STATS_UNAVAILABLE_EVERY_MS;
      throw new Error(await refusal(answer));
    }
    const stats = await answer.json();
    renderStats(stats);
    const restarted = stats.restarted ? " · the server restarted meanwhile" : "";
    $("stats-updated").textContent = `over the last ${stats.interval_seconds.toFixed(1)} s · ${timeNow()}${restarted}`;
    $("stats").dataset.state = "ok";
  } catch (error) {
    $("stats-updated").textContent = timeNow();
    $("stats").dataset.state = "unavailable";
    const note = el("div", undefined, { className: "note" });
    note.append(el("strong", "Figures unavailable"), " ", el("span", error.message, { stat: "error" }));
    $("stats").replaceChildren(note);
  } finally {
    statsAsking = false;
    // Nobody looks at a hidden page's figures: ask again when it is shown.
    if (!document.hidden) statsTimer = setTimeout(refreshStats, next);
  }
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refreshStats();
});

// ---------------------------------------------------------------------------------------------
// Wiring

function wire() {
  const select = $("transport-select");
  select.value = requestedTransport();
  select.addEventListener("change", () => {
    const url = new URL(location.href);
    url.searchParams.set("transport", select.value);
    history.replaceState(null, "", url);
    connect(select.value);
  });
  $("reconnect").addEventListener("click", () => connect(select.value));

  $("browse-form").addEventListener("submit", (event) => {
    event.preventDefault();
    action($("load-table"), "table-status", loadFirstPage);
  });
  $("next-page").addEventListener("click", () =>
    action($("next-page"), "table-status", () => loadPage(page.table, page.size, page.next, [...page.before, page.after])),
  );
  $("prev-page").addEventListener("click", () =>
    action($("prev-page"), "table-status", () => loadPage(page.table, page.size, page.before.at(-1), page.before.slice(0, -1))),
  );
  $("table-rows").addEventListener("click", (event) => openRow(event.target.closest("tr")));
  $("table-rows").addEventListener("keydown", (event) => {
    if (event.key === "Enter") openRow(event.target.closest("tr"));
  });

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    // Enter in the value's field means "write this", not "read over what I typed".
    if (document.activeElement === $("value")) {
      action($("set-key"), "key-status", writeKey);
    } else {
      action($("get-key"), "key-status", readKey);
    }
  });
  $("set-key").addEventListener("click", () => action($("set-key"), "key-status", writeKey));
  $("delete-key").addEventListener("click", () => action($("delete-key"), "key-status", deleteKey));
  $("conflict-reload").addEventListener("click", () =>
    action($("conflict-reload"), "key-status", reloadConflicted),
  );

  $("subscribe-form").addEventListener("submit", (event) => {
    event.preventDefault();
    action($("subscribe"), "publish-status", subscribe);
  });
  $("publish-form").addEventListener("submit", (event) => {
    event.preventDefault();
    action($("publish"), "publish-status", publish);
  });
  $("clear-messages").addEventListener("click", () => $("messages").replaceChildren());

  connect(select.value);
  refreshStats();
}

wire();
