/**
 * What a failed call says: qkv's status, and whether the request may have taken effect (docs/PROTOCOL.md,
 * sections 8 and 10), without parsing any message.
 */

import type { Entry } from "./value.js";

/** Whether a failed request may have been executed: "no" for certain, or "maybe". */
export type Executed = "no" | "maybe";

/** No status: no answer came (the connection failed or was closed, or the call timed out). */
export const NO_ANSWER = 0;

export class QkvError extends Error {
  /**
   * qkv's status (400, 403, 404, 408, 409, 410, 413, 429, 500, 503, 504, 507...), or 0 (`NO_ANSWER`)
   * when no answer came: the connection failed or was closed, or the call timed out.
   */
  readonly status: number;
  /** Whether the request may have run: "no" when it certainly did not, "maybe" otherwise. */
  readonly executed: Executed;
  /**
   * On a 409 of a conditional write: the key's current value and version, as the server sent them;
   * undefined when the key does not exist (its version is then 0).
   */
  readonly current?: Entry;

  constructor(
    message: string,
    options: { status: number; executed?: Executed; current?: Entry; cause?: unknown },
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "QkvError";
    this.status = options.status;
    this.executed = options.executed ?? executedFor(options.status);
    if (options.current !== undefined) this.current = options.current;
  }

  /** Whether sending the request again cannot make it run twice: it certainly did not run. */
  get notExecuted(): boolean {
    return this.executed === "no";
  }
}

/**
 * Whether a request answered with `status` may have been executed (docs/PROTOCOL.md, section 8): 4xx
 * were refused and not executed, as were 501, 503 and 507; 500, 504 and any other 5xx leave it unknown.
 */
export function executedFor(status: number): Executed {
  if (status >= 400 && status < 500) return "no";
  if (status === 501 || status === 503 || status === 507) return "no";
  return "maybe";
}
