/**
 * Every failure the SDK reports is an UnbrokenError with a machine code. Broker errors keep the
 * broker's code (`token_expired`, `channel_gone`, ...); the SDK's own codes are listed here.
 */
export type ErrorCode =
  | 'network_error'
  | 'timeout'
  | 'no_transport'
  | 'channel_error'
  | 'protocol_error'
  | 'closed'
  | 'http_error'
  | (string & {});

export class UnbrokenError extends Error {
  readonly code: ErrorCode;
  readonly status?: number;
  /** For `channel_error`: what the writer reported. */
  readonly data?: unknown;
  /** Whether reconnecting can help (network trouble) or not (bad token, gone channel). */
  readonly retryable: boolean;
  /** ms the broker asked us to wait (`Retry-After` of a 429/503), when it said. */
  readonly retryAfter?: number;

  constructor(code: ErrorCode, message: string, extra: { status?: number; data?: unknown; retryable?: boolean; retryAfter?: number } = {}) {
    super(message);
    this.name = 'UnbrokenError';
    this.code = code;
    this.status = extra.status;
    this.data = extra.data;
    this.retryable = extra.retryable ?? false;
    this.retryAfter = extra.retryAfter;
    // Keep instanceof working when compiled down to ES5-style classes.
    Object.setPrototypeOf(this, UnbrokenError.prototype);
  }
}

/** Build the error for a broker answer `{error: {code, message}}` with an HTTP status. */
export function httpError(status: number, body: string, retryAfterHeader?: string | null): UnbrokenError {
  let code = 'http_error';
  let message = 'HTTP ' + status;
  try {
    const parsed = JSON.parse(body) as { error?: { code?: string; message?: string } };
    if (parsed && parsed.error) {
      code = parsed.error.code || code;
      message = parsed.error.message || message;
    }
  } catch {
    // Not JSON (a proxy's HTML page): keep the generic code.
  }
  // Retry-After in seconds (the broker never sends the HTTP-date form).
  const seconds = retryAfterHeader ? Number(retryAfterHeader) : NaN;
  const retryAfter = seconds >= 0 ? seconds * 1000 : undefined;
  return new UnbrokenError(code, message, { status, retryable: retryableStatus(status), retryAfter });
}

/** 5xx, 429 and 408 are worth retrying; a 4xx about tokens or channels never heals by itself. */
export function retryableStatus(status: number): boolean {
  return status >= 500 || status === 429 || status === 408 || status === 0;
}
