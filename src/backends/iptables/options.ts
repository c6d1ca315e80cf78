/**
 * What rule generation needs to know besides the snapshot: the proxier settings of upstream's
 * iptables mode, as one plain object that configuration maps onto (see `defaultRuleOptions`).
 */
import type { IPFamily, NodeInfo } from "../../model/types.ts";
import { familyOf } from "./ip.ts";

/** How traffic from this node's pods is told apart (upstream `detectLocalMode`). */
export type DetectLocalMode = "ClusterCIDR" | "NodeCIDR" | "BridgeInterface" | "InterfaceNamePrefix";

export interface RuleOptions {
  /** SNAT every packet sent to a ClusterIP. */
  readonly masqueradeAll: boolean;
  /** Bit of the fwmark that flags packets for SNAT; the mark is `1 << masqueradeBit`. */
  readonly masqueradeBit: number;
  readonly detectLocalMode: DetectLocalMode;
  /** Pod network CIDRs of any family (`clusterCIDR` split on commas); the first of the generated family is used. */
  readonly clusterCIDRs: readonly string[];
  /** For `BridgeInterface`: the pods' bridge. */
  readonly bridgeInterface: string;
  /** For `InterfaceNamePrefix`: prefix of the pods' interfaces (e.g. `veth`). */
  readonly interfaceNamePrefix: string;
  /**
   * Whether NodePorts answer on 127.0.0.0/8 (IPv4 only; needs `route_localnet=1`). Ignored when
   * `nodePortAddresses` contains no IPv4 loopback address.
   */
  readonly localhostNodePorts: boolean;
  /** `"all"` for every local address, or this node's addresses selected by `--nodeport-addresses`. */
  readonly nodePortAddresses: "all" | readonly string[];
  /** This node's IPs (any family); the first of the generated family decides LB source-range self access. */
  readonly nodeIPs: readonly string[];
  /** The iptables binary supports `MASQUERADE --random-fully`. */
  readonly randomFully: boolean;
  /** `nf_conntrack_tcp_be_liberal` is set, so INVALID packets need not be dropped. */
  readonly conntrackTCPLiberal: boolean;
  /** nfacct counters that exist on this host; rules count into them when present. */
  readonly nfacctCounters: {
    readonly ctStateInvalidDropped: boolean;
    readonly localhostNodePortsAccepted: boolean;
  };
  /**
   * Above this many endpoints in total, per-endpoint rules carry no comments (upstream's "large
   * cluster mode"; it shrinks the restore input by ~40%).
   */
  readonly largeClusterEndpointsThreshold: number;
}

export const defaultRuleOptions: RuleOptions = {
  masqueradeAll: false,
  masqueradeBit: 14,
  detectLocalMode: "ClusterCIDR",
  clusterCIDRs: [],
  bridgeInterface: "",
  interfaceNamePrefix: "",
  localhostNodePorts: true,
  nodePortAddresses: "all",
  nodeIPs: [],
  randomFully: false,
  conntrackTCPLiberal: false,
  nfacctCounters: { ctStateInvalidDropped: false, localhostNodePortsAccepted: false },
  largeClusterEndpointsThreshold: 1000,
};

/** The fwmark value as upstream prints it in rules (`0x4000` for bit 14). */
export function masqueradeMark(bit: number): string {
  return `0x${(2 ** bit).toString(16)}`;
}

/** Match arguments that select pod traffic, and their negation; undefined when local traffic cannot be detected. */
export interface LocalTrafficMatch {
  readonly ifLocal: string;
  readonly ifNotLocal: string;
}

export function localTrafficMatch(
  options: RuleOptions,
  family: IPFamily,
  node: NodeInfo,
): LocalTrafficMatch | undefined {
  const firstOfFamily = (cidrs: readonly string[]): string | undefined =>
    cidrs.map((c) => c.trim()).find((c) => c !== "" && familyOf(c) === family);
  switch (options.detectLocalMode) {
    case "ClusterCIDR": {
      const cidr = firstOfFamily(options.clusterCIDRs);
      return cidr === undefined ? undefined : { ifLocal: `-s ${cidr}`, ifNotLocal: `! -s ${cidr}` };
    }
    case "NodeCIDR": {
      const cidr = firstOfFamily(node.podCIDRs);
      return cidr === undefined ? undefined : { ifLocal: `-s ${cidr}`, ifNotLocal: `! -s ${cidr}` };
    }
    case "BridgeInterface": {
      const name = options.bridgeInterface;
      return name === "" ? undefined : { ifLocal: `-i ${name}`, ifNotLocal: `! -i ${name}` };
    }
    case "InterfaceNamePrefix": {
      const prefix = options.interfaceNamePrefix;
      return prefix === "" ? undefined : { ifLocal: `-i ${prefix}+`, ifNotLocal: `! -i ${prefix}+` };
    }
  }
}

/** Field-by-field equality (arrays and nested records by value), for options rebuilt on every sync. */
export function sameRuleOptions(a: RuleOptions, b: RuleOptions): boolean {
  return a === b || sameValue(a, b);
}

function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  const ra = a as Record<string, unknown>;
  const rb = b as Record<string, unknown>;
  for (const k of ka) if (!Object.hasOwn(rb, k) || !sameValue(ra[k], rb[k])) return false;
  return true;
}
