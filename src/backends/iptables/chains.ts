/**
 * Top-level chain names and the jump rules from built-in chains into them. The jumps cannot be part
 * of the iptables-restore input (that would mean owning all of PREROUTING, INPUT, ...), so the apply
 * path ensures each one on its own: check with `iptables -t <table> -C <chain> <args>`, insert with
 * `-I <chain> <args>` only when missing. Names, comments and arguments are upstream's, so a node
 * switching between kube-proxy and kproxy keeps exactly one copy of each jump.
 */

export const KUBE_SERVICES = "KUBE-SERVICES";
export const KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES";
export const KUBE_NODEPORTS = "KUBE-NODEPORTS";
export const KUBE_POSTROUTING = "KUBE-POSTROUTING";
export const KUBE_MARK_MASQ = "KUBE-MARK-MASQ";
export const KUBE_FORWARD = "KUBE-FORWARD";
export const KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL";
/** kubelet's chain; kproxy fills in the anti-martian rule when localhost NodePorts are enabled, as upstream does. */
export const KUBE_FIREWALL = "KUBE-FIREWALL";

/**
 * Empty chain whose disappearance means someone flushed the tables, which calls for a full sync. It
 * is created with `iptables -t <table> -N KUBE-PROXY-CANARY` in each of `CANARY_TABLES`, outside the
 * restore input (a restore would recreate it and hide the flush).
 */
export const KUBE_PROXY_CANARY = "KUBE-PROXY-CANARY";
export const CANARY_TABLES = ["mangle", "nat", "filter"] as const;

export type Table = "filter" | "nat" | "mangle";

export interface JumpRule {
  readonly table: Table;
  /** Built-in chain the jump lives in. */
  readonly chain: string;
  /** Our chain it jumps to; must exist (`-N`) before the jump is inserted. */
  readonly target: string;
  /** Rule arguments after the chain name, ending in `-j <target>`. */
  readonly args: readonly string[];
}

const NEW_ONLY = ["-m", "conntrack", "--ctstate", "NEW"] as const;

function jump(
  table: Table,
  target: string,
  chain: string,
  comment: string,
  extraArgs: readonly string[] = [],
): JumpRule {
  const args = [...extraArgs];
  if (comment !== "") args.push("-m", "comment", "--comment", comment);
  args.push("-j", target);
  return { table, chain, target, args };
}

/** Upstream's jump rules, in upstream's order (each is inserted at position 1). */
export const JUMP_RULES: readonly JumpRule[] = [
  jump("filter", KUBE_EXTERNAL_SERVICES, "INPUT", "kubernetes externally-visible service portals", NEW_ONLY),
  jump("filter", KUBE_EXTERNAL_SERVICES, "FORWARD", "kubernetes externally-visible service portals", NEW_ONLY),
  jump("filter", KUBE_NODEPORTS, "INPUT", "kubernetes health check service ports"),
  jump("filter", KUBE_SERVICES, "FORWARD", "kubernetes service portals", NEW_ONLY),
  jump("filter", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", NEW_ONLY),
  jump("filter", KUBE_FORWARD, "FORWARD", "kubernetes forwarding rules"),
  jump("filter", KUBE_PROXY_FIREWALL, "INPUT", "kubernetes load balancer firewall", NEW_ONLY),
  jump("filter", KUBE_PROXY_FIREWALL, "OUTPUT", "kubernetes load balancer firewall", NEW_ONLY),
  jump("filter", KUBE_PROXY_FIREWALL, "FORWARD", "kubernetes load balancer firewall", NEW_ONLY),
  jump("nat", KUBE_SERVICES, "OUTPUT", "kubernetes service portals"),
  jump("nat", KUBE_SERVICES, "PREROUTING", "kubernetes service portals"),
  jump("nat", KUBE_POSTROUTING, "POSTROUTING", "kubernetes postrouting rules"),
];

/**
 * Jumps into kubelet's KUBE-FIREWALL chain (no comment, as kubelet writes them). Upstream ensures
 * these too but, unlike `JUMP_RULES`, never removes them on cleanup: kubelet owns them.
 */
export const KUBELET_JUMP_RULES: readonly JumpRule[] = [
  jump("filter", KUBE_FIREWALL, "INPUT", ""),
  jump("filter", KUBE_FIREWALL, "OUTPUT", ""),
];

/** Top-level chains declared (and so flushed and rewritten) by every restore, full or partial. */
export const FILTER_TOP_LEVEL_CHAINS = [
  KUBE_SERVICES,
  KUBE_EXTERNAL_SERVICES,
  KUBE_FORWARD,
  KUBE_NODEPORTS,
  KUBE_PROXY_FIREWALL,
] as const;
export const NAT_TOP_LEVEL_CHAINS = [KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ] as const;

/** The `iptables-restore` line that declares (and flushes) a chain. */
export function chainLine(chain: string): string {
  return `:${chain} - [0:0]`;
}
