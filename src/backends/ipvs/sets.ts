/**
 * The ipsets of the ipvs mode, with upstream kube-proxy's names, types and comments. The comments
 * appear in the iptables rules that match the sets (upstream creates the sets without comments).
 * IPv6 sets are named `KUBE-6-…` so both families coexist; an ipset name has at most 31 characters.
 */
import type { IPFamily } from "../../model/types.ts";
import { DEFAULT_HASH_OPTIONS, type Ipset } from "../../system/ipset.ts";

export const SET = {
  loopBack: "KUBE-LOOP-BACK",
  clusterIP: "KUBE-CLUSTER-IP",
  externalIP: "KUBE-EXTERNAL-IP",
  externalIPLocal: "KUBE-EXTERNAL-IP-LOCAL",
  loadBalancer: "KUBE-LOAD-BALANCER",
  loadBalancerFW: "KUBE-LOAD-BALANCER-FW",
  loadBalancerLocal: "KUBE-LOAD-BALANCER-LOCAL",
  loadBalancerSourceIP: "KUBE-LOAD-BALANCER-SOURCE-IP",
  loadBalancerSourceCIDR: "KUBE-LOAD-BALANCER-SOURCE-CIDR",
  nodePortTCP: "KUBE-NODE-PORT-TCP",
  nodePortLocalTCP: "KUBE-NODE-PORT-LOCAL-TCP",
  nodePortUDP: "KUBE-NODE-PORT-UDP",
  nodePortLocalUDP: "KUBE-NODE-PORT-LOCAL-UDP",
  nodePortSCTP: "KUBE-NODE-PORT-SCTP-HASH",
  nodePortLocalSCTP: "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
  healthCheckNodePort: "KUBE-HEALTH-CHECK-NODE-PORT",
  ipvsIPs: "KUBE-IPVS-IPS",
} as const;

export type SetId = keyof typeof SET;

export interface SetInfo {
  readonly id: SetId;
  readonly type: "hash:ip" | "hash:ip,port" | "hash:ip,port,ip" | "hash:ip,port,net" | "bitmap:port";
  readonly comment: string;
}

/** Every set, in upstream's order. */
export const SET_INFO: readonly SetInfo[] = [
  { id: "loopBack", type: "hash:ip,port,ip", comment: "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" },
  { id: "clusterIP", type: "hash:ip,port", comment: "Kubernetes service cluster ip + port for masquerade purpose" },
  { id: "externalIP", type: "hash:ip,port", comment: "Kubernetes service external ip + port for masquerade and filter purpose" },
  { id: "externalIPLocal", type: "hash:ip,port", comment: "Kubernetes service external ip + port with externalTrafficPolicy=local" },
  { id: "loadBalancer", type: "hash:ip,port", comment: "Kubernetes service lb portal" },
  { id: "loadBalancerFW", type: "hash:ip,port", comment: "Kubernetes service load balancer ip + port for load balancer with sourceRange" },
  { id: "loadBalancerLocal", type: "hash:ip,port", comment: "Kubernetes service load balancer ip + port with externalTrafficPolicy=local" },
  { id: "loadBalancerSourceIP", type: "hash:ip,port,ip", comment: "Kubernetes service load balancer ip + port + source IP for packet filter purpose" },
  { id: "loadBalancerSourceCIDR", type: "hash:ip,port,net", comment: "Kubernetes service load balancer ip + port + source cidr for packet filter purpose" },
  { id: "nodePortTCP", type: "bitmap:port", comment: "Kubernetes nodeport TCP port for masquerade purpose" },
  { id: "nodePortLocalTCP", type: "bitmap:port", comment: "Kubernetes nodeport TCP port with externalTrafficPolicy=local" },
  { id: "nodePortUDP", type: "bitmap:port", comment: "Kubernetes nodeport UDP port for masquerade purpose" },
  { id: "nodePortLocalUDP", type: "bitmap:port", comment: "Kubernetes nodeport UDP port with externalTrafficPolicy=local" },
  { id: "nodePortSCTP", type: "hash:ip,port", comment: "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'" },
  { id: "nodePortLocalSCTP", type: "hash:ip,port", comment: "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'" },
  { id: "healthCheckNodePort", type: "bitmap:port", comment: "Kubernetes health check node port" },
  { id: "ipvsIPs", type: "hash:ip", comment: "Addresses on the ipvs interface" },
];

const INFO_BY_ID = new Map(SET_INFO.map((s) => [s.id, s]));

export function setInfo(id: SetId): SetInfo {
  return INFO_BY_ID.get(id) as SetInfo;
}

/** The kernel name of a set for a family (`KUBE-6-CLUSTER-IP` for IPv6). */
export function setName(id: SetId, family: IPFamily): string {
  const base = SET[id];
  if (family === "IPv4") return base;
  return `KUBE-6-${base.slice("KUBE-".length)}`.slice(0, 31);
}

const OWNED = new Set<string>(SET_INFO.flatMap((s) => [setName(s.id, "IPv4"), setName(s.id, "IPv6")]));

/** Whether kproxy's ipvs mode owns (creates, flushes, destroys) a set of this name. */
export function isOwnedSet(name: string): boolean {
  return OWNED.has(name);
}

/** The definition of one set for `ipset restore`, with the given members. */
export function setDefinition(id: SetId, family: IPFamily, entries: readonly string[]): Ipset {
  const info = setInfo(id);
  if (info.type === "bitmap:port") return { name: setName(id, family), type: info.type, options: ["range 0-65535"], entries };
  return {
    name: setName(id, family),
    type: info.type,
    family: family === "IPv6" ? "inet6" : "inet",
    options: DEFAULT_HASH_OPTIONS,
    entries,
  };
}

/** Members as `ipset save` prints them, so wanted and kernel entries compare as text. */
export const entry = {
  ipPort: (ip: string, protocol: string, port: number): string => `${ip},${protocol}:${port}`,
  ipPortIP: (ip: string, protocol: string, port: number, ip2: string): string => `${ip},${protocol}:${port},${ip2}`,
  ipPortNet: (ip: string, protocol: string, port: number, net: string): string => `${ip},${protocol}:${port},${net}`,
  port: (port: number): string => String(port),
};
