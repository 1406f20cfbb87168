// What the integration tests share: the real server they are given (QKV_WEB_URL, the web listener's
// origin, such as https://localhost:9528; tests/js_client.rs starts one), and clients of it that are
// closed after each test. Without QKV_WEB_URL every test file fails at once: these tests do not skip.
//
// The server's certificate is verified as any TLS client's: node trusts its development CA through
// NODE_EXTRA_CA_CERTS (its certs/ca.pem).

import { afterEach } from "node:test";
import { connect, type Client, type ConnectOptions } from "../../src/index.js";

const given = process.env.QKV_WEB_URL;
if (!given) {
  throw new Error(
    "QKV_WEB_URL is not set: these tests need a real qkv server's web listener, e.g. " +
      "QKV_WEB_URL=https://localhost:9528 NODE_EXTRA_CA_CERTS=certs/ca.pem npm run test:integration " +
      "(cargo test --test js_client starts one and runs them)",
  );
}

/** The web listener's origin, e.g. https://localhost:9528. */
export const WEB_URL: string = given;

const clients: Client[] = [];
afterEach(() => {
  for (const client of clients.splice(0)) client.close();
});

/** A client of the server over WebSocket (node has no WebTransport), closed after the test. */
export async function client(options: ConnectOptions = {}): Promise<Client> {
  const c = await connect({ url: WEB_URL, transport: "websocket", ...options });
  clients.push(c);
  return c;
}

let made = 0;
/** A table (or topic) name no other test uses, so that tests can run in any order against one server. */
export function unique(what: string): string {
  made += 1;
  return `js-${what}-${process.pid}-${made}-${Date.now()}`;
}

/** Node's WebSocket, keeping each socket it opens so that a test can cut one (`list[i].close()`). */
export function sockets(): { WebSocket: typeof WebSocket; list: WebSocket[] } {
  const list: WebSocket[] = [];
  class Kept extends WebSocket {
    constructor(url: string | URL) {
      super(url);
      list.push(this);
    }
  }
  return { WebSocket: Kept, list };
}

/** Node's WebSocket, sending the `Origin` header a page of `origin` would (node sends none of its own). */
export function withOrigin(origin: string): typeof WebSocket {
  return class extends WebSocket {
    constructor(url: string | URL) {
      // undici's WebSocket takes headers in its second argument (not a browser's API).
      super(url, { headers: { origin } } as unknown as string[]);
    }
  };
}
