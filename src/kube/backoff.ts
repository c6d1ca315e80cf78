/**
 * Exponential backoff with jitter, shaped like client-go's reflector backoff: 800 ms doubling up to
 * 30 s, each delay stretched by up to `jitter` × itself at random. The caller resets it once things
 * have been healthy for a while, so a single blip after hours of calm starts again from 800 ms.
 */
export interface BackoffPolicy {
  readonly initialMs: number;
  readonly factor: number;
  readonly capMs: number;
  /** 1 means a delay d becomes a random value in [d, 2d), then capped. */
  readonly jitter: number;
  /** A watch that stayed open this long resets the backoff. */
  readonly resetAfterMs: number;
}

export const defaultBackoffPolicy: BackoffPolicy = {
  initialMs: 800,
  factor: 2,
  capMs: 30_000,
  jitter: 1,
  resetAfterMs: 120_000,
};

export class Backoff {
  #attempt = 0;

  constructor(
    readonly policy: BackoffPolicy,
    private readonly random: () => number = Math.random,
  ) {}

  /** The delay before the next retry; each call counts one more failure. */
  next(): number {
    const { initialMs, factor, capMs, jitter } = this.policy;
    const base = Math.min(capMs, initialMs * factor ** this.#attempt);
    this.#attempt++;
    const jittered = jitter > 0 ? base + this.random() * jitter * base : base;
    return Math.min(capMs, Math.round(jittered));
  }

  reset(): void {
    this.#attempt = 0;
  }

  /** Failures counted since the last reset. */
  get attempts(): number {
    return this.#attempt;
  }
}
