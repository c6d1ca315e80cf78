import { describe, expect, test } from "bun:test";
import { createHealthApp, formatGoTime } from "../../src/server/health-app.ts";
import { ProxierHealth, TO_BE_DELETED_TAINT } from "../../src/server/health.ts";
import { Counter } from "../../src/server/registry.ts";
import { FakeClock } from "../helpers/fake-clock.ts";

const SYNC_PERIOD_MS = 30_000;
const T0 = Date.UTC(2026, 0, 1, 12, 0, 0);

function setup() {
  const clock = new FakeClock(T0);
  const health = new ProxierHealth({ healthTimeoutMs: 2 * SYNC_PERIOD_MS, clock });
  const healthzTotal = new Counter({ name: "kubeproxy_proxy_healthz_total", help: "h", labelNames: ["code"] });
  const livezTotal = new Counter({ name: "kubeproxy_proxy_livez_total", help: "l", labelNames: ["code"] });
  const app = createHealthApp({ health, healthzTotal, livezTotal });
  const get = async (path: string) => {
    const res = await app.request(path);
    return { status: res.status, body: await res.text(), headers: res.headers };
  };
  return { clock, health, app, get, healthzTotal, livezTotal };
}

describe("formatGoTime", () => {
  test("prints Go's time.Time String() layout in UTC, trimming the fraction", () => {
    expect(formatGoTime(Date.UTC(2026, 0, 1, 12, 0, 0))).toBe("2026-01-01 12:00:00 +0000 UTC");
    expect(formatGoTime(Date.UTC(2026, 10, 26, 9, 5, 7, 500))).toBe("2026-11-26 09:05:07.5 +0000 UTC");
    expect(formatGoTime(Date.UTC(2026, 10, 26, 9, 5, 7, 123))).toBe("2026-11-26 09:05:07.123 +0000 UTC");
    expect(formatGoTime(undefined)).toBe("0001-01-01 00:00:00 +0000 UTC");
  });
});

describe("ProxierHealth", () => {
  test("healthy at start, before any sync", () => {
    const { health } = setup();
    expect(health.status()).toEqual({
      healthy: true,
      nodeEligible: true,
      lastUpdated: undefined,
      oldestPendingQueued: undefined,
      currentTime: T0,
      lastFailure: undefined,
    });
  });

  test("a queued update turns unhealthy exactly when it is 2 × syncPeriod old, and healthy again after an update", async () => {
    const { health, clock } = setup();
    health.queued();
    await clock.advance(2 * SYNC_PERIOD_MS - 1);
    expect(health.isHealthy()).toBe(true);
    await clock.advance(1);
    expect(health.isHealthy()).toBe(false);
    health.updated();
    expect(health.status()).toMatchObject({ healthy: true, lastUpdated: T0 + 2 * SYNC_PERIOD_MS, oldestPendingQueued: undefined });
  });

  test("only the oldest pending queue time counts; later queued() calls do not reset it", async () => {
    const { health, clock } = setup();
    health.queued();
    await clock.advance(50_000);
    health.queued();
    await clock.advance(10_000);
    expect(health.status()).toMatchObject({ healthy: false, oldestPendingQueued: T0 });
  });

  test("a failed sync is remembered until the next success but does not by itself change health", async () => {
    const { health } = setup();
    health.queued();
    health.failed("iptables-restore exited 1");
    expect(health.status()).toMatchObject({ healthy: true, lastFailure: "iptables-restore exited 1" });
    health.updated();
    expect(health.status().lastFailure).toBeUndefined();
  });

  test("syncNode: deletion timestamp or the autoscaler's taint make the node ineligible", () => {
    const { health } = setup();
    health.syncNode({ deletionTimestamp: "2026-01-01T00:00:00Z" });
    expect(health.status().nodeEligible).toBe(false);
    health.syncNode({ taints: [{ key: "other" }] });
    expect(health.status().nodeEligible).toBe(true);
    health.syncNode({ taints: [{ key: TO_BE_DELETED_TAINT }] });
    expect(health.status().nodeEligible).toBe(false);
    health.setNodeEligible(true);
    expect(health.status().nodeEligible).toBe(true);
  });

  test("rejects a non-positive timeout", () => {
    expect(() => new ProxierHealth({ healthTimeoutMs: 0, clock: new FakeClock() })).toThrow(/positive/);
  });
});

describe("health app", () => {
  test("/healthz healthy: 200, upstream's body with lastUpdated = currentTime, JSON and nosniff headers", async () => {
    const { get, health, clock, healthzTotal } = setup();
    health.updated();
    await clock.advance(1500);
    const res = await get("/healthz");
    expect(res.status).toBe(200);
    expect(res.body).toBe(
      '{"lastUpdated": "2026-01-01 12:00:01.5 +0000 UTC","currentTime": "2026-01-01 12:00:01.5 +0000 UTC", "nodeEligible": true}',
    );
    expect(res.headers.get("content-type")).toBe("application/json");
    expect(res.headers.get("x-content-type-options")).toBe("nosniff");
    expect(JSON.parse(res.body)).toEqual({
      lastUpdated: "2026-01-01 12:00:01.5 +0000 UTC",
      currentTime: "2026-01-01 12:00:01.5 +0000 UTC",
      nodeEligible: true,
    });
    expect(healthzTotal.get({ code: "200" })).toBe(1);
  });

  test("stale queued update: /healthz and /livez 503 reporting the real last update; back to 200 after updated()", async () => {
    const { get, health, clock, healthzTotal, livezTotal } = setup();
    health.updated(); // at T0
    await clock.advance(1000);
    health.queued(); // at T0 + 1 s
    await clock.advance(2 * SYNC_PERIOD_MS);

    const healthz = await get("/healthz");
    expect(healthz.status).toBe(503);
    expect(healthz.body).toBe('{"lastUpdated": "2026-01-01 12:00:00 +0000 UTC","currentTime": "2026-01-01 12:01:01 +0000 UTC", "nodeEligible": true}');
    const livez = await get("/livez");
    expect(livez.status).toBe(503);
    expect(livez.body).toBe('{"lastUpdated": "2026-01-01 12:00:00 +0000 UTC","currentTime": "2026-01-01 12:01:01 +0000 UTC"}');

    health.updated();
    expect((await get("/healthz")).status).toBe(200);
    expect((await get("/livez")).status).toBe(200);
    expect([healthzTotal.get({ code: "503" }), healthzTotal.get({ code: "200" })]).toEqual([1, 1]);
    expect([livezTotal.get({ code: "503" }), livezTotal.get({ code: "200" })]).toEqual([1, 1]);
  });

  test("never synced and stale: lastUpdated is Go's zero time", async () => {
    const { get, health, clock } = setup();
    health.queued();
    await clock.advance(2 * SYNC_PERIOD_MS);
    const res = await get("/healthz");
    expect(res.status).toBe(503);
    expect(JSON.parse(res.body).lastUpdated).toBe("0001-01-01 00:00:00 +0000 UTC");
  });

  test("node not eligible: /healthz 503 with nodeEligible false, /livez still 200", async () => {
    const { get, health } = setup();
    health.setNodeEligible(false);
    const healthz = await get("/healthz");
    expect(healthz.status).toBe(503);
    expect(JSON.parse(healthz.body)).toMatchObject({ nodeEligible: false, lastUpdated: "0001-01-01 00:00:00 +0000 UTC" });
    const livez = await get("/livez");
    expect(livez.status).toBe(200);
    expect(Object.keys(JSON.parse(livez.body))).toEqual(["lastUpdated", "currentTime"]);
  });

  test("unknown paths get Go's 404 text", async () => {
    const { get } = setup();
    const res = await get("/healthz/extra");
    expect(res.status).toBe(404);
    expect(res.body).toBe("404 page not found\n");
  });
});
