// Where a browser's WebTransport requests spend their time: Chromium's own cost per stream, apart from
// qkv's client. On a page of the web listener, 64 callers in a closed loop for 3 s each, twice,
// interleaved: bare streams (open a bidirectional stream, write an empty request frame, close, read the
// answer to its end: no client code, no protobuf) and the client's hget(). Prints requests/s of each.
// Measured and explained in docs/DESIGN.md ("Browsers"); docs/bench/BROWSER.md has the full report.
//
//   qkv serve --listen 127.0.0.1:29527 --no-tcp --web 127.0.0.1:29443 &
//   QKV_WEB_URL=https://127.0.0.1:29443 QKV_CA=certs/ca.pem node tests/browser/wt-streams.mjs
import { launchTrusting } from "./chromium.mjs";
const [url, ca] = [process.env.QKV_WEB_URL, process.env.QKV_CA];
const { browser, close } = await launchTrusting(ca);
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.error("page:", m.text()));
  await page.goto(url + "/");
  const out = await page.evaluate(async () => {
    const cert = await (await fetch("/webtransport-cert")).json();
    const hex = cert.sha256.match(/../g).map((h) => parseInt(h, 16));
    const wtUrl = `https://127.0.0.1:${cert.port}/`;
    const wt = new WebTransport(wtUrl, { serverCertificateHashes: [{ algorithm: "sha-256", value: new Uint8Array(hex) }] });
    await wt.ready;
    async function loop(fn, ms) {
      let n = 0; const end = performance.now() + ms;
      await Promise.all(Array.from({ length: 64 }, async () => { while (performance.now() < end) { await fn(); n++; } }));
      return n / (ms / 1000);
    }
    const bare = async () => {
      const s = await wt.createBidirectionalStream();
      const w = s.writable.getWriter();
      w.write(new Uint8Array([0, 0, 0, 0])); w.close();
      const r = s.readable.getReader();
      for (;;) { const c = await r.read(); if (c.done) break; }
    };
    const qkv = await import("/console/qkv-client.js");
    const client = await qkv.connect({ transport: "webtransport", webTransportUrl: wtUrl, reconnect: false });
    await client.hset("t", "k", "v");
    const viaClient = () => client.hget("t", "k");
    const r = {};
    r.bare1 = await loop(bare, 3000);
    r.client1 = await loop(viaClient, 3000);
    r.bare2 = await loop(bare, 3000);
    r.client2 = await loop(viaClient, 3000);
    return r;
  });
  console.log(JSON.stringify(out));
} finally { await close(); }
