/**
 * Portal rules: the iptables nat rules that send service traffic to the userspace relays' local
 * ports, laid out as upstream's userspace proxier laid them out, so a node moving between the two
 * keeps one set of chains.
 *
 * - KUBE-PORTALS-CONTAINER (from PREROUTING, traffic arriving from pods and other hosts) and
 *   KUBE-PORTALS-HOST (from OUTPUT, traffic this host sends) match ClusterIP, externalIP and
 *   LoadBalancer IP with the service port.
 * - KUBE-NODEPORT-CONTAINER / KUBE-NODEPORT-HOST match any local address on the NodePort; their
 *   jumps come after the portal jumps (appended), so a portal IP never loses to a NodePort.
 * - filter KUBE-NODEPORT-NON-LOCAL accepts new connections to the relay port a NodePort lands on,
 *   for hosts whose INPUT policy drops by default.
 *
 * Container traffic is REDIRECTed when the relays listen on every address (the reply leaves from the
 * address the packet came in on, which keeps UDP answers matching); host traffic is DNATed to the
 * host's IP, because REDIRECT of locally generated packets goes to loopback and the answers would
 * come from elsewhere. A relay bound to one address is DNATed to in both cases.
 *
 * Pure: the whole text of these chains is rebuilt from the state each sync and written with
 * `iptables-restore --noflush`, which replaces exactly these chains and nothing else.
 */
import type { IPFamily } from "../../model/types.ts";
import type { RuleSpec } from "../../system/iptables.ts";

export const KUBE_PORTALS_CONTAINER = "KUBE-PORTALS-CONTAINER";
export const KUBE_PORTALS_HOST = "KUBE-PORTALS-HOST";
export const KUBE_NODEPORT_CONTAINER = "KUBE-NODEPORT-CONTAINER";
export const KUBE_NODEPORT_HOST = "KUBE-NODEPORT-HOST";
export const KUBE_NODEPORT_NON_LOCAL = "KUBE-NODEPORT-NON-LOCAL";

export const PORTAL_NAT_CHAINS = [KUBE_PORTALS_CONTAINER, KUBE_PORTALS_HOST, KUBE_NODEPORT_CONTAINER, KUBE_NODEPORT_HOST] as const;
export const PORTAL_FILTER_CHAINS = [KUBE_NODEPORT_NON_LOCAL] as const;

const PORTALS_COMMENT = "handle ClusterIPs; NOTE: this must be before the NodePort rules";
const NODEPORTS_COMMENT = "handle service NodePorts; NOTE: this must be the last rule in the chain";
const NON_LOCAL_COMMENT = "Ensure that non-local NodePort traffic can flow";
const DST_LOCAL = ["-m", "addrtype", "--dst-type", "LOCAL"] as const;

/**
 * The jumps from built-in chains, upstream's arguments and positions: the portal jumps first in
 * PREROUTING/OUTPUT, the NodePort jumps last, the non-local accept first in INPUT.
 */
export const PORTAL_JUMPS: readonly (RuleSpec & { readonly target: string })[] = [
  { table: "nat", chain: "PREROUTING", target: KUBE_PORTALS_CONTAINER, position: "prepend", args: ["-m", "comment", "--comment", PORTALS_COMMENT, "-j", KUBE_PORTALS_CONTAINER] },
  { table: "nat", chain: "OUTPUT", target: KUBE_PORTALS_HOST, position: "prepend", args: ["-m", "comment", "--comment", PORTALS_COMMENT, "-j", KUBE_PORTALS_HOST] },
  { table: "nat", chain: "PREROUTING", target: KUBE_NODEPORT_CONTAINER, position: "append", args: [...DST_LOCAL, "-m", "comment", "--comment", NODEPORTS_COMMENT, "-j", KUBE_NODEPORT_CONTAINER] },
  { table: "nat", chain: "OUTPUT", target: KUBE_NODEPORT_HOST, position: "append", args: [...DST_LOCAL, "-m", "comment", "--comment", NODEPORTS_COMMENT, "-j", KUBE_NODEPORT_HOST] },
  { table: "filter", chain: "INPUT", target: KUBE_NODEPORT_NON_LOCAL, position: "prepend", args: ["-m", "comment", "--comment", NON_LOCAL_COMMENT, "-j", KUBE_NODEPORT_NON_LOCAL] },
];

/** One service port as the portals see it: where its traffic comes in and which relay port takes it. */
export interface PortalTarget {
  /** Upstream's ServicePortName string (`ns/name:port`), the rules' comment. */
  readonly servicePortName: string;
  readonly protocol: "TCP" | "UDP";
  /** "" or "None" when the service has no ClusterIP. */
  readonly clusterIP: string;
  readonly port: number;
  readonly externalIPs: readonly string[];
  readonly loadBalancerIPs: readonly string[];
  /** 0 when none. */
  readonly nodePort: number;
  /** The relay port for cluster-internal traffic (the ClusterIP). */
  readonly proxyPort: number;
  /** The relay port for external traffic (externalIPs, LoadBalancer IPs, the NodePort); may equal proxyPort. */
  readonly externalProxyPort: number;
}

export interface PortalOptions {
  readonly family: IPFamily;
  /**
   * The relays' listen address: unspecified ("0.0.0.0" / "::") means REDIRECT for container traffic;
   * a specific address is DNATed to.
   */
  readonly listenIP: string;
  /** This host's address that host traffic is DNATed to when the relays listen on every address. */
  readonly hostIP: string;
}

export interface PortalRules {
  readonly text: string;
  readonly natRules: number;
  readonly filterRules: number;
}

function unspecified(ip: string): boolean {
  return ip === "0.0.0.0" || ip === "::" || ip === "";
}

function hostPort(ip: string, port: number): string {
  return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;
}

function cidr(ip: string): string {
  return ip.includes(":") ? `${ip}/128` : `${ip}/32`;
}

/** Upstream's common match: comment, protocol, port, then the optional destination and extra matches. */
function match(t: PortalTarget, port: number, destIP: string | undefined, notBridged: boolean, dstLocal: boolean): string {
  const proto = t.protocol.toLowerCase();
  let out = `-m comment --comment "${t.servicePortName}" -p ${proto} -m ${proto} --dport ${port}`;
  if (destIP !== undefined) out += ` -d ${cidr(destIP)}`;
  if (notBridged) out += " -m physdev ! --physdev-is-in";
  if (dstLocal) out += " -m addrtype --dst-type LOCAL";
  return out;
}

/** Builds the restore input for one IP family (targets of other families must be left out by the caller). */
export function portalRules(targets: readonly PortalTarget[], options: PortalOptions): PortalRules {
  const anyAddress = unspecified(options.listenIP);
  const containerJump = (proxyPort: number) =>
    anyAddress ? `-j REDIRECT --to-ports ${proxyPort}` : `-j DNAT --to-destination ${hostPort(options.listenIP, proxyPort)}`;
  const hostJump = (proxyPort: number) => `-j DNAT --to-destination ${hostPort(anyAddress ? options.hostIP : options.listenIP, proxyPort)}`;

  const containerPortals: string[] = [];
  const hostPortals: string[] = [];
  const containerNodePorts: string[] = [];
  const hostNodePorts: string[] = [];
  const nonLocal: string[] = [];
  const sorted = [...targets].sort((a, b) =>
    a.servicePortName === b.servicePortName ? a.protocol.localeCompare(b.protocol) : a.servicePortName < b.servicePortName ? -1 : 1,
  );
  for (const t of sorted) {
    if (t.clusterIP !== "" && t.clusterIP !== "None") {
      containerPortals.push(`-A ${KUBE_PORTALS_CONTAINER} ${match(t, t.port, t.clusterIP, false, false)} ${containerJump(t.proxyPort)}`);
      hostPortals.push(`-A ${KUBE_PORTALS_HOST} ${match(t, t.port, t.clusterIP, false, false)} ${hostJump(t.proxyPort)}`);
    }
    for (const ip of t.externalIPs) {
      // An externalIP may be routed to this host from outside, or bridged past it: only the former is
      // redirected from PREROUTING, plus anything addressed to it when it is one of ours.
      containerPortals.push(`-A ${KUBE_PORTALS_CONTAINER} ${match(t, t.port, ip, true, false)} ${containerJump(t.externalProxyPort)}`);
      containerPortals.push(`-A ${KUBE_PORTALS_CONTAINER} ${match(t, t.port, ip, false, true)} ${containerJump(t.externalProxyPort)}`);
      hostPortals.push(`-A ${KUBE_PORTALS_HOST} ${match(t, t.port, ip, false, true)} ${hostJump(t.externalProxyPort)}`);
    }
    for (const ip of t.loadBalancerIPs) {
      containerPortals.push(`-A ${KUBE_PORTALS_CONTAINER} ${match(t, t.port, ip, false, false)} ${containerJump(t.externalProxyPort)}`);
      hostPortals.push(`-A ${KUBE_PORTALS_HOST} ${match(t, t.port, ip, false, false)} ${hostJump(t.externalProxyPort)}`);
    }
    if (t.nodePort !== 0) {
      containerNodePorts.push(`-A ${KUBE_NODEPORT_CONTAINER} ${match(t, t.nodePort, undefined, false, false)} ${containerJump(t.externalProxyPort)}`);
      hostNodePorts.push(`-A ${KUBE_NODEPORT_HOST} ${match(t, t.nodePort, undefined, false, false)} ${hostJump(t.externalProxyPort)}`);
      // After the NAT above, INPUT sees the relay port.
      nonLocal.push(`-A ${KUBE_NODEPORT_NON_LOCAL} ${match(t, t.externalProxyPort, undefined, false, false)} -m state --state NEW -j ACCEPT`);
    }
  }
  const nat = [...containerPortals, ...hostPortals, ...containerNodePorts, ...hostNodePorts];
  const lines = ["*nat", ...PORTAL_NAT_CHAINS.map((c) => `:${c} - [0:0]`), ...nat, "COMMIT", "*filter", ...PORTAL_FILTER_CHAINS.map((c) => `:${c} - [0:0]`), ...nonLocal, "COMMIT", ""];
  return { text: lines.join("\n"), natRules: nat.length, filterRules: nonLocal.length };
}
