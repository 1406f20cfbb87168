// The console's picture for the docs: fills a server with a little realistic data, uses the console
// as a person would (a table, a key read and written, two subscriptions and their messages) and saves
// docs/console.png (the whole page, 1280 pixels wide).
//
//   cargo build --bin qkv && node tests/browser/screenshot.mjs [OUT.png]     (or: npm run screenshot)
//
// It starts a qkv server of its own (QKV_BIN, or the newest of target/{debug,release}/qkv: build one
// first) on free loopback ports with a temporary certificate directory, and stops it at the end. With
// QKV_WEB_URL and QKV_CA set, it uses that server instead.

import { spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { launchTrusting } from "./chromium.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const OUT = path.resolve(process.argv[2] ?? path.join(ROOT, "docs/console.png"));
const WAIT_MS = 15_000;

/** A port nothing listens on now, for `kind` ("udp4" or "tcp"). */
function freePort(kind) {
  return new Promise((resolve, reject) => {
    if (kind === "udp4") {
      const socket = createSocket("udp4");
      socket.on("error", reject);
      socket.bind(0, "127.0.0.1", () => {
        const { port } = socket.address();
        socket.close(() => resolve(port));
      });
    } else {
      const server = createServer();
      server.on("error", reject);
      server.listen(0, "127.0.0.1", () => {
        const { port } = server.address();
        server.close(() => resolve(port));
      });
    }
  });
}

function newestQkv() {
  if (process.env.QKV_BIN) return process.env.QKV_BIN;
  const built = ["debug", "release"]
    .map((profile) => path.join(ROOT, "target", profile, "qkv"))
    .flatMap((file) => {
      try {
        return [{ file, at: statSync(file).mtimeMs }];
      } catch {
        return [];
      }
    })
    .sort((a, b) => b.at - a.at);
  if (built.length === 0) throw new Error("no qkv binary: cargo build --bin qkv first, or set QKV_BIN");
  return built[0].file;
}

/** A qkv server with a web listener and figures, ready once it says its web listener serves. */
async function startServer(work) {
  const [quic, web, admin] = [await freePort("udp4"), await freePort("tcp"), await freePort("tcp")];
  const certs = path.join(work, "certs");
  const child = spawn(
    newestQkv(),
    ["serve", "--listen", `127.0.0.1:${quic}`, "--no-tcp", "--web", `127.0.0.1:${web}`, "--admin", `127.0.0.1:${admin}`, "--certs", certs],
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, NO_COLOR: "1" } },
  );
  const said = [];
  const ready = new Promise((resolve, reject) => {
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream }).on("line", (line) => {
        said.push(line);
        if (line.includes("web listener serving")) resolve();
      });
    }
    child.on("exit", (code) => reject(new Error(`qkv serve exited (${code}):\n${said.join("\n")}`)));
    setTimeout(() => reject(new Error(`qkv serve did not start its web listener:\n${said.join("\n")}`)), WAIT_MS).unref();
  });
  try {
    await ready;
  } catch (error) {
    child.kill();
    throw error;
  }
  return { url: `https://127.0.0.1:${web}`, ca: path.join(certs, "ca.pem"), stop: () => child.kill("SIGTERM") };
}

function rest(page, method, url, body) {
  return page.evaluate(
    async ({ method, url, body }) => {
      const answer = await fetch(url, { method, body: JSON.stringify(body), headers: { "content-type": "application/json" } });
      if (!answer.ok) throw new Error(`${method} ${url}: ${answer.status} ${await answer.text()}`);
    },
    { method, url, body },
  );
}

async function stage(page, url) {
  await page.goto(`${url}/`);
  await page.locator('#transport[data-transport="webtransport"], #transport[data-transport="websocket"]').waitFor();

  await rest(page, "POST", "/v1/tables/users/mset", {
    items: [
      { key: "ada", value: "Ada Lovelace" },
      { key: "babbage", value: "Charles Babbage" },
      { key: "born", value: 1815 },
      { key: "hopper", value: "Grace Hopper" },
      { key: "lamport", value: "Leslie Lamport" },
      { key: "liskov", value: "Barbara Liskov" },
      { key: "score", value: 98.6 },
      { key: "turing", value: "Alan Turing" },
      { key: "verified", value: true },
      { key: "avatar", value: { binary: "iVBORw0KGgo=" } },
      { key: "wirth", value: "Niklaus Wirth" },
      { key: "zuse", value: "Konrad Zuse" },
    ],
  });

  // A page of the table, and a key read, then changed (conditionally, on the version read).
  await page.selectOption("#page-size", "5");
  await page.click("#load-table");
  await page.locator("#table-rows tr[data-key]").nth(4).waitFor();
  await page.click('#table-rows tr[data-key="ada"]');
  await page.locator("#key-status", { hasText: "read at" }).waitFor();
  await page.fill("#value", "Ada, Countess of Lovelace");
  await page.click("#set-key");
  await page.locator("#key-status", { hasText: "written at" }).waitFor();

  // Two subscriptions and some traffic on them: from the console and from another publisher.
  for (const topic of ["news", "deploys"]) {
    await page.fill("#topic", topic);
    await page.click("#subscribe");
    await page.locator(`#subscriptions li[data-topic="${topic}"][data-state="subscribed"]`).waitFor();
  }
  await rest(page, "POST", "/v1/topics/deploys", ["api", "v2.4.1", true]);
  await rest(page, "POST", "/v1/topics/news", ["Ada Lovelace's notes published", 1843]);
  await page.fill("#publish-topic", "news");
  await page.fill("#publish-value", "the first computer program");
  await page.click("#publish");
  await page.locator("#publish-status", { hasText: "got it" }).waitFor();
  await page.locator('#messages li[data-kind="message"]').nth(2).waitFor();

  // Figures that include this traffic: the refresh after it.
  await page.locator('#stats[data-state="ok"]').waitFor();
  const shown = await page.locator("#stats-updated").textContent();
  await page.waitForFunction((before) => document.getElementById("stats-updated").textContent !== before, shown);
}

const work = mkdtempSync(path.join(tmpdir(), "qkv-screenshot-"));
const server = process.env.QKV_WEB_URL
  ? { url: process.env.QKV_WEB_URL, ca: process.env.QKV_CA, stop() {} }
  : await startServer(work);
let chromium;
try {
  chromium = await launchTrusting(server.ca, work);
  const page = await chromium.browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(WAIT_MS);
  await stage(page, server.url);
  await page.screenshot({ path: OUT, fullPage: true });
  console.log(`saved ${path.relative(process.cwd(), OUT)}`);
} finally {
  await chromium?.close();
  server.stop();
  rmSync(work, { recursive: true, force: true });
}
