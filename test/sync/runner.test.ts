import { describe, expect, test } from "bun:test";
import { memoryLogger } from "../../src/log.ts";
import { realClock, type Clock } from "../../src/system/clock.ts";
import { BoundedFrequencyRunner, type RunnerOptions } from "../../src/sync/index.ts";
import { FakeClock, settle } from "../helpers/fake-clock.ts";

const MIN = 1_000;
const MAX = 30_000;

/** A function under the runner's control that records each call and can be held open by the test. */
class Recorder {
  readonly starts: number[] = [];
  concurrent = 0;
  maxConcurrent = 0;
  private gate: { promise: Promise<void>; release: () => void } | undefined;
  failWith: Error | undefined;

  constructor(private readonly clock: Clock) {}

  /** Makes the following calls wait until `release()`. */
  hold(): void {
    const { promise, resolve } = Promise.withResolvers<void>();
    this.gate = { promise, release: resolve };
  }

  release(): void {
    const gate = this.gate;
    this.gate = undefined;
    gate?.release();
  }

  get calls(): number {
    return this.starts.length;
  }

  /** Elapsed times of each call, relative to `origin`. */
  offsets(origin: number): number[] {
    return this.starts.map((t) => t - origin);
  }

  readonly fn = async (): Promise<void> => {
    this.starts.push(this.clock.now());
    this.concurrent++;
    this.maxConcurrent = Math.max(this.maxConcurrent, this.concurrent);
    try {
      if (this.gate) await this.gate.promise;
      if (this.failWith) throw this.failWith;
    } finally {
      this.concurrent--;
    }
  };
}

interface Harness {
  clock: FakeClock;
  rec: Recorder;
  runner: BoundedFrequencyRunner;
  abort: AbortController;
  loop: Promise<void>;
  origin: number;
  errors: unknown[];
  /** Stops the loop and waits for it; every test ends with this. */
  stop(): Promise<void>;
}

function harness(overrides: Partial<RunnerOptions> = {}, onError?: (h: Harness, e: unknown) => void): Harness {
  const clock = new FakeClock();
  const rec = new Recorder(clock);
  const errors: unknown[] = [];
  const abort = new AbortController();
  const h = { clock, rec, abort, errors, origin: clock.now() } as Harness;
  h.runner = new BoundedFrequencyRunner(rec.fn, {
    name: "test-runner",
    minIntervalMs: MIN,
    maxIntervalMs: MAX,
    clock,
    onError: (e) => {
      errors.push(e);
      onError?.(h, e);
    },
    ...overrides,
  });
  h.stop = async () => {
    abort.abort();
    rec.release();
    await h.loop;
  };
  return h;
}

function startLoop(h: Harness): Harness {
  h.loop = h.runner.start(h.abort.signal);
  return h;
}

describe("BoundedFrequencyRunner", () => {
  test("a first request runs at once, without the clock moving", async () => {
    const h = startLoop(harness());
    try {
      await h.clock.waitForSleepers(1);
      expect(h.rec.calls).toBe(0);
      h.runner.run();
      await settle();
      expect(h.rec.offsets(h.origin)).toEqual([0]);
    } finally {
      await h.stop();
    }
  });

  test("a request made before start runs as soon as the loop starts", async () => {
    const h = harness();
    h.runner.run();
    expect(h.rec.calls).toBe(0);
    startLoop(h);
    try {
      await h.clock.waitForSleepers(1);
      expect(h.rec.offsets(h.origin)).toEqual([0]);
    } finally {
      await h.stop();
    }
  });

  test("ten requests during a run coalesce into exactly one more run", async () => {
    const h = startLoop(harness());
    try {
      h.rec.hold();
      h.runner.run();
      await settle();
      expect(h.rec.calls).toBe(1);
      expect(h.runner.running).toBe(true);
      for (let i = 0; i < 10; i++) h.runner.run();
      await settle();
      expect(h.rec.calls).toBe(1);

      h.rec.release();
      await h.clock.waitForSleepers(1);
      expect(h.rec.calls).toBe(2);
      // Nothing else is owed: well past minInterval but before maxInterval, no further run.
      await h.clock.advance(MAX - 1);
      expect(h.rec.calls).toBe(2);
      expect(h.rec.maxConcurrent).toBe(1);
    } finally {
      await h.stop();
    }
  });

  test("burst of 2: two quick runs, the third waits for minInterval", async () => {
    const h = startLoop(harness());
    try {
      h.runner.run();
      await settle();
      h.runner.run();
      await settle();
      h.runner.run();
      await h.clock.waitForSleepers(1);
      expect(h.rec.offsets(h.origin)).toEqual([0, 0]);

      await h.clock.advance(MIN - 1);
      expect(h.rec.calls).toBe(2);
      await h.clock.advance(1);
      expect(h.rec.offsets(h.origin)).toEqual([0, 0, MIN]);

      // The bucket is empty again: the next request waits a full minInterval too.
      h.runner.run();
      await h.clock.advance(MIN - 1);
      expect(h.rec.calls).toBe(3);
      await h.clock.advance(1);
      expect(h.rec.offsets(h.origin)).toEqual([0, 0, MIN, 2 * MIN]);
    } finally {
      await h.stop();
    }
  });

  test("burst of 1: a second request waits for minInterval", async () => {
    const h = startLoop(harness({ burstRuns: 1 }));
    try {
      h.runner.run();
      await settle();
      h.runner.run();
      await h.clock.advance(MIN - 1);
      expect(h.rec.calls).toBe(1);
      await h.clock.advance(1);
      expect(h.rec.offsets(h.origin)).toEqual([0, MIN]);
    } finally {
      await h.stop();
    }
  });

  test("tokens come back over time, one per minInterval, up to the burst", async () => {
    const h = startLoop(harness());
    try {
      h.runner.run();
      await settle();
      h.runner.run();
      await settle();
      // Ten intervals later the bucket holds 2 again, not 10.
      await h.clock.advance(10 * MIN);
      for (let i = 0; i < 3; i++) {
        h.runner.run();
        await settle();
      }
      expect(h.rec.offsets(h.origin)).toEqual([0, 0, 10 * MIN, 10 * MIN]);
      await h.clock.advance(MIN);
      expect(h.rec.offsets(h.origin)).toEqual([0, 0, 10 * MIN, 10 * MIN, 11 * MIN]);
    } finally {
      await h.stop();
    }
  });

  test("minInterval 0 leaves requests unlimited", async () => {
    const h = startLoop(harness({ minIntervalMs: 0 }));
    try {
      for (let i = 0; i < 5; i++) {
        h.runner.run();
        await settle();
      }
      expect(h.rec.offsets(h.origin)).toEqual([0, 0, 0, 0, 0]);
    } finally {
      await h.stop();
    }
  });

  test("maxInterval triggers runs with no request, counted from the end of the last run", async () => {
    const h = startLoop(harness());
    try {
      await h.clock.waitForSleepers(1);
      await h.clock.advance(MAX - 1);
      expect(h.rec.calls).toBe(0);
      await h.clock.advance(1);
      expect(h.rec.offsets(h.origin)).toEqual([MAX]);

      // A run that takes 5 s moves the next periodic run by 5 s.
      h.rec.hold();
      await h.clock.advance(MAX);
      expect(h.rec.calls).toBe(2);
      await h.clock.advance(5_000);
      h.rec.release();
      await h.clock.waitForSleepers(1);
      await h.clock.advance(MAX - 1);
      expect(h.rec.calls).toBe(2);
      await h.clock.advance(1);
      expect(h.rec.offsets(h.origin)).toEqual([MAX, 2 * MAX, 3 * MAX + 5_000]);
    } finally {
      await h.stop();
    }
  });

  test("a requested run restarts the maxInterval countdown", async () => {
    const h = startLoop(harness());
    try {
      await h.clock.advance(10_000);
      h.runner.run();
      await settle();
      await h.clock.advance(MAX - 1);
      expect(h.rec.offsets(h.origin)).toEqual([10_000]);
      await h.clock.advance(1);
      expect(h.rec.offsets(h.origin)).toEqual([10_000, 10_000 + MAX]);
    } finally {
      await h.stop();
    }
  });

  test("retryAfter from the error handler runs again at the retry time, not at maxInterval", async () => {
    const h = startLoop(harness({}, (self) => self.runner.retryAfter(5_000)));
    try {
      h.rec.failWith = new Error("iptables-restore failed");
      h.runner.run();
      await h.clock.waitForSleepers(1);
      expect(h.errors).toEqual([h.rec.failWith]);

      h.rec.failWith = undefined;
      await h.clock.advance(4_999);
      expect(h.rec.calls).toBe(1);
      await h.clock.advance(1);
      expect(h.rec.offsets(h.origin)).toEqual([0, 5_000]);
      // Success: back to the periodic schedule.
      await h.clock.advance(MAX - 1);
      expect(h.rec.calls).toBe(2);
      await h.clock.advance(1);
      expect(h.rec.offsets(h.origin)).toEqual([0, 5_000, 5_000 + MAX]);
    } finally {
      await h.stop();
    }
  });

  test("retryAfter called inside the function survives the end of that run", async () => {
    const clock = new FakeClock();
    const starts: number[] = [];
    const abort = new AbortController();
    const runner: BoundedFrequencyRunner = new BoundedFrequencyRunner(
      async () => {
        starts.push(clock.now() - origin);
        if (starts.length === 1) runner.retryAfter(3_000);
      },
      { name: "inner-retry", minIntervalMs: MIN, maxIntervalMs: MAX, clock },
    );
    const origin = clock.now();
    const loop = runner.start(abort.signal);
    try {
      runner.run();
      await clock.advance(3_000);
      expect(starts).toEqual([0, 3_000]);
    } finally {
      abort.abort();
      await loop;
    }
  });

  test("of several retries the soonest wins", async () => {
    const h = startLoop(harness());
    try {
      await h.clock.waitForSleepers(1);
      h.runner.retryAfter(5_000);
      h.runner.retryAfter(8_000);
      await h.clock.advance(4_999);
      expect(h.rec.calls).toBe(0);
      await h.clock.advance(1);
      expect(h.rec.offsets(h.origin)).toEqual([5_000]);
      // The later retry was answered by the same run.
      await h.clock.advance(MAX - 1);
      expect(h.rec.calls).toBe(1);
    } finally {
      await h.stop();
    }
  });

  test("a retry still respects minInterval", async () => {
    const h = startLoop(harness());
    try {
      h.runner.run();
      await settle();
      h.runner.run();
      await settle();
      // Bucket empty; retries asked for sooner than a token comes back wait for the token.
      h.runner.retryAfter(800);
      h.runner.retryAfter(200);
      h.runner.retryAfter(900);
      await h.clock.advance(MIN - 1);
      expect(h.rec.calls).toBe(2);
      await h.clock.advance(1);
      expect(h.rec.offsets(h.origin)).toEqual([0, 0, MIN]);
      // The retry was answered; nothing more until maxInterval.
      await h.clock.advance(MAX - 1);
      expect(h.rec.calls).toBe(3);
    } finally {
      await h.stop();
    }
  });

  test("a run that starts after a retry request answers it", async () => {
    const h = startLoop(harness());
    try {
      await h.clock.waitForSleepers(1);
      h.runner.retryAfter(10_000);
      await h.clock.advance(2_000);
      h.runner.run();
      await settle();
      await h.clock.advance(MAX - 1);
      expect(h.rec.offsets(h.origin)).toEqual([2_000]);
    } finally {
      await h.stop();
    }
  });

  test("abort stops the loop only after the run in flight has finished", async () => {
    const h = startLoop(harness());
    let stopped = false;
    void h.loop.then(() => (stopped = true));
    h.rec.hold();
    h.runner.run();
    await settle();
    expect(h.runner.running).toBe(true);

    h.abort.abort();
    await h.clock.advance(MAX * 3);
    expect(stopped).toBe(false);

    h.rec.release();
    await h.loop;
    expect(stopped).toBe(true);
    expect(h.rec.calls).toBe(1);
    expect(h.runner.running).toBe(false);

    // Nothing runs after the loop has stopped.
    h.runner.run();
    await h.clock.advance(MAX * 3);
    expect(h.rec.calls).toBe(1);
    expect(h.clock.sleepers).toBe(0);
  });

  test("abort while parked ends the loop at once and releases its sleep", async () => {
    const h = startLoop(harness());
    await h.clock.waitForSleepers(1);
    h.abort.abort();
    await h.loop;
    expect(h.clock.sleepers).toBe(0);
    expect(h.rec.calls).toBe(0);
  });

  test("the function sees the stop signal abort while it runs", async () => {
    const clock = new FakeClock();
    const abort = new AbortController();
    let seen: AbortSignal | undefined;
    const runner = new BoundedFrequencyRunner(
      (signal) => {
        seen = signal;
        return new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
      },
      { name: "signal", minIntervalMs: MIN, maxIntervalMs: MAX, clock },
    );
    const loop = runner.start(abort.signal);
    runner.run();
    await settle();
    expect(seen?.aborted).toBe(false);
    abort.abort();
    await loop;
    expect(seen?.aborted).toBe(true);
  });

  test("a throwing function does not end the loop", async () => {
    const h = startLoop(harness());
    try {
      h.rec.failWith = new Error("boom");
      h.runner.run();
      await settle();
      h.runner.run();
      await settle();
      await h.clock.advance(MAX + MIN);
      expect(h.rec.calls).toBe(3);
      expect(h.errors).toHaveLength(3);
      expect((h.errors[0] as Error).message).toBe("boom");
      h.rec.failWith = undefined;
      h.runner.run();
      await h.clock.advance(MIN);
      expect(h.rec.calls).toBe(4);
      expect(h.errors).toHaveLength(3);
    } finally {
      await h.stop();
    }
  });

  test("without onError a failure is logged, and a throwing onError does not end the loop", async () => {
    const clock = new FakeClock();
    const logger = memoryLogger();
    const abort = new AbortController();
    let calls = 0;
    const fn = async () => {
      calls++;
      throw new Error(`failure ${calls}`);
    };
    const logged = new BoundedFrequencyRunner(fn, { name: "logged", minIntervalMs: 0, maxIntervalMs: MAX, clock, logger });
    const throwing = new BoundedFrequencyRunner(fn, {
      name: "throwing",
      minIntervalMs: 0,
      maxIntervalMs: MAX,
      clock,
      logger,
      onError: () => {
        throw new Error("handler broke");
      },
    });
    const loops = [logged.start(abort.signal), throwing.start(abort.signal)];
    try {
      logged.run();
      await settle();
      throwing.run();
      await settle();
      throwing.run();
      await settle();
      expect(calls).toBe(3);
      const errors = logger.lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((r) => r["err"] !== undefined && r["v"] === 0);
      expect(errors.map((r) => [r["msg"], r["runner"], r["err"]])).toEqual([
        ["Run failed", "logged", "failure 1"],
        ["Run error handler failed", "throwing", "handler broke"],
        ["Run error handler failed", "throwing", "handler broke"],
      ]);
    } finally {
      abort.abort();
      await Promise.all(loops);
    }
  });

  test("never runs two at once and never spins, whatever the request pattern", async () => {
    let sleeps = 0;
    const clock = new FakeClock();
    const counting: Clock = {
      now: () => clock.now(),
      sleep: (ms, signal) => {
        sleeps++;
        return clock.sleep(ms, signal);
      },
    };
    const rec = new Recorder(clock);
    const abort = new AbortController();
    const runner = new BoundedFrequencyRunner(rec.fn, { name: "stress", minIntervalMs: MIN, maxIntervalMs: MAX, clock: counting });
    const loop = runner.start(abort.signal);
    try {
      for (let step = 0; step < 200; step++) {
        if (step % 3 === 0) rec.hold();
        runner.run();
        if (step % 7 === 0) runner.retryAfter(step * 10);
        await clock.advance(137);
        if (step % 3 === 2) rec.release();
      }
      rec.release();
      await clock.advance(MAX * 2);
      expect(rec.maxConcurrent).toBe(1);
      // 200 × 137 ms ≈ 27 s plus 60 s idle, with runs ≥ 1 s apart once the burst is spent.
      expect(rec.calls).toBeGreaterThan(10);
      expect(rec.calls).toBeLessThanOrEqual(2 + Math.ceil((200 * 137 + 2 * MAX) / MIN));
      const gaps = rec.starts.slice(2).map((t, i) => t - rec.starts[i]!);
      // Any three consecutive starts span at least one minInterval (burst 2).
      for (const gap of gaps) expect(gap).toBeGreaterThanOrEqual(MIN);
      // Each sleep ends on a deadline, a request or a retry; a spinning loop would make thousands.
      expect(sleeps).toBeLessThan(1_000);
      expect(clock.sleepers).toBe(1);
    } finally {
      abort.abort();
      rec.release();
      await loop;
    }
  });

  test("on the real clock: periodic runs happen and abort ends a parked loop promptly", async () => {
    let calls = 0;
    const abort = new AbortController();
    const runner = new BoundedFrequencyRunner(async () => void calls++, {
      name: "real",
      minIntervalMs: 5,
      maxIntervalMs: 20,
      clock: realClock,
    });
    const loop = runner.start(abort.signal);
    try {
      const deadline = Date.now() + 5_000;
      while (calls < 3 && Date.now() < deadline) await realClock.sleep(5);
      expect(calls).toBeGreaterThanOrEqual(3);
    } finally {
      const stopping = Date.now();
      abort.abort();
      await loop;
      expect(Date.now() - stopping).toBeLessThan(1_000);
    }
  });

  test("rejects a maxInterval below minInterval, a bad burst, and a second start", async () => {
    const clock = new FakeClock();
    const fn = async () => {};
    expect(() => new BoundedFrequencyRunner(fn, { name: "r", minIntervalMs: 2_000, maxIntervalMs: 1_000, clock })).toThrow(
      "r: maxInterval (1000 ms) must be >= minInterval (2000 ms)",
    );
    expect(() => new BoundedFrequencyRunner(fn, { name: "r", minIntervalMs: 0, maxIntervalMs: 1_000, burstRuns: 0, clock })).toThrow(
      "burstRuns",
    );
    expect(() => new BoundedFrequencyRunner(fn, { name: "r", minIntervalMs: 0, maxIntervalMs: Infinity, clock })).toThrow(
      "maxInterval",
    );
    const runner = new BoundedFrequencyRunner(fn, { name: "r", minIntervalMs: 0, maxIntervalMs: 1_000, clock });
    const abort = new AbortController();
    const loop = runner.start(abort.signal);
    await expect(runner.start(abort.signal)).rejects.toThrow("already started");
    abort.abort();
    await loop;
  });
});
