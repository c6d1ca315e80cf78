// The fake clock lives in test/helpers for every timing test; its own tests sit with its first user.
import { describe, expect, test } from "bun:test";
import { FakeClock } from "../helpers/fake-clock.ts";

describe("FakeClock", () => {
  test("time moves only on advance, and sleepers wake in deadline order at their deadline", async () => {
    const clock = new FakeClock(1_000);
    const woke: [string, number][] = [];
    const sleep = (name: string, ms: number) => clock.sleep(ms).then(() => woke.push([name, clock.now()]));
    void sleep("c", 300);
    void sleep("a", 100);
    void sleep("b", 200);
    void sleep("a2", 100);
    expect(clock.sleepers).toBe(4);
    expect(clock.nextDeadline()).toBe(1_100);
    await clock.advance(250);
    expect(woke).toEqual([
      ["a", 1_100],
      ["a2", 1_100],
      ["b", 1_200],
    ]);
    expect(clock.now()).toBe(1_250);
    expect(clock.sleepers).toBe(1);
  });

  test("a sleeper that sleeps again within the window is woken again in the same advance", async () => {
    const clock = new FakeClock(0);
    const ticks: number[] = [];
    const ac = new AbortController();
    const loop = (async () => {
      while (!ac.signal.aborted) {
        await clock.sleep(100, ac.signal);
        if (!ac.signal.aborted) ticks.push(clock.now());
      }
    })();
    await clock.waitForSleepers(1);
    await clock.advance(350);
    expect(ticks).toEqual([100, 200, 300]);
    ac.abort();
    await loop;
    expect(clock.sleepers).toBe(0);
  });

  test("sleep(0) waits for the next advance, and advance(0) ends it", async () => {
    const clock = new FakeClock(0);
    let done = false;
    void clock.sleep(0).then(() => (done = true));
    await Promise.resolve();
    expect(done).toBe(false);
    expect(clock.sleepers).toBe(1);
    await clock.advance(0);
    expect(done).toBe(true);
  });

  test("an aborted signal ends the sleep at once and an already aborted one never parks", async () => {
    const clock = new FakeClock(0);
    const ac = new AbortController();
    const sleeping = clock.sleep(10_000, ac.signal);
    expect(clock.sleepers).toBe(1);
    ac.abort();
    await sleeping;
    expect(clock.sleepers).toBe(0);
    expect(clock.now()).toBe(0);
    await clock.sleep(10_000, ac.signal);
    expect(clock.sleepers).toBe(0);
  });

  test("waitForSleepers fails instead of hanging when nobody parks", async () => {
    const clock = new FakeClock(0);
    await expect(clock.waitForSleepers(1, 20)).rejects.toThrow("expected 1 sleeper(s), have 0");
  });

  test("advance refuses to go backwards", async () => {
    const clock = new FakeClock(500);
    await expect(clock.advance(-1)).rejects.toThrow(RangeError);
    await clock.advanceTo(100);
    expect(clock.now()).toBe(500);
  });
});
