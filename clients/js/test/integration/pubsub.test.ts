// Subscriptions as async iterators against a real server (docs/PROTOCOL.md, section 6.1): messages
// in the order published, to every subscriber; closing or leaving the loop unsubscribes; a subscriber
// that falls behind is told how many messages it missed; a subscription whose connection is lost is
// made again, and says that messages may have been missed meanwhile.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Worker } from "node:worker_threads";
import { QkvError, value, type Subscription, type SubscriptionEvent } from "../../src/index.js";
import { WEB_URL, client, sockets, unique } from "./server.js";

/** The next `n` events of `subscription`. */
async function take(subscription: Subscription, n: number): Promise<SubscriptionEvent[]> {
  const events: SubscriptionEvent[] = [];
  const iterator = subscription[Symbol.asyncIterator]();
  while (events.length < n) {
    const next = await iterator.next();
    assert.ok(!next.done, `the subscription ended after ${events.length} of ${n} events`);
    events.push(next.value);
  }
  return events;
}

test("subscribers get every message in the order published; closing ends the iteration", async () => {
  const [subscriber, publisher] = [await client(), await client()];
  const topic = unique("news");
  const first = subscriber.subscribe(topic);
  const second = subscriber.subscribe(topic);
  await Promise.all([first.ready, second.ready]);
  assert.equal(typeof first.id, "number");

  // Pipelined on the publisher's WebSocket: executed, and so delivered, in the order sent.
  const n = 200;
  const receivers = await Promise.all(
    Array.from({ length: n }, (_, i) => publisher.publish(topic, i === 0 ? [] : [i, `message ${i}`, i % 2 === 0])),
  );
  assert.deepEqual(new Set(receivers), new Set([2]), "each message reached both subscribers");
  const expected: SubscriptionEvent[] = Array.from({ length: n }, (_, i) => ({
    kind: "message",
    values: i === 0 ? [] : [value(i), value(`message ${i}`), value(i % 2 === 0)],
  }));
  assert.deepEqual(await take(first, n), expected);
  assert.deepEqual(await take(second, n), expected);

  await first.close();
  assert.deepEqual(await first[Symbol.asyncIterator]().next(), { value: undefined, done: true });
  assert.equal(await publisher.publish(topic, ["after"]), 1, "only the second subscriber is left");
  assert.deepEqual(await take(second, 1), [{ kind: "message", values: [value("after")] }]);
});

test("leaving a for await loop unsubscribes", async () => {
  const [subscriber, publisher] = [await client(), await client()];
  const topic = unique("leave");
  const subscription = subscriber.subscribe(topic);
  await subscription.ready;
  await publisher.publish(topic, ["hello"]);
  for await (const event of subscription) {
    assert.deepEqual(event, { kind: "message", values: [value("hello")] });
    break;
  }
  assert.equal(await publisher.publish(topic, ["anyone?"]), 0, "no subscriber is left");
});

test("a subscriber that falls behind is told how many messages it missed, then gets the next ones", async () => {
  // The server holds at most 64 KiB in each subscriber's queue (tests/js_client.rs), and one message
  // of any size when it is empty. This thread stops reading (Atomics.wait) while a worker publishes
  // messages of 1 MiB until the server says that one was missed: the socket buffers are full then.
  const subscriber = await client();
  const topic = unique("lag");
  const subscription = subscriber.subscribe(topic);
  await subscription.ready;
  const state = new Int32Array(new SharedArrayBuffer(3 * Int32Array.BYTES_PER_ELEMENT));
  const worker = new Worker(new URL("./lag-publisher.js", import.meta.url), { workerData: { url: WEB_URL, topic, state } });
  const woken = Atomics.wait(state, 0, 0, 120_000);
  await worker.terminate();
  assert.notEqual(woken, "timed-out", "the publisher never finished");
  assert.equal(Atomics.load(state, 0), 1, "the publisher failed (its error is printed above)");
  const published = Atomics.load(state, 1);
  assert.equal(Atomics.load(state, 2), 1, "it stopped at the first message missed");

  // Every message but the last arrives, in order; then the one missed is counted.
  const events = await take(subscription, published);
  events.slice(0, -1).forEach((event, i) => {
    assert.equal(event.kind, "message");
    assert.deepEqual(event.kind === "message" && event.values[0], value(i));
  });
  assert.deepEqual(events[published - 1], { kind: "missed", count: 1n });
  // The queue is empty again: the next message arrives.
  const publisher = await client();
  assert.equal(await publisher.publish(topic, ["caught up"]), 1);
  assert.deepEqual(await take(subscription, 1), [{ kind: "message", values: [value("caught up")] }]);
});

test("a subscription whose connection is lost is made again, and says messages may have been missed", async () => {
  const opened = sockets();
  const subscriber = await client({ WebSocket: opened.WebSocket, reconnect: { initialDelayMs: 10, maxDelayMs: 100 } });
  const publisher = await client();
  const topic = unique("again");
  const subscription = subscriber.subscribe(topic);
  await subscription.ready;
  const firstId = subscription.id;
  // The subscription's own WebSocket (the client's first one carries its calls).
  assert.equal(opened.list.length, 2);
  opened.list[1].close();
  assert.deepEqual(await take(subscription, 1), [{ kind: "missed", count: 1n, reconnected: true }]);
  assert.equal(opened.list.length, 3, "a new WebSocket for it");
  assert.notEqual(subscription.id, undefined);
  assert.equal(await publisher.publish(topic, ["still here"]), 1);
  assert.deepEqual(await take(subscription, 1), [{ kind: "message", values: [value("still here")] }]);
  assert.equal(typeof firstId, "number");
});

// Each subscription holds a WebSocket (over WebTransport, a stream) for its life: a client holds at
// most maxSubscriptions (128) of them, and one more fails at once, while its calls go on.
test("a client holds at most 128 subscriptions: the next fails at once with a 429, and calls go on", async () => {
  const c = await client();
  const topic = unique("many");
  const subscriptions = Array.from({ length: 128 }, () => c.subscribe(topic));
  await Promise.all(subscriptions.map((s) => s.ready));
  const refused = c.subscribe(topic);
  await assert.rejects(refused.ready, (e: unknown) => e instanceof QkvError && e.status === 429 && /maxSubscriptions/.test(e.message));
  assert.equal(await c.publish(topic, ["to all"]), 128);
  const [event] = await take(subscriptions[127], 1);
  assert.deepEqual(event, { kind: "message", values: [value("to all")] });
  await subscriptions[0].close();
  await c.subscribe(topic).ready;
});
