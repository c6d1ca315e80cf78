/** What kproxy keeps of its own Node object. */
import { ipFamilyOf } from "./ip.ts";
import type { NodeObject } from "./objects.ts";
import type { NodeInfo } from "./types.ts";

export const ZONE_LABEL = "topology.kubernetes.io/zone";

/** The node as known before its Node object arrives (or after it is deleted: not eligible). */
export function unknownNode(name: string, eligible = true): NodeInfo {
  return { name, labels: {}, zone: "", podCIDRs: [], addresses: [], eligible };
}

export function nodeInfoOf(node: NodeObject): NodeInfo {
  const labels: Record<string, string> = { ...(node.metadata.labels ?? {}) };
  const cidrs = node.spec?.podCIDRs?.length ? [...node.spec.podCIDRs] : node.spec?.podCIDR ? [node.spec.podCIDR] : [];
  const all = node.status?.addresses ?? [];
  const addresses: string[] = [];
  for (const type of ["InternalIP", "ExternalIP"]) {
    for (const a of all) if (a.type === type && ipFamilyOf(a.address) && !addresses.includes(a.address)) addresses.push(a.address);
  }
  return {
    name: node.metadata.name,
    labels,
    zone: labels[ZONE_LABEL] ?? "",
    podCIDRs: cidrs,
    addresses,
    eligible: !node.metadata.deletionTimestamp,
  };
}

function sameStrings(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

export function sameNodeInfo(a: NodeInfo, b: NodeInfo): boolean {
  if (a.name !== b.name || a.zone !== b.zone || a.eligible !== b.eligible) return false;
  if (!sameStrings(a.podCIDRs, b.podCIDRs) || !sameStrings(a.addresses, b.addresses)) return false;
  const ak = Object.keys(a.labels);
  if (ak.length !== Object.keys(b.labels).length) return false;
  return ak.every((k) => a.labels[k] === b.labels[k]);
}
