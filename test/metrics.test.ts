import { describe, expect, test } from "bun:test";
import {
  createMetrics,
  NETWORK_PROGRAMMING_BUCKETS,
  recordChanges,
  recordSyncFailure,
  recordSyncQueued,
  recordSyncSuccess,
  SYNC_DURATION_BUCKETS,
} from "../src/metrics.ts";

const COMMON = [
  "kubeproxy_network_programming_duration_seconds",
  "kubeproxy_proxy_healthz_total",
  "kubeproxy_proxy_livez_total",
  "kubeproxy_sync_proxy_rules_duration_seconds",
  "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
  "kubeproxy_sync_proxy_rules_endpoint_changes_total",
  "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
  "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
  "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
  "kubeproxy_sync_proxy_rules_service_changes_pending",
  "kubeproxy_sync_proxy_rules_service_changes_total",
];
const KPROXY = ["kproxy_build_info", "kproxy_sync_proxy_rules_failures_total"];
const IPTABLES_ONLY = [
  "kubeproxy_sync_full_proxy_rules_duration_seconds",
  "kubeproxy_sync_partial_proxy_rules_duration_seconds",
  "kubeproxy_sync_proxy_rules_iptables_last",
  "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
  "kubeproxy_sync_proxy_rules_iptables_total",
];
const RESTORE_FAILURES = "kubeproxy_sync_proxy_rules_iptables_restore_failures_total";
const PROCESS = [
  "process_cpu_seconds_total",
  "process_max_fds",
  "process_open_fds",
  "process_resident_memory_bytes",
  "process_start_time_seconds",
  "process_virtual_memory_bytes",
  "process_virtual_memory_max_bytes",
];

describe("createMetrics", () => {
  test("registers upstream's set per mode, like RegisterMetrics(mode)", () => {
    const sorted = (names: string[]) => [...names].sort();
    expect(createMetrics({ mode: "iptables", proc: null }).registry.names()).toEqual(sorted([...COMMON, ...KPROXY, ...IPTABLES_ONLY, RESTORE_FAILURES]));
    expect(createMetrics({ mode: "ipvs", proc: null }).registry.names()).toEqual(sorted([...COMMON, ...KPROXY, RESTORE_FAILURES]));
    expect(createMetrics({ mode: "userspace", proc: null }).registry.names()).toEqual(sorted([...COMMON, ...KPROXY]));
    expect(createMetrics().registry.names()).toEqual(sorted([...COMMON, ...KPROXY, ...IPTABLES_ONLY, RESTORE_FAILURES, ...PROCESS]));
  });

  test("each call makes an independent set", () => {
    const a = createMetrics({ proc: null });
    const b = createMetrics({ proc: null });
    a.serviceChangesTotal.inc();
    expect(b.serviceChangesTotal.get()).toBe(0);
  });

  test("sync duration buckets are 1 ms doubling to 16.384 s (15 buckets)", () => {
    expect(SYNC_DURATION_BUCKETS).toHaveLength(15);
    expect(SYNC_DURATION_BUCKETS[0]).toBe(0.001);
    expect(SYNC_DURATION_BUCKETS[14]).toBe(16.384);
    const text = createMetrics({ proc: null }).registry.expose();
    expect(text).toContain('kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.001"} 0\n');
    expect(text).toContain('kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="16.384"} 0\n');
  });

  test("network programming buckets: 0, 0.25, 0.5, 1..59, 60..115 by 5, 120..300 by 30", () => {
    expect(NETWORK_PROGRAMMING_BUCKETS).toHaveLength(1 + 2 + 59 + 12 + 7);
    expect(NETWORK_PROGRAMMING_BUCKETS.slice(0, 5)).toEqual([0, 0.25, 0.5, 1, 2]);
    expect(NETWORK_PROGRAMMING_BUCKETS.slice(61, 64)).toEqual([59, 60, 65]);
    expect(NETWORK_PROGRAMMING_BUCKETS.slice(-3)).toEqual([240, 270, 300]);
  });

  test("help texts are upstream's", () => {
    const text = createMetrics({ proc: null }).registry.expose();
    expect(text).toContain("# HELP kubeproxy_sync_proxy_rules_duration_seconds SyncProxyRules latency in seconds\n");
    expect(text).toContain("# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds The last time proxy rules were successfully synced\n");
    expect(text).toContain("# HELP kubeproxy_network_programming_duration_seconds In Cluster Network Programming Latency in seconds\n");
    expect(text).toContain("# HELP kubeproxy_sync_proxy_rules_iptables_restore_failures_total Cumulative proxy iptables restore failures\n");
  });
});

describe("recording helpers", () => {
  test("recordSyncSuccess: full sync feeds overall + full durations, timestamp, programming latency, rule counts", () => {
    const m = createMetrics({ proc: null });
    recordSyncSuccess(m, {
      startedMs: 10_000,
      endedMs: 10_250,
      full: true,
      result: { servicePorts: 2, endpoints: 4, rules: { nat: 30, filter: 4 } },
      triggerTimes: [8_000, 10_000],
    });
    expect(m.syncProxyRulesDuration.get()).toEqual({ count: 1, sum: 0.25 });
    expect(m.syncFullProxyRulesDuration.get()).toEqual({ count: 1, sum: 0.25 });
    expect(m.syncPartialProxyRulesDuration.get().count).toBe(0);
    expect(m.syncProxyRulesLastTimestamp.get()).toBe(10.25);
    expect(m.networkProgrammingDuration.get()).toEqual({ count: 2, sum: 2.25 + 0.25 });
    expect(m.iptablesRulesTotal.get({ table: "nat" })).toBe(30);
    expect(m.iptablesRulesLast.get({ table: "filter" })).toBe(4);
  });

  test("recordSyncSuccess: a partial sync updates rules written but keeps the owned count from the last full sync", () => {
    const m = createMetrics({ proc: null });
    recordSyncSuccess(m, { startedMs: 0, endedMs: 100, full: true, result: { servicePorts: 1, endpoints: 1, rules: { nat: 50 } } });
    recordSyncSuccess(m, { startedMs: 200, endedMs: 205, full: false, result: { servicePorts: 1, endpoints: 1, rules: { nat: 7 }, partial: true } });
    expect(m.iptablesRulesTotal.get({ table: "nat" })).toBe(50);
    expect(m.iptablesRulesLast.get({ table: "nat" })).toBe(7);
    expect(m.syncPartialProxyRulesDuration.get()).toEqual({ count: 1, sum: 0.005 });
    expect(m.syncProxyRulesDuration.get().count).toBe(2);
  });

  test("recordSyncQueued, recordChanges and recordSyncFailure", () => {
    const m = createMetrics({ proc: null });
    recordSyncQueued(m, 1_764_000_000_500);
    expect(m.syncProxyRulesLastQueuedTimestamp.get()).toBe(1_764_000_000.5);
    recordChanges(m, { services: 2 }, { services: 2, endpoints: 0 });
    recordChanges(m, { services: 1, endpoints: 4 }, { services: 0, endpoints: 1 });
    expect([m.serviceChangesTotal.get(), m.endpointChangesTotal.get()]).toEqual([3, 4]);
    expect([m.serviceChangesPending.get(), m.endpointChangesPending.get()]).toEqual([0, 1]);
    recordSyncFailure(m);
    expect(m.syncFailuresTotal.get()).toBe(1);
  });
});
