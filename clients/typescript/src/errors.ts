/**
 * An error answer of `nsrun serve` (`{"error": {"code", "message", "rule"?}}` with its HTTP status),
 * or a failure to reach it (`status` 0, code `unreachable`, the socket error as `cause`).
 *
 * - 400 `bad_request`: the message names the field;
 * - 401 `unauthorized`: no token or a bad one;
 * - 403 `forbidden`: beyond the tenant's policy, `rule` names it (`allowImage`, `maxMemory`, …);
 * - 404 `not_found` (also another tenant's run), 409 `conflict`, 413 `payload_too_large`,
 *   429 `too_many_requests` (`rule`: `maxConcurrent` or `runsPerMinute`), 500, 503 `shutting_down`.
 */
export class NsrunError extends Error {
  /** HTTP status; 0 when the server could not be reached or its answer was not HTTP. */
  readonly status: number;
  /** The server's error code, e.g. `forbidden`; `unreachable` / `bad_response` from the client. */
  readonly code: string;
  /** The policy rule that refused the request (403, 429), if any. */
  readonly rule: string | undefined;

  constructor(status: number, code: string, message: string, rule?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "NsrunError";
    this.status = status;
    this.code = code;
    this.rule = rule;
  }

  /** Builds the error from a non-2xx answer's status and body. */
  static fromResponse(status: number, body: string): NsrunError {
    try {
      const parsed = JSON.parse(body) as { error?: { code?: unknown; message?: unknown; rule?: unknown } };
      const e = parsed.error;
      if (e && typeof e.code === "string" && typeof e.message === "string") {
        const rule = typeof e.rule === "string" ? e.rule : undefined;
        return new NsrunError(status, e.code, e.message, rule);
      }
    } catch {
      // Not JSON (a proxy's page, a plain-text answer): keep the text below.
    }
    const text = body.trim().split("\n")[0]?.slice(0, 200) || `HTTP ${status}`;
    return new NsrunError(status, `http_${status}`, text);
  }
}
