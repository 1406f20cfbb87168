// qkv's JavaScript client in headless Chromium under load: one session over WebTransport or WebSocket,
// a closed loop of CONCURRENCY HGETs in flight (each caller sends its next request when its answer
// arrives), for a warm-up and then a measured period. Prints one JSON object to stdout:
//
//   {"transport", "requests", "seconds", "throughput_rps", "p50_us", "p99_us", "max_us", "errors",
//    "first_error", "warmup_requests", "rate", "websockets"}
//
//   QKV_WEB_URL=https://127.0.0.1:PORT QKV_CA=ca.pem node bench.mjs webtransport|websocket \
//     [--seconds 5] [--warmup 1] [--concurrency 64] [--keys 10000] [--value-size 64] [--rate R]
//
// With --rate, a paced (open) loop instead, as `qkv bench --rate`: request n falls due at start + n / R,
// the next free caller of CONCURRENCY sends it then (or as soon as one is free). Its latency runs from
// when it fell due if every caller was busy then, so a client that falls behind cannot hide its
// queueing; from when the caller's timer fired otherwise (timers are late by a millisecond or more).
//
// `cargo xtask browser-report` runs it (docs/bench/BROWSER.md). Latency is performance.now() around
// each `client.hget()` in the page: the client's whole path (protobuf, framing, the browser's network
// stack) as a web application sees it. Chromium coarsens performance.now() to 100 µs in pages that are
// not cross-origin isolated, which this one is not. The run is checked to have used the transport asked
// for: the client says which it opened, and the page must have opened no WebSocket over WebTransport
// and exactly one over WebSocket. Stderr gets "loop started" when the warm-up begins and "loop ended"
// when the measured period ends (the report samples the server's and the browser's CPU time then).

import { launchTrusting } from "./chromium.mjs";

const WEB_URL = required("QKV_WEB_URL");
const CA = required("QKV_CA");
const TRANSPORT = process.argv[2];
if (!["webtransport", "websocket"].includes(TRANSPORT)) {
  console.error("usage: node bench.mjs webtransport|websocket [--seconds S] [--warmup S] [--concurrency N] [--keys N] [--value-size B] [--rate R]");
  process.exit(2);
}
const SECONDS = option("--seconds", 5);
const WARMUP = option("--warmup", 1);
const CONCURRENCY = option("--concurrency", 64);
const KEYS = option("--keys", 10_000);
const VALUE_SIZE = option("--value-size", 64);
const RATE = option("--rate", null);

// Everything is bounded in time: a hang anywhere ends the process (and its Chromium) with an error.
const DEADLINE_MS = (WARMUP + SECONDS + 60) * 1000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set (see the top of bench.mjs)`);
    process.exit(2);
  }
  return value;
}

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  if (at < 0) return fallback;
  const value = Number(process.argv[at + 1]);
  if (!(value > 0)) {
    console.error(`${name} needs a positive number`);
    process.exit(2);
  }
  return value;
}

/** Runs in the page: connects, preloads, runs the loop, and returns the figures. */
async function inPage({ transport, seconds, warmup, concurrency, keys, valueSize, rate }) {
  const qkv = await import("/console/qkv-client.js");
  // No reconnection: a lost connection must show as errors, not be hidden by a new one.
  const client = await qkv.connect({ transport, reconnect: false, requestTimeoutMs: 10_000 });
  if (client.transport !== transport) throw new Error(`asked for ${transport}, connected over ${client.transport}`);
  const table = "browser-bench";
  const value = "v".repeat(valueSize);
  const batch = 500;
  for (let first = 0; first < keys; first += batch) {
    const entries = [];
    for (let i = first; i < Math.min(first + batch, keys); i++) entries.push([`key:${i}`, value]);
    await client.hmset(table, entries);
  }
  const check = await client.hget(table, "key:0");
  if (check === undefined) throw new Error("the preloaded key:0 is missing");

  console.log("loop started");
  const start = performance.now();
  const measureFrom = start + warmup * 1000;
  const end = measureFrom + seconds * 1000;
  // Latencies of the measured period in µs, in a preallocated array that grows when full.
  let samples = new Float64Array(1 << 18);
  let count = 0;
  let errors = 0;
  let warmupRequests = 0;
  let firstError;
  let ticket = 0;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  async function caller(seed) {
    let state = seed;
    for (;;) {
      let sent = performance.now();
      if (rate !== null) {
        // The next request's due time; latency counts from it, any wait for a free caller included.
        const due = start + (ticket++ * 1000) / rate;
        if (due >= end) return;
        if (due > sent) {
          // Free before it fell due: timed from when the timer fired (setTimeout is late by a
          // millisecond or more, the page's scheduling, not the transport's).
          await sleep(due - sent);
          sent = Math.max(due, performance.now());
        } else {
          sent = due;
        }
      }
      if (sent >= end) return;
      // A cheap pseudo-random key (xorshift32), uniform over the preloaded ones.
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      const key = `key:${(state >>> 0) % keys}`;
      let ok = true;
      try {
        await client.hget(table, key);
      } catch (e) {
        ok = false;
        firstError ??= String(e);
      }
      const done = performance.now();
      if (sent < measureFrom) {
        warmupRequests++;
        continue;
      }
      if (!ok) {
        errors++;
        continue;
      }
      if (count === samples.length) {
        const bigger = new Float64Array(samples.length * 2);
        bigger.set(samples);
        samples = bigger;
      }
      samples[count++] = (done - sent) * 1000;
    }
  }
  await Promise.all(Array.from({ length: concurrency }, (_, i) => caller(i + 1)));
  const measured = (Math.max(performance.now(), end) - measureFrom) / 1000;
  console.log("loop ended");
  client.close();
  const sorted = samples.subarray(0, count).sort();
  const quantile = (q) => (count === 0 ? 0 : sorted[Math.min(count - 1, Math.ceil(q * count) - 1)]);
  return {
    transport: client.transport,
    requests: count,
    seconds: measured,
    throughput_rps: count / measured,
    p50_us: quantile(0.5),
    p99_us: quantile(0.99),
    max_us: count === 0 ? 0 : sorted[count - 1],
    errors,
    first_error: firstError ?? null,
    warmup_requests: warmupRequests,
    rate,
  };
}

const timer = setTimeout(() => {
  console.error(`bench.mjs: no result within ${DEADLINE_MS / 1000} s`);
  process.exit(1);
}, DEADLINE_MS);

const chromium = await launchTrusting(CA);
let failed = false;
try {
  const page = await chromium.browser.newPage();
  const websockets = [];
  page.on("websocket", (ws) => websockets.push(ws.url()));
  page.on("console", (message) => {
    const text = message.text();
    if (text === "loop started" || text === "loop ended") console.error(text);
    else if (message.type() === "error") console.error(`page: ${text}`);
  });
  // A page of the web listener's origin, so that the client is same-origin (its own console's).
  await page.goto(`${WEB_URL}/webtransport-cert`);
  const result = await page.evaluate(inPage, {
    transport: TRANSPORT,
    seconds: SECONDS,
    warmup: WARMUP,
    concurrency: CONCURRENCY,
    keys: KEYS,
    valueSize: VALUE_SIZE,
    rate: RATE,
  });
  result.websockets = websockets.length;
  const expected = TRANSPORT === "websocket" ? 1 : 0;
  if (websockets.length !== expected) {
    throw new Error(`over ${TRANSPORT} the page opened ${websockets.length} WebSocket(s): ${websockets.join(", ")}`);
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
} catch (error) {
  failed = true;
  console.error(`bench.mjs over ${TRANSPORT}: ${error.stack ?? error}`);
} finally {
  await chromium.close();
  clearTimeout(timer);
}
process.exit(failed ? 1 : 0);
