/**
 * Exponential backoff with "full jitter" (AWS architecture blog): a random delay in
 * [0, min(max, base * 2^attempt)]. Jitter spreads a crowd of clients that lost the same broker,
 * so they do not come back in lockstep.
 */
export interface BackoffOptions {
  /** First ceiling in ms (default 500). */
  base?: number;
  /** Highest ceiling in ms (default 20000). */
  max?: number;
  /** Source of randomness in [0, 1); tests pass a fixed one. */
  random?: () => number;
}

export class Backoff {
  attempt = 0;
  private readonly base: number;
  private readonly max: number;
  private readonly random: () => number;

  constructor(opts: BackoffOptions = {}) {
    this.base = opts.base ?? 500;
    this.max = opts.max ?? 20000;
    this.random = opts.random ?? Math.random;
  }

  /** Delay before the next try; each call widens the window. */
  next(): number {
    const ceiling = Math.min(this.max, this.base * Math.pow(2, this.attempt));
    this.attempt++;
    // Never 0: a floor of base/4 keeps a flapping connection from spinning.
    return Math.max(this.base / 4, Math.floor(this.random() * ceiling));
  }

  reset(): void {
    this.attempt = 0;
  }
}
