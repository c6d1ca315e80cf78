import type { Logger } from "../log.ts";
import { silentLogger } from "../log.ts";
import type { Clock } from "../system/clock.ts";

export interface RunnerOptions {
  /** Names the runner in log lines. */
  readonly name: string;
  /** Least time between runs, apart from bursts (minSyncPeriod). 0 disables the limit. */
  readonly minIntervalMs: number;
  /** Most time between runs (syncPeriod): a run happens this long after the last one even unasked. */
  readonly maxIntervalMs: number;
  /** Runs allowed back to back before minInterval applies; one comes back per minInterval. Default 2. */
  readonly burstRuns?: number;
  readonly clock: Clock;
  /**
   * Called with whatever the function threw or rejected with, before the run counts as finished, so a
   * `retryAfter` made here is kept. Without it, failures are logged at error level.
   */
  readonly onError?: (error: unknown) => void;
  readonly logger?: Logger;
}

/** The function a runner calls; `signal` aborts when the runner is being stopped. */
export type RunFunction = (signal: AbortSignal) => Promise<void>;

/** setTimeout fires at once for delays beyond 2^31-1 ms; longer waits are taken in slices. */
const MAX_SLEEP_MS = 2 ** 31 - 1;

/**
 * Token bucket as in client-go's flowcontrol: starts full with `burst` tokens and regains one every
 * `intervalMs`, never holding more than `burst`.
 */
class TokenBucket {
  private tokens: number;
  private updatedAt: number;

  constructor(
    private readonly burst: number,
    private readonly intervalMs: number,
    now: number,
  ) {
    this.tokens = burst;
    this.updatedAt = now;
  }

  /** Milliseconds until a token is available; 0 when one is available now. */
  waitMs(now: number): number {
    if (this.intervalMs === 0) return 0;
    this.refill(now);
    // The tolerance keeps float rounding from turning "exactly one interval later" into one more ms.
    return this.tokens >= 1 - 1e-9 ? 0 : Math.ceil((1 - this.tokens) * this.intervalMs);
  }

  take(now: number): void {
    if (this.intervalMs === 0) return;
    this.refill(now);
    this.tokens -= 1;
  }

  private refill(now: number): void {
    // A clock stepping backwards must not take tokens away.
    const elapsed = Math.max(0, now - this.updatedAt);
    this.tokens = Math.min(this.burst, this.tokens + elapsed / this.intervalMs);
    this.updatedAt = now;
  }
}

/**
 * Runs a function (a proxy sync) on request, but never two at once, not more often than minInterval
 * allows (with a small burst), and at least once every maxInterval.
 *
 * - `run()` asks for a run soon. Requests coalesce: however many arrive while one is pending or in
 *   flight, they are answered by exactly one further run.
 * - The first requests run at once (the bucket starts full); later ones wait for a token.
 * - Without requests, the function still runs maxInterval after the previous run finished.
 * - `retryAfter(ms)` makes a run happen no later than `ms` from now (still subject to the token
 *   bucket), earlier than maxInterval; the soonest of several retries wins and any run that starts
 *   after the request satisfies it.
 */
export class BoundedFrequencyRunner {
  private readonly fn: RunFunction;
  private readonly name: string;
  private readonly minIntervalMs: number;
  private readonly maxIntervalMs: number;
  private readonly clock: Clock;
  private readonly onError: (error: unknown) => void;
  private readonly logger: Logger;
  private readonly bucket: TokenBucket;

  private requested = false;
  private retryAt: number | undefined;
  private periodicAt = 0;
  private inFlight = false;
  private started = false;
  /** Aborting this ends the loop's current sleep early so it can look at a new request. */
  private wake: AbortController | undefined;

  constructor(fn: RunFunction, options: RunnerOptions) {
    const burst = options.burstRuns ?? 2;
    if (!Number.isFinite(options.minIntervalMs) || options.minIntervalMs < 0) {
      throw new RangeError(`${options.name}: minInterval must be a finite number >= 0, got ${options.minIntervalMs}`);
    }
    if (!Number.isFinite(options.maxIntervalMs) || options.maxIntervalMs <= 0) {
      throw new RangeError(`${options.name}: maxInterval must be a finite number > 0, got ${options.maxIntervalMs}`);
    }
    if (options.maxIntervalMs < options.minIntervalMs) {
      throw new RangeError(
        `${options.name}: maxInterval (${options.maxIntervalMs} ms) must be >= minInterval (${options.minIntervalMs} ms)`,
      );
    }
    if (!Number.isInteger(burst) || burst < 1) {
      throw new RangeError(`${options.name}: burstRuns must be an integer >= 1, got ${burst}`);
    }
    this.fn = fn;
    this.name = options.name;
    this.minIntervalMs = options.minIntervalMs;
    this.maxIntervalMs = options.maxIntervalMs;
    this.clock = options.clock;
    this.logger = options.logger ?? silentLogger;
    this.onError =
      options.onError ?? ((error) => this.logger.error("Run failed", { runner: this.name, err: errorText(error) }));
    this.bucket = new TokenBucket(burst, options.minIntervalMs, options.clock.now());
  }

  /** Asks for a run as soon as the limits allow. Before `start`, the request waits for the loop. */
  run(): void {
    if (this.requested) return;
    this.requested = true;
    this.wake?.abort();
  }

  /** Makes sure the function runs again no later than `ms` from now; meant for failed runs. */
  retryAfter(ms: number): void {
    const at = this.clock.now() + Math.max(0, ms);
    if (this.retryAt !== undefined && this.retryAt <= at) return;
    this.retryAt = at;
    this.logger.debug(3, "Retry scheduled", { runner: this.name, inMs: ms });
    this.wake?.abort();
  }

  /** True while the function is running. */
  get running(): boolean {
    return this.inFlight;
  }

  /**
   * Runs the loop until `signal` aborts. Resolves once the loop has stopped, which is after the run in
   * flight (if any) has finished. A runner is started once.
   */
  async start(signal: AbortSignal): Promise<void> {
    if (this.started) throw new Error(`${this.name}: runner already started`);
    this.started = true;
    this.logger.debug(3, "Loop running", { runner: this.name });
    this.periodicAt = this.clock.now() + this.maxIntervalMs;
    while (!signal.aborted) {
      const now = this.clock.now();
      let sleepUntil = Math.min(this.periodicAt, this.retryAt ?? Infinity);
      if (this.requested || now >= sleepUntil) {
        const waitMs = this.bucket.waitMs(now);
        if (waitMs === 0) {
          this.bucket.take(now);
          await this.runOnce(signal);
          continue;
        }
        // Due but out of tokens: remember the run is owed and come back when a token is there.
        this.requested = true;
        sleepUntil = now + waitMs;
        this.logger.debug(4, "Run deferred", { runner: this.name, inMs: waitMs });
      }
      await this.sleep(sleepUntil - now, signal);
    }
    this.logger.debug(3, "Loop stopping", { runner: this.name });
  }

  private async runOnce(signal: AbortSignal): Promise<void> {
    // Requests and retries made before this point are answered by this run; those made during it are not.
    this.requested = false;
    this.retryAt = undefined;
    this.inFlight = true;
    try {
      await this.fn(signal);
    } catch (error) {
      try {
        this.onError(error);
      } catch (handlerError) {
        this.logger.error("Run error handler failed", { runner: this.name, err: errorText(handlerError) });
      }
    } finally {
      this.inFlight = false;
    }
    this.periodicAt = this.clock.now() + this.maxIntervalMs;
    this.logger.debug(3, "Ran", { runner: this.name, nextPossibleMs: this.minIntervalMs, periodicMs: this.maxIntervalMs });
  }

  private async sleep(ms: number, signal: AbortSignal): Promise<void> {
    const wake = new AbortController();
    const onAbort = () => wake.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    this.wake = wake;
    try {
      await this.clock.sleep(Math.min(ms, MAX_SLEEP_MS), wake.signal);
    } finally {
      this.wake = undefined;
      signal.removeEventListener("abort", onAbort);
    }
  }
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
