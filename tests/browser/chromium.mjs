// Debian's Chromium, headless, driven by playwright-core (which never downloads a browser of its own
// here), trusting qkv's development CA the way a person's browser would: the CA is added as a trusted
// authority to the NSS database of a fresh $HOME ($HOME/.pki/nssdb, where Chromium on Linux looks).
// No certificate check is skipped or pinned: the server's certificate must chain to that CA and name
// the host dialled, and WebTransport's own certificate is checked by its hash (serverCertificateHashes).

import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

import { chromium } from "playwright-core";

export const CHROMIUM = process.env.QKV_CHROMIUM ?? "/usr/bin/chromium";

/** What this machine's closed network and a container need; never --disable-quic (WebTransport is QUIC). */
const ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-dev-shm-usage",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

/** Runs certutil (Debian's libnss3-tools), saying what to install when it is missing. */
function certutil(args) {
  try {
    execFileSync("certutil", args, { stdio: ["ignore", "pipe", "pipe"] });
  } catch (error) {
    if (error.code === "ENOENT") throw new Error("certutil is missing: apt-get install libnss3-tools (cargo xtask test does)");
    throw new Error(`certutil ${args.join(" ")} failed: ${error.stderr ?? error.message}`);
  }
}

/** A fresh home whose NSS database trusts `caFile` to identify servers ("C,,": a trusted CA for TLS). */
function homeTrusting(caFile, under) {
  const home = mkdtempSync(path.join(under, "chromium-home-"));
  const nssdb = path.join(home, ".pki", "nssdb");
  mkdirSync(nssdb, { recursive: true });
  certutil(["-N", "-d", `sql:${nssdb}`, "--empty-password"]);
  certutil(["-A", "-d", `sql:${nssdb}`, "-n", "qkv development CA", "-t", "C,,", "-i", caFile]);
  return home;
}

/**
 * Launches Chromium trusting `ca` (a PEM file), with its home and profile under `workDir` (a fresh
 * temporary directory when not given). Returns the browser and a `close()` that also removes them.
 */
export async function launchTrusting(ca, workDir = tmpdir()) {
  const home = homeTrusting(ca, workDir);
  let browser;
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
      // playwright-core gives the browser a fresh profile (user data directory) of its own.
      env: {
        ...process.env,
        HOME: home,
        XDG_CONFIG_HOME: path.join(home, ".config"),
        XDG_CACHE_HOME: path.join(home, ".cache"),
      },
      timeout: 30_000,
    });
  } catch (error) {
    rmSync(home, { recursive: true, force: true });
    if (error.message.includes("ENOENT") || error.message.includes("doesn't exist")) {
      throw new Error(`${CHROMIUM} is missing: apt-get install chromium (cargo xtask test does)\n${error.message}`);
    }
    throw error;
  }
  return {
    browser,
    async close() {
      await browser.close().catch(() => {});
      rmSync(home, { recursive: true, force: true });
    },
  };
}
