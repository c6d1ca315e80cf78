import { describe, expect, test } from "bun:test";
import { memoryLogger } from "../../src/log.ts";
import { createMetrics, recordChanges, recordSyncQueued, recordSyncSuccess } from "../../src/metrics.ts";
import { ProxierHealth } from "../../src/server/health.ts";
import { createMetricsApp } from "../../src/server/metrics-server.ts";
import { startHealthServer, startMetricsServer } from "../../src/server/start.ts";
import { realClock } from "../../src/system/clock.ts";
import { hasTool, needs } from "../helpers/require.ts";

/**
 * Upstream kube-proxy's own gauges whose names end in `_total`; promtool's linter flags that suffix
 * on non-counters. The names are kept for compatibility with kube-proxy dashboards, so these two
 * findings (and nothing else) are expected.
 */
const UPSTREAM_TOTAL_GAUGES = ["kubeproxy_sync_proxy_rules_iptables_total", "kubeproxy_sync_proxy_rules_no_local_endpoints_total"];

/** Metrics with every family populated, so the linter sees labelled series and histograms with data. */
function busyMetrics() {
  const metrics = createMetrics({ mode: "iptables" });
  const now = Date.now();
  recordSyncQueued(metrics, now - 120);
  recordChanges(metrics, { services: 3, endpoints: 5 }, { services: 0, endpoints: 1 });
  recordSyncSuccess(metrics, { startedMs: now - 100, endedMs: now, full: true, result: { servicePorts: 3, endpoints: 5, rules: { nat: 40, filter: 6 } }, triggerTimes: [now - 900] });
  recordSyncSuccess(metrics, { startedMs: now - 5, endedMs: now, full: false });
  metrics.noLocalEndpointsTotal.set({ traffic_policy: "internal" }, 0);
  metrics.noLocalEndpointsTotal.set({ traffic_policy: "external" }, 2);
  metrics.iptablesRestoreFailuresTotal.inc();
  metrics.syncFailuresTotal.inc();
  return metrics;
}

describe("metrics app", () => {
  const configz = () => ({ mode: "iptables", bindAddress: "0.0.0.0", "weird\nkey": 'x"y' });

  test("/metrics: Prometheus text 0.0.4 with kubeproxy_* and process_* families", async () => {
    const metrics = busyMetrics();
    const app = createMetricsApp({ registry: metrics.registry, mode: "iptables", configz });
    const res = await app.request("/metrics");
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
    const text = await res.text();
    expect(text).toContain("# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram\n");
    expect(text).toContain('kubeproxy_sync_proxy_rules_iptables_total{table="nat"} 40\n');
    expect(text).toContain("kubeproxy_sync_proxy_rules_service_changes_total 3\n");
    expect(text).toMatch(/\nprocess_resident_memory_bytes \d/);
  });

  test("/proxyMode answers the mode as plain text", async () => {
    const app = createMetricsApp({ registry: createMetrics({ proc: null }).registry, mode: "ipvs" });
    const res = await app.request("/proxyMode");
    expect(await res.text()).toBe("ipvs");
    expect(res.headers.get("content-type")).toBe("text/plain; charset=utf-8");
    expect(res.headers.get("x-content-type-options")).toBe("nosniff");
  });

  test("/configz wraps the callback's value under kubeproxy.config.k8s.io, read at request time", async () => {
    let mode = "iptables";
    const app = createMetricsApp({ registry: createMetrics({ proc: null }).registry, mode, configz: () => ({ mode }) });
    mode = "ipvs";
    const res = await app.request("/configz");
    expect(res.headers.get("content-type")).toBe("application/json");
    expect(await res.json()).toEqual({ "kubeproxy.config.k8s.io": { mode: "ipvs" } });
  });

  test("/configz without a callback is 404; a callback that throws is 500", async () => {
    const registry = createMetrics({ proc: null }).registry;
    expect((await createMetricsApp({ registry, mode: "iptables" }).request("/configz")).status).toBe(404);
    const broken = createMetricsApp({ registry, mode: "iptables", configz: () => { throw new Error("not loaded"); } });
    const res = await broken.request("/configz");
    expect(res.status).toBe(500);
    expect(await res.text()).toContain("not loaded");
  });

  test("/healthz is a plain ok (verbose lists the ping check)", async () => {
    const app = createMetricsApp({ registry: createMetrics({ proc: null }).registry, mode: "iptables" });
    expect(await (await app.request("/healthz")).text()).toBe("ok");
    expect(await (await app.request("/healthz?verbose")).text()).toBe("[+]ping ok\nhealthz check passed\n");
    expect(await (await app.request("/healthz/ping")).text()).toBe("ok");
  });
});

describe("started servers over real HTTP", () => {
  test("metrics and health servers on port 0 answer over loopback; health probes are counted in /metrics", async () => {
    const metrics = busyMetrics();
    const health = new ProxierHealth({ healthTimeoutMs: 60_000, clock: realClock });
    const logger = memoryLogger();
    const metricsServer = await startMetricsServer({ address: "127.0.0.1:0", metrics, mode: "iptables", logger, configz: () => ({ mode: "iptables" }) });
    const healthServer = await startHealthServer({ address: "127.0.0.1:0", health, metrics, logger });
    try {
      const healthz = await fetch(`http://127.0.0.1:${healthServer!.port}/healthz`);
      expect(healthz.status).toBe(200);
      expect(await healthz.json()).toMatchObject({ nodeEligible: true });
      health.setNodeEligible(false);
      expect((await fetch(`http://127.0.0.1:${healthServer!.port}/healthz`)).status).toBe(503);
      expect((await fetch(`http://127.0.0.1:${healthServer!.port}/livez`)).status).toBe(200);

      const text = await (await fetch(`http://127.0.0.1:${metricsServer!.port}/metrics`)).text();
      expect(text).toContain('kubeproxy_proxy_healthz_total{code="200"} 1\n');
      expect(text).toContain('kubeproxy_proxy_healthz_total{code="503"} 1\n');
      expect(text).toContain('kubeproxy_proxy_livez_total{code="200"} 1\n');
      expect(await (await fetch(`http://127.0.0.1:${metricsServer!.port}/proxyMode`)).text()).toBe("iptables");
    } finally {
      await metricsServer?.stop();
      await healthServer?.stop();
    }
  });

  test("an empty address disables a server", async () => {
    const metrics = createMetrics({ proc: null });
    expect(await startMetricsServer({ address: "", metrics, mode: "iptables", logger: memoryLogger() })).toBeUndefined();
    const health = new ProxierHealth({ healthTimeoutMs: 1, clock: realClock });
    expect(await startHealthServer({ address: "", health, logger: memoryLogger() })).toBeUndefined();
  });
});

const promtoolTest = needs(hasTool("promtool"), "needs promtool (Debian package prometheus)");

describe("promtool", () => {
  for (const mode of ["iptables", "ipvs", "userspace"] as const) {
    promtoolTest(`promtool check metrics accepts /metrics of a running server (${mode} mode)`, async () => {
      const metrics = busyMetrics();
      const server = await startMetricsServer({ address: "127.0.0.1:0", metrics: mode === "iptables" ? metrics : createMetrics({ mode }), mode, logger: memoryLogger() });
      try {
        const body = await (await fetch(`http://127.0.0.1:${server!.port}/metrics`)).text();
        const proc = Bun.spawn(["promtool", "check", "metrics"], { stdin: new TextEncoder().encode(body), stdout: "pipe", stderr: "pipe" });
        const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
        const findings = (out + err).split("\n").filter((l) => l.trim() !== "");
        const unexpected = findings.filter((l) => !UPSTREAM_TOTAL_GAUGES.some((name) => l === `${name} non-counter metrics should not have "_total" suffix`));
        expect(unexpected).toEqual([]);
        // Exit 3 means lint findings only (the expected ones above); anything else is a parse error.
        expect(code).toBe(findings.length === 0 ? 0 : 3);
        if (mode === "iptables") expect(findings).toHaveLength(UPSTREAM_TOTAL_GAUGES.length);
      } finally {
        await server?.stop();
      }
    });
  }
});
