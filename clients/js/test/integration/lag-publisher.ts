// A worker thread for pubsub.test.ts: publishes large messages to a topic (with its own connection)
// while the main thread, which holds the topic's subscriber, is blocked in Atomics.wait and reads
// nothing, until the server says a subscriber missed one (Publish's `lagging`). Then it says how
// many it published and wakes the main thread.
//
// workerData: { url, topic, state: Int32Array over a SharedArrayBuffer }. It sets state[1] to the
// messages published, state[2] to those a subscriber missed, then state[0] to 1 (done) or 2 (failed).

import { workerData } from "node:worker_threads";
import { connect } from "../../src/index.js";

const { url, topic, state } = workerData as { url: string; topic: string; state: Int32Array };

/** Far more than the kernel's and the server's buffers hold: a bound in case lagging never comes. */
const MAX_MESSAGES = 400;
const LARGE = new Uint8Array(1024 * 1024);

let published = 0;
let lagging = 0;
try {
  const client = await connect({ url, transport: "websocket", requestTimeoutMs: 60_000 });
  try {
    while (lagging === 0 && published < MAX_MESSAGES) {
      const counts = await client.publishCounts(topic, [published, LARGE]);
      published += 1;
      lagging += counts.lagging;
    }
  } finally {
    client.close();
  }
  Atomics.store(state, 1, published);
  Atomics.store(state, 2, lagging);
  Atomics.store(state, 0, 1);
} catch (e) {
  console.error("the lag publisher failed:", e);
  Atomics.store(state, 0, 2);
} finally {
  Atomics.notify(state, 0);
}
