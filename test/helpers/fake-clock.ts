import type { Clock } from "../../src/system/clock.ts";

/**
 * A Clock whose time moves only when a test calls `advance`. Code under test sleeps through it exactly
 * as through the real clock; the test decides when those sleeps end.
 *
 * Rules worth knowing:
 * - Every sleep, even `sleep(0)`, waits for the next `advance` (`advance(0)` will do). A loop that
 *   sleeps 0 ms again and again therefore shows up as a parked sleeper instead of hanging the test.
 * - `advance(ms)` wakes due sleepers one at a time in deadline order (ties in the order they went to
 *   sleep), sets `now()` to each one's deadline before waking it, and lets the event loop settle after
 *   each wake, so code that wakes up and sleeps again within the window is woken again in the same call.
 * - A sleep whose signal aborts ends at once (resolving, like the real clock) and stops counting.
 *
 * Typical use:
 * ```ts
 * const clock = new FakeClock();
 * const done = runner.start(ac.signal);
 * await clock.waitForSleepers(1);   // the code under test is parked
 * await clock.advance(1000);        // wakes it; now() is 1000 ms later
 * ```
 */
export class FakeClock implements Clock {
  private current: number;
  private seq = 0;
  private readonly pending = new Map<number, Sleeper>();

  /** `startMs` defaults to a fixed instant so tests never depend on the date they run. */
  constructor(startMs = Date.UTC(2026, 0, 1)) {
    this.current = startMs;
  }

  now(): number {
    return this.current;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal?.aborted) return resolve();
      const id = this.seq++;
      const wake = () => {
        this.pending.delete(id);
        signal?.removeEventListener("abort", wake);
        resolve();
      };
      this.pending.set(id, { id, deadline: this.current + Math.max(0, ms), wake });
      signal?.addEventListener("abort", wake, { once: true });
    });
  }

  /** How many sleeps are waiting right now. */
  get sleepers(): number {
    return this.pending.size;
  }

  /** The earliest deadline among waiting sleeps, or undefined when nobody sleeps. */
  nextDeadline(): number | undefined {
    return this.earliest()?.deadline;
  }

  /** Moves time forward by `ms`, waking every sleep whose deadline falls within (see class comment). */
  async advance(ms: number): Promise<void> {
    if (!(ms >= 0)) throw new RangeError(`FakeClock.advance: ms must be >= 0, got ${ms}`);
    await this.advanceTo(this.current + ms);
  }

  /** Moves time forward to the absolute instant `ms` (never backwards). */
  async advanceTo(ms: number): Promise<void> {
    const target = Math.max(ms, this.current);
    await settle();
    for (;;) {
      const next = this.earliest();
      if (!next || next.deadline > target) break;
      this.current = Math.max(this.current, next.deadline);
      next.wake();
      await settle();
    }
    this.current = target;
    await settle();
  }

  /**
   * Resolves once at least `count` sleeps are waiting, letting the event loop run in between. Rejects
   * after `timeoutMs` of real time, so a test fails instead of hanging when the code never parks.
   */
  async waitForSleepers(count = 1, timeoutMs = 2000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.pending.size < count) {
      if (Date.now() > deadline) {
        throw new Error(`FakeClock: expected ${count} sleeper(s), have ${this.pending.size} after ${timeoutMs} ms`);
      }
      await settle();
    }
  }

  private earliest(): Sleeper | undefined {
    let best: Sleeper | undefined;
    for (const s of this.pending.values()) {
      if (!best || s.deadline < best.deadline || (s.deadline === best.deadline && s.id < best.id)) best = s;
    }
    return best;
  }
}

interface Sleeper {
  readonly id: number;
  readonly deadline: number;
  readonly wake: () => void;
}

/** Lets all queued microtasks (and the promise chains they start) run before continuing. */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
