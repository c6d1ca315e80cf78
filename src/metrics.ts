/**
 * kproxy's metric set. Names, help texts, types and buckets are upstream kube-proxy's, so dashboards
 * and alerts written for kube-proxy work unchanged. Like upstream, mode-specific metrics (full/partial
 * sync durations, iptables rule counts and restore failures) are only exposed in the modes that
 * produce them; their handles always exist so callers never branch on the mode.
 */
import type { ProxyMode, SyncResult } from "./backends/backend.ts";
import { registerProcessMetrics, type ProcReader } from "./server/process-metrics.ts";
import { Counter, Gauge, Histogram, Registry, exponentialBuckets, linearBuckets } from "./server/registry.ts";
import { buildTarget, version } from "./version.ts";

/** 1 ms … 16.4 s, doubling: upstream's buckets for every sync duration histogram. */
export const SYNC_DURATION_BUCKETS: readonly number[] = exponentialBuckets(0.001, 2, 15);

/** 0, 0.25 s, 0.5 s, 1…59 s, 60…115 s by 5, 120…300 s by 30: upstream's network programming buckets. */
export const NETWORK_PROGRAMMING_BUCKETS: readonly number[] = [
  0,
  ...linearBuckets(0.25, 0.25, 2),
  ...linearBuckets(1, 1, 59),
  ...linearBuckets(60, 5, 12),
  ...linearBuckets(120, 30, 7),
];

export interface KproxyMetrics {
  readonly registry: Registry;
  /** kubeproxy_sync_proxy_rules_duration_seconds: every sync, full or partial. */
  readonly syncProxyRulesDuration: Histogram;
  /** kubeproxy_sync_full_proxy_rules_duration_seconds (iptables mode). */
  readonly syncFullProxyRulesDuration: Histogram;
  /** kubeproxy_sync_partial_proxy_rules_duration_seconds (iptables mode). */
  readonly syncPartialProxyRulesDuration: Histogram;
  /** kubeproxy_sync_proxy_rules_last_timestamp_seconds: last successful sync. */
  readonly syncProxyRulesLastTimestamp: Gauge;
  /** kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds: last time a sync was requested. */
  readonly syncProxyRulesLastQueuedTimestamp: Gauge;
  /** kubeproxy_network_programming_duration_seconds: from an endpoints change to rules in place. */
  readonly networkProgrammingDuration: Histogram;
  readonly endpointChangesPending: Gauge;
  readonly endpointChangesTotal: Counter;
  readonly serviceChangesPending: Gauge;
  readonly serviceChangesTotal: Counter;
  /** kubeproxy_sync_proxy_rules_iptables_restore_failures_total (iptables and ipvs modes). */
  readonly iptablesRestoreFailuresTotal: Counter;
  /** kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total (iptables mode). */
  readonly iptablesPartialRestoreFailuresTotal: Counter;
  /** kubeproxy_sync_proxy_rules_iptables_total{table}: rules kproxy owns (iptables mode). */
  readonly iptablesRulesTotal: Gauge<"table">;
  /** kubeproxy_sync_proxy_rules_iptables_last{table}: rules written by the last sync (iptables mode). */
  readonly iptablesRulesLast: Gauge<"table">;
  /** kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="internal"|"external"}. */
  readonly noLocalEndpointsTotal: Gauge<"traffic_policy">;
  /** kubeproxy_proxy_healthz_total{code}: /healthz answers by status code. */
  readonly proxyHealthzTotal: Counter<"code">;
  /** kubeproxy_proxy_livez_total{code}: /livez answers by status code. */
  readonly proxyLivezTotal: Counter<"code">;
  /** kproxy_sync_proxy_rules_failures_total: syncs that failed (kproxy's own; upstream only logs them). */
  readonly syncFailuresTotal: Counter;
}

export interface MetricsOptions {
  /** Decides which mode-specific metrics are exposed; upstream's default mode, iptables, when omitted. */
  readonly mode?: ProxyMode;
  /** Where process_* metrics come from; `null` leaves them out. Defaults to the real /proc/self. */
  readonly proc?: ProcReader | null;
}

export function createMetrics(options: MetricsOptions = {}): KproxyMetrics {
  const mode = options.mode ?? "iptables";
  const registry = new Registry();
  const metrics: KproxyMetrics = {
    registry,
    syncProxyRulesDuration: new Histogram({
      name: "kubeproxy_sync_proxy_rules_duration_seconds",
      help: "SyncProxyRules latency in seconds",
      buckets: SYNC_DURATION_BUCKETS,
    }),
    syncFullProxyRulesDuration: new Histogram({
      name: "kubeproxy_sync_full_proxy_rules_duration_seconds",
      help: "SyncProxyRules latency in seconds for full resyncs",
      buckets: SYNC_DURATION_BUCKETS,
    }),
    syncPartialProxyRulesDuration: new Histogram({
      name: "kubeproxy_sync_partial_proxy_rules_duration_seconds",
      help: "SyncProxyRules latency in seconds for partial resyncs",
      buckets: SYNC_DURATION_BUCKETS,
    }),
    syncProxyRulesLastTimestamp: new Gauge({
      name: "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
      help: "The last time proxy rules were successfully synced",
    }),
    syncProxyRulesLastQueuedTimestamp: new Gauge({
      name: "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
      help: "The last time a sync of proxy rules was queued",
    }),
    networkProgrammingDuration: new Histogram({
      name: "kubeproxy_network_programming_duration_seconds",
      help: "In Cluster Network Programming Latency in seconds",
      buckets: NETWORK_PROGRAMMING_BUCKETS,
    }),
    endpointChangesPending: new Gauge({
      name: "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
      help: "Pending proxy rules Endpoint changes",
    }),
    endpointChangesTotal: new Counter({
      name: "kubeproxy_sync_proxy_rules_endpoint_changes_total",
      help: "Cumulative proxy rules Endpoint changes",
    }),
    serviceChangesPending: new Gauge({
      name: "kubeproxy_sync_proxy_rules_service_changes_pending",
      help: "Pending proxy rules Service changes",
    }),
    serviceChangesTotal: new Counter({
      name: "kubeproxy_sync_proxy_rules_service_changes_total",
      help: "Cumulative proxy rules Service changes",
    }),
    iptablesRestoreFailuresTotal: new Counter({
      name: "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
      help: "Cumulative proxy iptables restore failures",
    }),
    iptablesPartialRestoreFailuresTotal: new Counter({
      name: "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
      help: "Cumulative proxy iptables partial restore failures",
    }),
    iptablesRulesTotal: new Gauge({
      name: "kubeproxy_sync_proxy_rules_iptables_total",
      help: "Total number of iptables rules owned by kube-proxy",
      labelNames: ["table"],
    }),
    iptablesRulesLast: new Gauge({
      name: "kubeproxy_sync_proxy_rules_iptables_last",
      help: "Number of iptables rules written by kube-proxy in last sync",
      labelNames: ["table"],
    }),
    noLocalEndpointsTotal: new Gauge({
      name: "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
      help: "Number of services with a Local traffic policy and no endpoints",
      labelNames: ["traffic_policy"],
    }),
    proxyHealthzTotal: new Counter({
      name: "kubeproxy_proxy_healthz_total",
      help: "Cumulative proxy healthz HTTP status",
      labelNames: ["code"],
    }),
    proxyLivezTotal: new Counter({
      name: "kubeproxy_proxy_livez_total",
      help: "Cumulative proxy livez HTTP status",
      labelNames: ["code"],
    }),
    syncFailuresTotal: new Counter({
      name: "kproxy_sync_proxy_rules_failures_total",
      help: "Cumulative proxy rules syncs that failed",
    }),
  };

  for (const common of [
    metrics.syncProxyRulesDuration,
    metrics.syncProxyRulesLastQueuedTimestamp,
    metrics.syncProxyRulesLastTimestamp,
    metrics.endpointChangesPending,
    metrics.endpointChangesTotal,
    metrics.serviceChangesPending,
    metrics.serviceChangesTotal,
    metrics.proxyHealthzTotal,
    metrics.proxyLivezTotal,
    metrics.networkProgrammingDuration,
    metrics.noLocalEndpointsTotal,
    metrics.syncFailuresTotal,
  ]) {
    registry.register(common);
  }
  switch (mode) {
    case "iptables":
      registry.register(metrics.syncFullProxyRulesDuration);
      registry.register(metrics.syncPartialProxyRulesDuration);
      registry.register(metrics.iptablesRestoreFailuresTotal);
      registry.register(metrics.iptablesPartialRestoreFailuresTotal);
      registry.register(metrics.iptablesRulesTotal);
      registry.register(metrics.iptablesRulesLast);
      break;
    case "ipvs":
      // The ipvs mode restores its companion iptables rules too.
      registry.register(metrics.iptablesRestoreFailuresTotal);
      break;
    case "userspace":
      break;
  }

  registry.gauge({
    name: "kproxy_build_info",
    help: "A metric with a constant '1' value labeled by the kproxy version and build target",
    labelNames: ["version", "target"],
    collect: () => [{ labels: { version, target: buildTarget }, value: 1 }],
  });

  if (options.proc !== null) registerProcessMetrics(registry, options.proc);
  return metrics;
}

/** A sync was requested (something changed); `nowMs` from the Clock. */
export function recordSyncQueued(metrics: KproxyMetrics, nowMs: number): void {
  metrics.syncProxyRulesLastQueuedTimestamp.set(undefined, nowMs / 1000);
}

/** Changes seen by the change tracker: adds to the totals and sets what is still pending. */
export function recordChanges(
  metrics: KproxyMetrics,
  seen: { readonly services?: number; readonly endpoints?: number },
  pending: { readonly services: number; readonly endpoints: number },
): void {
  if (seen.services) metrics.serviceChangesTotal.inc(undefined, seen.services);
  if (seen.endpoints) metrics.endpointChangesTotal.inc(undefined, seen.endpoints);
  metrics.serviceChangesPending.set(undefined, pending.services);
  metrics.endpointChangesPending.set(undefined, pending.endpoints);
}

export interface SyncOutcome {
  /** When the sync started and ended, in ms since the epoch (from the Clock). */
  readonly startedMs: number;
  readonly endedMs: number;
  /** Whether the whole state was rewritten (otherwise a partial sync). */
  readonly full: boolean;
  /** What the backend reported. */
  readonly result?: SyncResult;
  /** Change trigger times (ms since epoch) of the endpoints this sync programmed. */
  readonly triggerTimes?: readonly number[];
}

/**
 * A sync succeeded: durations (overall and full/partial), the last-sync timestamp, network
 * programming latency per change trigger time, and per-table rule counts. `result.rules` counts the
 * rules written, which is the number owned after a full sync; a partial sync leaves the owned count
 * as the last full sync set it.
 */
export function recordSyncSuccess(metrics: KproxyMetrics, outcome: SyncOutcome): void {
  const seconds = Math.max(0, outcome.endedMs - outcome.startedMs) / 1000;
  metrics.syncProxyRulesDuration.observe(undefined, seconds);
  (outcome.full ? metrics.syncFullProxyRulesDuration : metrics.syncPartialProxyRulesDuration).observe(undefined, seconds);
  metrics.syncProxyRulesLastTimestamp.set(undefined, outcome.endedMs / 1000);
  for (const trigger of outcome.triggerTimes ?? []) {
    metrics.networkProgrammingDuration.observe(undefined, Math.max(0, outcome.endedMs - trigger) / 1000);
  }
  const rules = outcome.result?.rules;
  if (rules) {
    for (const [table, count] of Object.entries(rules)) {
      metrics.iptablesRulesLast.set({ table }, count);
      if (outcome.full) metrics.iptablesRulesTotal.set({ table }, count);
    }
  }
}

/** A sync failed; the caller logs why and the runner retries. */
export function recordSyncFailure(metrics: KproxyMetrics): void {
  metrics.syncFailuresTotal.inc();
}
