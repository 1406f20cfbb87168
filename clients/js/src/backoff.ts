/**
 * How long to wait before each reconnection attempt: exponential backoff with full jitter, as qkv's
 * own client does (docs/PROTOCOL.md, section 13). Attempt n (from 0) waits a uniformly random time in
 * [0, min(maxDelayMs, initialDelayMs × 2^n)); after maxAttempts failed attempts in a row the client
 * gives up.
 */

export interface ReconnectOptions {
  /** The first attempt's ceiling; each later one doubles it. Default 100 ms. */
  initialDelayMs?: number;
  /** No attempt waits longer than this. Default 5000 ms. */
  maxDelayMs?: number;
  /** Attempts in a row before giving up (the client is then "closed"). Default 20. */
  maxAttempts?: number;
}

export type ReconnectPolicy = Required<ReconnectOptions>;

export const DEFAULT_RECONNECT: ReconnectPolicy = { initialDelayMs: 100, maxDelayMs: 5000, maxAttempts: 20 };

/** The policy of the options, with their defaults; undefined when reconnecting is off. */
export function reconnectPolicy(options: false | ReconnectOptions | undefined): ReconnectPolicy | undefined {
  if (options === false) return undefined;
  const policy = { ...DEFAULT_RECONNECT };
  for (const name of ["initialDelayMs", "maxDelayMs", "maxAttempts"] as const) {
    const given = options?.[name];
    if (given === undefined) continue;
    if (typeof given !== "number" || !(given >= 0)) throw new RangeError(`reconnect.${name} must be a number ≥ 0`);
    policy[name] = given;
  }
  return policy;
}

/** The ceiling of attempt `attempt` (from 0): min(maxDelayMs, initialDelayMs × 2^attempt). */
export function backoffCeiling(attempt: number, policy: ReconnectPolicy = DEFAULT_RECONNECT): number {
  return Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** Math.min(attempt, 52));
}

/** The wait before attempt `attempt`: `random()` (in [0, 1)) times its ceiling. */
export function backoffDelay(
  attempt: number,
  policy: ReconnectPolicy = DEFAULT_RECONNECT,
  random: () => number = Math.random,
): number {
  return Math.floor(random() * backoffCeiling(attempt, policy));
}
