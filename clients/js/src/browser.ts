/**
 * What a browser hides from a page: a refused session or fetch is an opaque failure (a TypeError, a
 * WebSocket's error event), without the server's status, so a page of an origin the server does not
 * allow sees no 403. The client asks the questions a page may ask instead, to name the likely cause.
 */

/** The page's origin, when the client runs in one (not in node). */
export function pageOrigin(): string | undefined {
  const origin = (globalThis as { location?: { origin?: unknown } }).location?.origin;
  return typeof origin === "string" && origin !== "null" ? origin : undefined;
}

/**
 * Why the server at `base` (its web listener) likely refused this page, as text to add to a failure's
 * message; "" outside a page, for a page of the server's own origin (always allowed), and when the
 * questions say nothing. `/webtransport-cert` answers every request, with CORS for the allowed
 * origins only (the same check as the sessions'): readable, the origin is allowed; unreadable but
 * answered (an opaque response, `mode: "no-cors"`), the server is reached and trusted and refuses this
 * origin; not answered at all, it is unreachable or its certificate is not trusted.
 */
export async function hiddenCause(base: string, timeoutMs: number): Promise<string> {
  const page = pageOrigin();
  const url = new URL("webtransport-cert", base.endsWith("/") ? base : `${base}/`);
  if (page === undefined || page === url.origin || typeof fetch !== "function") return "";
  const answers = async (mode: "cors" | "no-cors") => {
    const signal = typeof AbortSignal.timeout === "function" ? AbortSignal.timeout(timeoutMs) : undefined;
    try {
      await fetch(url, { mode, cache: "no-store", signal });
      return true;
    } catch {
      return false;
    }
  };
  if (await answers("cors")) return "";
  if (await answers("no-cors")) {
    return (
      ` (the browser hides the server's answer: the server at ${url.origin} is reached, but does not let this page read` +
      ` ${url.href}: it does not allow this page's origin, ${page} (start it with --web-origin ${page}),` +
      ` or that is not its web listener's /webtransport-cert (is the url the web listener's root?))`
    );
  }
  return (
    ` (the browser hides why: the server at ${url.origin} is not reached from this page, or the browser` +
    ` does not trust its certificate; or, if it runs, this page's origin ${page} is not allowed: --web-origin ${page})`
  );
}
