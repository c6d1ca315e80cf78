import { describe, expect, test } from "bun:test";
import type { Backend, SyncResult } from "../../src/backends/backend.ts";
import { silentLogger } from "../../src/log.ts";
import { createMetrics } from "../../src/metrics.ts";
import type { ChangeSet, Snapshot } from "../../src/model/types.ts";
import { ProxyModel } from "../../src/model/tracker.ts";
import { ProxierHealth } from "../../src/server/health.ts";
import { SyncLoop } from "../../src/sync/loop.ts";
import { FakeClock } from "../helpers/fake-clock.ts";

function service(name: string, clusterIP: string) {
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: { namespace: "default", name },
    spec: { type: "ClusterIP", clusterIP, clusterIPs: [clusterIP], ports: [{ name: "http", port: 80, protocol: "TCP", targetPort: 8080 }] },
  };
}

/** A backend that records every sync and fails when told to. */
class RecordingBackend implements Backend {
  readonly mode = "iptables" as const;
  readonly syncs: { snapshot: Snapshot; changes: ChangeSet }[] = [];
  failNext = 0;
  /** Report that the sync released its memory itself (as a large iptables restore does). */
  releasesMemory = false;
  async sync(snapshot: Snapshot, changes: ChangeSet): Promise<SyncResult> {
    this.syncs.push({ snapshot, changes });
    if (this.failNext > 0) {
      this.failNext--;
      throw new Error("iptables-restore: line 3 failed");
    }
    return { servicePorts: snapshot.services.size, endpoints: 0, memoryReleased: this.releasesMemory };
  }
  plan(): string {
    return "";
  }
  async cleanup(): Promise<void> {}
  async close(): Promise<void> {}
}

function setup() {
  const clock = new FakeClock();
  const model = new ProxyModel({ nodeName: "node-a", logger: silentLogger, now: () => clock.now() });
  const backend = new RecordingBackend();
  const health = new ProxierHealth({ healthTimeoutMs: 60_000, clock });
  const metrics = createMetrics({ mode: "iptables", proc: null });
  const outcomes: boolean[] = [];
  const collections: number[] = [];
  const loop = new SyncLoop({
    model,
    backend,
    health,
    metrics,
    clock,
    logger: silentLogger,
    minSyncPeriodMs: 1000,
    syncPeriodMs: 30_000,
    onSynced: (o) => outcomes.push(o.ok),
    collectGarbage: () => collections.push(backend.syncs.length),
  });
  return { clock, model, backend, health, metrics, loop, outcomes, collections };
}

async function until(what: string, cond: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

describe("SyncLoop", () => {
  test("waits for the initial lists, then syncs fully once and partially after", async () => {
    const t = setup();
    const ac = new AbortController();
    const running = t.loop.start(ac.signal);
    try {
      t.model.apply({ type: "upsert", kind: "Service", object: service("web", "10.96.0.10") });
      await t.clock.waitForSleepers(1);
      expect(t.backend.syncs).toHaveLength(0);

      t.model.apply({ type: "synced" });
      await until("first sync", () => t.backend.syncs.length === 1);
      expect(t.backend.syncs[0]!.changes.full).toBe(true);
      expect(t.backend.syncs[0]!.snapshot.services.size).toBe(1);

      t.model.apply({ type: "upsert", kind: "Service", object: service("api", "10.96.0.11") });
      await until("second sync", () => t.backend.syncs.length === 2);
      const second = t.backend.syncs[1]!.changes;
      expect(second.full).toBe(false);
      expect([...second.changed]).toEqual(["IPv4/default/api:http/TCP"]);
      expect(t.health.status().healthy).toBe(true);
      // Garbage is collected after the full sync only (a partial one leaves little behind).
      expect(t.collections).toEqual([1]);
    } finally {
      ac.abort();
      await running;
    }
  });

  test("a full sync whose backend released the memory itself is not followed by a second collection", async () => {
    const t = setup();
    t.backend.releasesMemory = true;
    const ac = new AbortController();
    const running = t.loop.start(ac.signal);
    try {
      t.model.apply({ type: "upsert", kind: "Service", object: service("web", "10.96.0.10") });
      t.model.apply({ type: "synced" });
      await until("first sync", () => t.backend.syncs.length === 1 && t.outcomes.length === 1);
      expect(t.backend.syncs[0]!.changes.full).toBe(true);
      expect(t.collections).toEqual([]);
      // A full sync whose backend did not release it (a small one) still gets the loop's collection.
      t.backend.releasesMemory = false;
      t.backend.failNext = 1;
      t.model.apply({ type: "upsert", kind: "Service", object: service("api", "10.96.0.11") });
      await until("failed sync", () => t.outcomes.length === 2);
      await t.clock.advance(1000);
      await until("full retry", () => t.outcomes.length === 3);
      expect(t.backend.syncs[2]!.changes.full).toBe(true);
      expect(t.collections).toEqual([3]);
    } finally {
      ac.abort();
      await running;
    }
  });

  test("a failed sync is retried with a full sync, counted, and the failure shows in health", async () => {
    const t = setup();
    const ac = new AbortController();
    const running = t.loop.start(ac.signal);
    try {
      t.backend.failNext = 1;
      t.model.apply({ type: "upsert", kind: "Service", object: service("web", "10.96.0.10") });
      t.model.apply({ type: "synced" });
      await until("failed sync", () => t.outcomes.length === 1);
      expect(t.outcomes).toEqual([false]);
      expect(t.health.status().lastFailure).toContain("iptables-restore");
      expect(t.metrics.registry.expose()).toMatch(/kproxy_sync_proxy_rules_failures_total 1/);

      t.model.apply({ type: "upsert", kind: "Service", object: service("api", "10.96.0.11") });
      await t.clock.waitForSleepers(1);
      await t.clock.advance(1000);
      await until("retry", () => t.outcomes.length === 2);
      expect(t.outcomes).toEqual([false, true]);
      expect(t.backend.syncs[1]!.changes.full).toBe(true);
      expect(t.health.status().lastFailure).toBeUndefined();
    } finally {
      ac.abort();
      await running;
    }
  });

  test("a sync pending longer than the health timeout makes health fail until a sync succeeds", async () => {
    const t = setup();
    const ac = new AbortController();
    const running = t.loop.start(ac.signal);
    try {
      t.backend.failNext = 1000;
      t.model.apply({ type: "synced" });
      await until("first failure", () => t.outcomes.length >= 1);
      for (let i = 0; i < 4; i++) {
        await t.clock.waitForSleepers(1);
        await t.clock.advance(30_000);
      }
      expect(t.health.status().healthy).toBe(false);
      t.backend.failNext = 0;
      await t.clock.waitForSleepers(1);
      await t.clock.advance(30_000);
      await until("recovery", () => t.outcomes.at(-1) === true);
      expect(t.health.status().healthy).toBe(true);
    } finally {
      ac.abort();
      await running;
    }
  });

  test("a full sync happens every syncPeriod without changes", async () => {
    const t = setup();
    const ac = new AbortController();
    const running = t.loop.start(ac.signal);
    try {
      t.model.apply({ type: "synced" });
      await until("first sync", () => t.backend.syncs.length === 1);
      await t.clock.waitForSleepers(1);
      await t.clock.advance(30_000);
      await until("periodic sync", () => t.backend.syncs.length === 2);
      expect(t.backend.syncs[1]!.changes.full).toBe(true);
      expect(t.backend.syncs[1]!.changes.changed.size).toBe(0);
      await until("collection after the periodic sync", () => t.collections.length === 2);
      expect(t.collections).toEqual([1, 2]);
    } finally {
      ac.abort();
      await running;
    }
  });
});
