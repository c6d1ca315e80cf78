/**
 * Client-side throttling like client-go's token bucket: `burst` requests may go at once, then
 * `qps` per second. Waiting goes through the Clock so tests control time.
 */
import type { Clock } from "../system/clock.ts";

export class TokenBucket {
  #tokens: number;
  #last: number;

  /** `qps <= 0` disables the limit. */
  constructor(
    readonly qps: number,
    readonly burst: number,
    private readonly clock: Clock,
  ) {
    this.#tokens = Math.max(1, burst);
    this.#last = clock.now();
  }

  /**
   * Takes one token and returns how long the caller must wait before using it (0 when one was
   * available). Tokens are reserved, so concurrent callers queue up in order.
   */
  reserve(): number {
    if (this.qps <= 0) return 0;
    const now = this.clock.now();
    const capacity = Math.max(1, this.burst);
    this.#tokens = Math.min(capacity, this.#tokens + ((now - this.#last) * this.qps) / 1000);
    this.#last = now;
    this.#tokens -= 1;
    return this.#tokens >= 0 ? 0 : (-this.#tokens * 1000) / this.qps;
  }

  /** Waits for a token; resolves early (without a token being returned) when `signal` aborts. */
  async take(signal?: AbortSignal): Promise<void> {
    const wait = this.reserve();
    if (wait > 0) await this.clock.sleep(wait, signal);
  }
}
