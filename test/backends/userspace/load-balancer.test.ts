import { describe, expect, test } from "bun:test";
import { DEFAULT_AFFINITY_TIMEOUT_SECONDS, LoadBalancer } from "../../../src/backends/userspace/load-balancer.ts";
import { FakeClock } from "../../helpers/fake-clock.ts";

const EPS = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];

function take(lb: LoadBalancer, n: number, client = "192.0.2.1", key = "svc"): (string | undefined)[] {
  return Array.from({ length: n }, () => lb.nextEndpoint(key, client, false));
}

describe("LoadBalancer round robin", () => {
  test("walks every endpoint once per round, in a fixed (shuffled) order", () => {
    const lb = new LoadBalancer();
    lb.update("svc", EPS);
    const first = take(lb, 3);
    expect([...first].sort()).toEqual([...EPS].sort());
    expect(take(lb, 6)).toEqual([...first, ...first]);
  });

  test("unknown service or no endpoints gives undefined", () => {
    const lb = new LoadBalancer();
    expect(lb.nextEndpoint("nope", "192.0.2.1", false)).toBeUndefined();
    lb.update("svc", []);
    expect(lb.nextEndpoint("svc", "192.0.2.1", false)).toBeUndefined();
  });

  test("reshuffles only when the set changes", () => {
    let calls = 0;
    const lb = new LoadBalancer({
      random: () => {
        calls++;
        return 0;
      },
    });
    lb.update("svc", EPS);
    const afterFirst = calls;
    expect(afterFirst).toBeGreaterThan(0);
    lb.nextEndpoint("svc", "c", false);
    // Same set in another order: no reshuffle, the round robin position is kept.
    lb.update("svc", [...EPS].reverse());
    expect(calls).toBe(afterFirst);
    const order = lb.endpoints("svc");
    expect(lb.nextEndpoint("svc", "c", false)).toBe(order[1]);
    lb.update("svc", [...EPS, "10.0.0.4:80"]);
    expect(calls).toBeGreaterThan(afterFirst);
    expect(lb.nextEndpoint("svc", "c", false)).toBe(lb.endpoints("svc")[0]);
  });

  test("the shuffle uses the injected random source (a pinned order is reproducible)", () => {
    const seq = [0.9, 0.1, 0.5];
    const make = () => {
      let i = 0;
      return new LoadBalancer({ random: () => seq[i++ % seq.length] as number });
    };
    const a = make();
    const b = make();
    a.update("svc", EPS);
    b.update("svc", EPS);
    expect(a.endpoints("svc")).toEqual(b.endpoints("svc"));
  });

  test("remove forgets the service", () => {
    const lb = new LoadBalancer();
    lb.update("svc", EPS);
    expect(lb.has("svc")).toBe(true);
    lb.remove("svc");
    expect(lb.has("svc")).toBe(false);
    expect(lb.nextEndpoint("svc", "c", false)).toBeUndefined();
  });
});

describe("LoadBalancer ClientIP affinity", () => {
  const affinity = { type: "ClientIP", timeoutSeconds: 10 } as const;

  test("a client sticks to its endpoint while it returns within the timeout, then moves on", async () => {
    const clock = new FakeClock();
    const lb = new LoadBalancer({ clock });
    lb.update("svc", EPS, affinity);
    const first = lb.nextEndpoint("svc", "192.0.2.1", false);
    for (let i = 0; i < 5; i++) {
      await clock.advance(9_000); // each use refreshes the record
      expect(lb.nextEndpoint("svc", "192.0.2.1", false)).toBe(first);
    }
    // Another client takes the next endpoint in the round.
    const other = lb.nextEndpoint("svc", "192.0.2.2", false);
    expect(other).not.toBe(first);
    await clock.advance(10_000);
    const after = lb.nextEndpoint("svc", "192.0.2.1", false);
    expect(after).not.toBe(first);
  });

  test("idle just under the timeout (in whole seconds) still sticks", async () => {
    const clock = new FakeClock();
    const lb = new LoadBalancer({ clock });
    lb.update("svc", EPS, affinity);
    const first = lb.nextEndpoint("svc", "c", false);
    await clock.advance(10_999 - 1_000);
    expect(lb.nextEndpoint("svc", "c", false)).toBe(first);
  });

  test("sessionAffinityReset replaces the sticky endpoint", () => {
    const lb = new LoadBalancer({ clock: new FakeClock() });
    lb.update("svc", EPS, affinity);
    const first = lb.nextEndpoint("svc", "c", false);
    const replaced = lb.nextEndpoint("svc", "c", true);
    expect(replaced).not.toBe(first);
    expect(lb.nextEndpoint("svc", "c", false)).toBe(replaced);
  });

  test("affinity to an endpoint that left the set is dropped", () => {
    const lb = new LoadBalancer({ clock: new FakeClock() });
    lb.update("svc", EPS, affinity);
    const first = lb.nextEndpoint("svc", "c", false) as string;
    lb.update("svc", EPS.filter((e) => e !== first), affinity);
    const next = lb.nextEndpoint("svc", "c", false);
    expect(next).toBeDefined();
    expect(next).not.toBe(first);
  });

  test("timeoutSeconds 0 means upstream's default of 3 hours", async () => {
    expect(DEFAULT_AFFINITY_TIMEOUT_SECONDS).toBe(10_800);
    const clock = new FakeClock();
    const lb = new LoadBalancer({ clock });
    lb.update("svc", EPS, { type: "ClientIP", timeoutSeconds: 0 });
    const first = lb.nextEndpoint("svc", "c", false);
    await clock.advance(10_799_000);
    expect(lb.nextEndpoint("svc", "c", false)).toBe(first);
  });

  test("cleanupStaleAffinity drops expired records; switching affinity off drops all", async () => {
    const clock = new FakeClock();
    const lb = new LoadBalancer({ clock, random: () => 0 });
    lb.update("svc", EPS, affinity);
    const first = lb.nextEndpoint("svc", "c", false);
    await clock.advance(10_000);
    lb.cleanupStaleAffinity();
    // Without the record the client gets the round's next endpoint, not its old one.
    expect(lb.nextEndpoint("svc", "c", false)).not.toBe(first);
    lb.update("svc", EPS, { type: "None" });
    const seen = new Set(take(lb, 3, "c"));
    expect(seen.size).toBe(3);
  });
});
