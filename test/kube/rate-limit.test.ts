import { describe, expect, test } from "bun:test";
import { Backoff, defaultBackoffPolicy } from "../../src/kube/backoff.ts";
import { TokenBucket } from "../../src/kube/rate-limit.ts";
import { FakeClock } from "../helpers/fake-clock.ts";

describe("TokenBucket", () => {
  test("burst requests pass at once, then one per 1/qps seconds", () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket(5, 10, clock);
    const waits = Array.from({ length: 13 }, () => bucket.reserve());
    expect(waits.slice(0, 10)).toEqual(Array(10).fill(0));
    expect(waits.slice(10)).toEqual([200, 400, 600]);
  });

  test("tokens refill with time, never above burst", async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket(2, 3, clock);
    for (let i = 0; i < 3; i++) expect(bucket.reserve()).toBe(0);
    await clock.advance(1000); // 2 tokens back
    expect(bucket.reserve()).toBe(0);
    expect(bucket.reserve()).toBe(0);
    expect(bucket.reserve()).toBe(500);
    await clock.advance(60_000);
    // Capacity is the burst, however long it was idle.
    expect([bucket.reserve(), bucket.reserve(), bucket.reserve(), bucket.reserve()]).toEqual([0, 0, 0, 500]);
  });

  test("take() sleeps on the clock until the token is due", async () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket(1, 1, clock);
    await bucket.take();
    let done = false;
    const second = bucket.take().then(() => (done = true));
    await clock.waitForSleepers(1);
    await clock.advance(999);
    expect(done).toBe(false);
    await clock.advance(1);
    await second;
    expect(done).toBe(true);
  });

  test("qps <= 0 disables throttling", () => {
    const bucket = new TokenBucket(0, 0, new FakeClock());
    for (let i = 0; i < 100; i++) expect(bucket.reserve()).toBe(0);
  });
});

describe("Backoff", () => {
  test("without jitter: 800 ms doubling, capped at 30 s", () => {
    const b = new Backoff({ ...defaultBackoffPolicy, jitter: 0 });
    expect(Array.from({ length: 8 }, () => b.next())).toEqual([800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
    b.reset();
    expect(b.next()).toBe(800);
  });

  test("jitter stretches each delay by up to its own length, never past the cap", () => {
    const b = new Backoff(defaultBackoffPolicy, () => 0.5);
    expect(Array.from({ length: 6 }, () => b.next())).toEqual([1200, 2400, 4800, 9600, 19200, 30000]);
    const max = new Backoff(defaultBackoffPolicy, () => 0.999);
    for (let i = 0; i < 20; i++) expect(max.next()).toBeLessThanOrEqual(30_000);
  });
});
