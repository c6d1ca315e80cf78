/**
 * The effective configuration back in upstream's document form: durations as Go strings, empty
 * lists as null and keys sorted, as upstream's own `--write-config-to` prints them. Used by
 * `--write-config-to` (YAML) and `/configz` (JSON).
 */
import { writeFileSync } from "node:fs";
import { stringify } from "yaml";
import { formatDuration as d } from "./duration.ts";
import { API_GROUP, type Config } from "./schema.ts";
import { GO_YAML_OPTIONS } from "./yaml-dialect.ts";

type Doc = Record<string, unknown>;

const listOrNull = (list: readonly string[]): readonly string[] | null => (list.length === 0 ? null : list);

function formatOptions(options: Config["logging"]["options"]["text"]): Doc {
  // splitStream is omitted while false, as upstream does.
  return options.splitStream ? { infoBufferSize: options.infoBufferSize, splitStream: true } : { infoBufferSize: options.infoBufferSize };
}

/** Upstream form of `config` (what a KubeProxyConfiguration YAML file holds). */
export function configToObject(config: Config): Doc {
  const c = config;
  const doc: Doc = {
    apiVersion: c.apiVersion,
    kind: c.kind,
    bindAddress: c.bindAddress,
    bindAddressHardFail: c.bindAddressHardFail,
    clientConnection: { ...c.clientConnection },
    clusterCIDR: c.clusterCIDR,
    configSyncPeriod: d(c.configSyncPeriod),
    conntrack: {
      maxPerCore: c.conntrack.maxPerCore,
      min: c.conntrack.min,
      tcpBeLiberal: c.conntrack.tcpBeLiberal,
      tcpCloseWaitTimeout: d(c.conntrack.tcpCloseWaitTimeout),
      tcpEstablishedTimeout: d(c.conntrack.tcpEstablishedTimeout),
      udpStreamTimeout: d(c.conntrack.udpStreamTimeout),
      udpTimeout: d(c.conntrack.udpTimeout),
    },
    detectLocal: { ...c.detectLocal },
    detectLocalMode: c.detectLocalMode,
    enableProfiling: c.enableProfiling,
    healthzBindAddress: c.healthzBindAddress,
    hostnameOverride: c.hostnameOverride,
    iptables: {
      ...c.iptables,
      syncPeriod: d(c.iptables.syncPeriod),
      minSyncPeriod: d(c.iptables.minSyncPeriod),
    },
    ipvs: {
      ...c.ipvs,
      excludeCIDRs: listOrNull(c.ipvs.excludeCIDRs),
      syncPeriod: d(c.ipvs.syncPeriod),
      minSyncPeriod: d(c.ipvs.minSyncPeriod),
      tcpTimeout: d(c.ipvs.tcpTimeout),
      tcpFinTimeout: d(c.ipvs.tcpFinTimeout),
      udpTimeout: d(c.ipvs.udpTimeout),
    },
    logging: {
      flushFrequency: d(c.logging.flushFrequency),
      format: c.logging.format,
      options: { json: formatOptions(c.logging.options.json), text: formatOptions(c.logging.options.text) },
      verbosity: c.logging.verbosity,
      ...(c.logging.vmodule.length > 0 ? { vmodule: c.logging.vmodule.map((m) => ({ ...m })) } : {}),
    },
    metricsBindAddress: c.metricsBindAddress,
    mode: c.mode,
    nftables: {
      ...c.nftables,
      syncPeriod: d(c.nftables.syncPeriod),
      minSyncPeriod: d(c.nftables.minSyncPeriod),
    },
    nodePortAddresses: listOrNull(c.nodePortAddresses),
    oomScoreAdj: c.oomScoreAdj,
    portRange: c.portRange,
    showHiddenMetricsForVersion: c.showHiddenMetricsForVersion,
    udpIdleTimeout: d(c.udpIdleTimeout),
    winkernel: { ...c.winkernel },
  };
  // omitempty fields upstream leaves out while empty.
  if (Object.keys(c.featureGates).length > 0) doc["featureGates"] = { ...c.featureGates };
  if (c.windowsRunAsService) doc["windowsRunAsService"] = true;
  return doc;
}

/** YAML for `--write-config-to`: keys sorted, loadable again by kproxy and by upstream kube-proxy. */
export function configToYAML(config: Config): string {
  return stringify(configToObject(config), { ...GO_YAML_OPTIONS, sortMapEntries: true, lineWidth: 0 });
}

/** The `/configz` body: upstream serves `{"kubeproxy.config.k8s.io": {...}}` without apiVersion/kind. */
export function configzObject(config: Config): Doc {
  const { apiVersion: _apiVersion, kind: _kind, ...rest } = configToObject(config);
  return { [API_GROUP]: sortKeys(rest) };
}

export function configToJSON(config: Config): string {
  return JSON.stringify(configzObject(config));
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value === null || typeof value !== "object") return value;
  const out: Doc = {};
  for (const key of Object.keys(value).sort()) out[key] = sortKeys((value as Doc)[key]);
  return out;
}

export type WriteTextFile = (path: string, text: string) => void;

export const writeTextFileSync: WriteTextFile = (path, text) => writeFileSync(path, text, { mode: 0o644 });

/** `--write-config-to`: the effective configuration with every default filled in. */
export function writeConfigFile(path: string, config: Config, write: WriteTextFile = writeTextFileSync): void {
  write(path, configToYAML(config));
}
