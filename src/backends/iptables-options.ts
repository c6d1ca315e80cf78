import { networkInterfaces } from "node:os";
import { type Config, cidrContains, effectiveDetectLocalMode } from "../config/index.ts";
import type { NodeInfo } from "../model/types.ts";
import { defaultRuleOptions, type RuleOptions } from "./iptables/options.ts";

/** This host's interface addresses; injectable so tests need no real interfaces. */
export type LocalAddresses = () => readonly string[];

export const hostAddresses: LocalAddresses = () =>
  Object.values(networkInterfaces())
    .flat()
    .flatMap((info) => (info ? [info.address.replace(/%.*$/, "")] : []));

/**
 * The addresses NodePorts answer on: "all" when nodePortAddresses is empty, otherwise this host's
 * addresses inside the listed CIDRs ("primary" stands for the node's own IPs, as upstream).
 */
export function resolveNodePortAddresses(
  nodePortAddresses: readonly string[],
  node: Pick<NodeInfo, "addresses">,
  localAddresses: LocalAddresses,
): "all" | readonly string[] {
  if (nodePortAddresses.length === 0) return "all";
  const wanted = new Set<string>();
  const local = localAddresses();
  for (const entry of nodePortAddresses) {
    if (entry === "primary") {
      for (const ip of node.addresses) wanted.add(ip);
      continue;
    }
    for (const ip of local) if (cidrContains(entry, ip)) wanted.add(ip);
  }
  return [...wanted];
}

/** The iptables rule options a configuration asks for, before per-sync facts about the node. */
export function ruleOptionsFromConfig(config: Config): RuleOptions {
  return {
    ...defaultRuleOptions,
    masqueradeAll: config.iptables.masqueradeAll,
    masqueradeBit: config.iptables.masqueradeBit,
    localhostNodePorts: config.iptables.localhostNodePorts,
    detectLocalMode: effectiveDetectLocalMode(config),
    clusterCIDRs: config.clusterCIDR === "" ? [] : config.clusterCIDR.split(",").map((c) => c.trim()),
    bridgeInterface: config.detectLocal.bridgeInterface,
    interfaceNamePrefix: config.detectLocal.interfaceNamePrefix,
    conntrackTCPLiberal: config.conntrack.tcpBeLiberal,
  };
}

/** Rule options for one sync: the configured ones plus what the node currently looks like. */
export function ruleOptionsForNode(
  base: RuleOptions,
  config: Pick<Config, "nodePortAddresses">,
  node: NodeInfo,
  localAddresses: LocalAddresses,
): RuleOptions {
  return {
    ...base,
    nodeIPs: node.addresses,
    nodePortAddresses: resolveNodePortAddresses(config.nodePortAddresses, node, localAddresses),
  };
}
