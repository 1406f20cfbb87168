// The reconnection schedule: exponential backoff with full jitter, bounded (docs/PROTOCOL.md, section 13).

import { test } from "node:test";
import assert from "node:assert/strict";
import { DEFAULT_RECONNECT, backoffCeiling, backoffDelay, reconnectPolicy } from "../src/backoff.js";

test("the ceiling doubles from 100 ms up to 5 s", () => {
  const ceilings = Array.from({ length: 9 }, (_, n) => backoffCeiling(n));
  assert.deepEqual(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
  assert.equal(backoffCeiling(10_000), 5000, "no overflow after many attempts");
});

test("each wait is uniformly random below its ceiling (full jitter)", () => {
  assert.equal(backoffDelay(3, DEFAULT_RECONNECT, () => 0), 0);
  assert.equal(backoffDelay(3, DEFAULT_RECONNECT, () => 0.5), 400);
  assert.equal(backoffDelay(3, DEFAULT_RECONNECT, () => 0.999999), 799);
  for (let attempt = 0; attempt < 20; attempt++) {
    const delay = backoffDelay(attempt);
    assert.ok(delay >= 0 && delay < backoffCeiling(attempt), `attempt ${attempt}: ${delay}`);
  }
});

test("the policy takes the options given and defaults the others", () => {
  assert.deepEqual(reconnectPolicy(undefined), { initialDelayMs: 100, maxDelayMs: 5000, maxAttempts: 20 });
  assert.equal(reconnectPolicy(false), undefined);
  const policy = reconnectPolicy({ initialDelayMs: 10, maxAttempts: 3 });
  assert.deepEqual(policy, { initialDelayMs: 10, maxDelayMs: 5000, maxAttempts: 3 });
  assert.deepEqual(
    Array.from({ length: 11 }, (_, n) => backoffCeiling(n, policy)),
    [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5000, 5000],
  );
  assert.throws(() => reconnectPolicy({ maxDelayMs: -1 }), RangeError);
  assert.throws(() => reconnectPolicy({ maxAttempts: NaN }), RangeError);
});
