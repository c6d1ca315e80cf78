/**
 * The iptables-restore input for one IP family, as a pure function of a snapshot: the same chains,
 * rules, order and comments as upstream kube-proxy's iptables mode, so the two can replace each other
 * on a node. Written for speed (10,000 service ports × 5 endpoints well under 150 ms): lines are
 * template strings pushed onto arrays and joined once.
 *
 * A partial generation (`changed` given) still rewrites every top-level chain (they are flushed by
 * their `:CHAIN` line), but declares and fills the per-service chains only of changed service ports;
 * the others stay in the kernel untouched. Stale per-service chains among `existingChains` are
 * flushed and deleted with `-X` in both modes.
 */
import {
  categorizeEndpoints,
  externallyAccessible as isExternallyAccessible,
  usesClusterEndpoints as portUsesClusterEndpoints,
  usesLocalEndpoints as portUsesLocalEndpoints,
} from "../../model/topology.ts";
import type { Endpoint, IPFamily, NodeInfo, ServicePort, Snapshot } from "../../model/types.ts";
import {
  chainLine,
  FILTER_TOP_LEVEL_CHAINS,
  KUBE_EXTERNAL_SERVICES,
  KUBE_FIREWALL,
  KUBE_FORWARD,
  KUBE_MARK_MASQ,
  KUBE_NODEPORTS,
  KUBE_POSTROUTING,
  KUBE_PROXY_FIREWALL,
  KUBE_SERVICES,
  NAT_TOP_LEVEL_CHAINS,
} from "./chains.ts";
import { chainsOfServicePort, endpointNames, isServiceChainName } from "./hash.ts";
import { cidrContains, familyOf, isLoopback } from "./ip.ts";
import { LineBuffer } from "./lines.ts";
import { localTrafficMatch, masqueradeMark, type RuleOptions } from "./options.ts";

/** Upstream's CategorizeEndpoints result: which endpoints each traffic policy may use from this node. */
export interface CategorizedEndpoints {
  readonly clusterEndpoints: readonly Endpoint[];
  readonly localEndpoints: readonly Endpoint[];
  /** Union of the two lists: every endpoint some rule of this service port can reach. */
  readonly allReachableEndpoints: readonly Endpoint[];
  /** The service port has usable endpoints on some node (not necessarily this one). */
  readonly hasAnyEndpoints: boolean;
}

export type CategorizeEndpoints = (
  svcPort: ServicePort,
  endpoints: readonly Endpoint[],
  node: NodeInfo,
) => CategorizedEndpoints;

export interface GenerateContext {
  /** Endpoint selection; the model's `categorizeEndpoints` (upstream's CategorizeEndpoints) unless given. */
  readonly categorize?: CategorizeEndpoints;
  /**
   * Partial generation: keys of the service ports whose own chains must be rewritten (changed or
   * removed). Absent for a full generation.
   */
  readonly changed?: ReadonlySet<string>;
  /** Chains now in the nat table (from iptables-save); those no longer wanted are deleted. */
  readonly existingChains?: Iterable<string>;
}

export interface RuleCounts {
  /** Service ports of this family with rules. */
  readonly servicePorts: number;
  /** Endpoints of those service ports, usable or not (this decides large-cluster mode). */
  readonly endpoints: number;
  readonly filterChains: number;
  readonly filterRules: number;
  /** Chain lines written to nat, including those of chains about to be deleted. */
  readonly natChains: number;
  /** `-A` lines written to nat. */
  readonly natRules: number;
  /** `-A` lines nat holds after the restore: written ones plus those of unchanged chains left in place. */
  readonly natRulesTotal: number;
  readonly deletedChains: number;
  /** Service ports with internal / external traffic policy Local and endpoints, but none on this node. */
  readonly noLocalEndpointsInternal: number;
  readonly noLocalEndpointsExternal: number;
  readonly largeClusterMode: boolean;
}

export interface GeneratedRules {
  /** Complete iptables-restore input (`*filter ... COMMIT` then `*nat ... COMMIT`), for `--noflush`. */
  readonly text: string;
  /** Per-service chains that exist after this restore, whether written now or left in place. */
  readonly activeNatChains: ReadonlySet<string>;
  /** Per-service chains this restore deletes. */
  readonly deletedChains: readonly string[];
  readonly counts: RuleCounts;
  readonly partial: boolean;
}

const INVALID_DROPPED_COUNTER = "ct_state_invalid_dropped_pkts";
const LOCALHOST_NODEPORTS_COUNTER = "localhost_nps_accepted_pkts";
const NODEPORTS_JUMP_COMMENT = `"kubernetes service nodeports; NOTE: this must be the last rule in this chain"`;
const NO_ENDPOINTS: readonly Endpoint[] = [];
const LOWER_PROTOCOL = { TCP: "tcp", UDP: "udp", SCTP: "sctp" } as const;

const probabilities: string[] = [];

/** `1/n` printed as Go's `%0.10f` does: correctly rounded, ties to even. */
export function probability(n: number): string {
  let p = probabilities[n];
  if (p === undefined) {
    p = formatProbability(n);
    probabilities[n] = p;
  }
  return p;
}

function formatProbability(n: number): string {
  const x = 1 / n;
  const fixed = x.toFixed(10);
  // toFixed breaks exact ties upwards; 1/n is an exact decimal tie at 10 places only for powers of two.
  if ((n & (n - 1)) !== 0) return fixed;
  const k = Math.log2(n);
  if (k <= 10) return fixed;
  const digits = (5n ** BigInt(k)).toString().padStart(k, "0"); // 1/2^k = 5^k / 10^k
  const kept = BigInt(digits.slice(0, 10) || "0");
  const rest = digits.slice(10);
  const half = "5".padEnd(rest.length, "0");
  const roundUp = rest > half || (rest === half && kept % 2n === 1n);
  return `0.${(roundUp ? kept + 1n : kept).toString().padStart(10, "0")}`;
}

export function generateRules(
  snapshot: Snapshot,
  family: IPFamily,
  options: RuleOptions,
  context: GenerateContext = {},
): GeneratedRules {
  const { categorize = categorizeEndpoints, changed, existingChains } = context;
  const node = snapshot.node;
  const isIPv6 = family === "IPv6";
  const mark = masqueradeMark(options.masqueradeBit);
  const local = localTrafficMatch(options, family, node);
  const nodeIP = options.nodeIPs.find((ip) => familyOf(ip) === family);
  const nodePortAddresses =
    options.nodePortAddresses === "all"
      ? "all"
      : options.nodePortAddresses.filter((ip) => familyOf(ip) === family);
  const localhostNodePorts =
    !isIPv6 &&
    options.localhostNodePorts &&
    (nodePortAddresses === "all" || nodePortAddresses.some((ip) => isLoopback(ip)));
  const countLocalhostNodePorts = localhostNodePorts && options.nfacctCounters.localhostNodePortsAccepted;

  const filterChains = new LineBuffer();
  const filterRules = new LineBuffer();
  const natChains = new LineBuffer();
  const natRules = new LineBuffer();
  const active = new Set<string>();
  let skippedRules = 0;

  for (const chain of FILTER_TOP_LEVEL_CHAINS) filterChains.add(chainLine(chain));
  for (const chain of NAT_TOP_LEVEL_CHAINS) natChains.add(chainLine(chain));

  natRules.add(`-A ${KUBE_POSTROUTING} -m mark ! --mark ${mark}/${mark} -j RETURN`);
  // Clearing the mark keeps a packet that goes through the stack again from being masqueraded twice.
  natRules.add(`-A ${KUBE_POSTROUTING} -j MARK --xor-mark ${mark}`);
  natRules.add(
    `-A ${KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE${
      options.randomFully ? " --random-fully" : ""
    }`,
  );
  natRules.add(`-A ${KUBE_MARK_MASQ} -j MARK --or-mark ${mark}`);

  if (localhostNodePorts) {
    // route_localnet opens 127.0.0.0/8 to the network; this is the rule (shared with kubelet) that closes it again.
    filterChains.add(chainLine(KUBE_FIREWALL));
    filterRules.add(
      `-A ${KUBE_FIREWALL} -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`,
    );
  }

  let totalEndpoints = 0;
  for (const sp of snapshot.services.values()) {
    if (sp.family === family) totalEndpoints += snapshot.endpoints.get(sp.key)?.length ?? 0;
  }
  const largeClusterMode = totalEndpoints > options.largeClusterEndpointsThreshold;

  let servicePorts = 0;
  let noLocalEndpointsInternal = 0;
  let noLocalEndpointsExternal = 0;

  for (const sp of snapshot.services.values()) {
    if (sp.family !== family || sp.clusterIP === "" || sp.clusterIP === "None") continue;
    servicePorts++;
    const name = sp.servicePortName;
    const proto = LOWER_PROTOCOL[sp.protocol];
    const match = `-m ${proto} -p ${proto}`;
    const chains = chainsOfServicePort(sp);
    const endpoints = snapshot.endpoints.get(sp.key) ?? NO_ENDPOINTS;
    const { clusterEndpoints, localEndpoints, allReachableEndpoints, hasAnyEndpoints } = categorize(
      sp,
      endpoints,
      node,
    );

    const externallyAccessible = isExternallyAccessible(sp);
    const externalPolicyLocal = sp.externalPolicyLocal && externallyAccessible;
    const internalPolicyLocal = sp.internalPolicyLocal;
    // External traffic needs the Cluster chain even with a Local policy: pods and the node short-circuit to it.
    const usesClusterEndpoints = portUsesClusterEndpoints(sp);
    const usesLocalEndpoints = portUsesLocalEndpoints(sp);
    const usesClusterPolicyChain = clusterEndpoints.length > 0 && usesClusterEndpoints;
    const usesLocalPolicyChain = localEndpoints.length > 0 && usesLocalEndpoints;

    const internalTrafficChain = internalPolicyLocal ? chains.local : chains.cluster;
    const hasInternalEndpoints = hasAnyEndpoints && (!internalPolicyLocal || localEndpoints.length > 0);
    const externalPolicyChain = externalPolicyLocal ? chains.local : chains.cluster;
    const hasExternalEndpoints = hasAnyEndpoints && (!externalPolicyLocal || localEndpoints.length > 0);
    const externalTrafficChain = chains.external;
    const usesExternalTrafficChain = hasAnyEndpoints && externallyAccessible;
    const usesFirewallChain =
      hasAnyEndpoints && sp.loadBalancerIPs.length > 0 && sp.loadBalancerSourceRanges.length > 0;
    const loadBalancerTrafficChain = usesFirewallChain ? chains.firewall : externalTrafficChain;

    let internalFilterTarget = "";
    let internalFilterComment = "";
    let externalFilterTarget = "";
    let externalFilterComment = "";
    if (!hasAnyEndpoints) {
      internalFilterTarget = externalFilterTarget = "REJECT";
      internalFilterComment = externalFilterComment = `"${name} has no endpoints"`;
    } else {
      if (!hasInternalEndpoints) {
        internalFilterTarget = "DROP";
        internalFilterComment = `"${name} has no local endpoints"`;
        noLocalEndpointsInternal++;
      }
      if (!hasExternalEndpoints) {
        externalFilterTarget = "DROP";
        externalFilterComment = `"${name} has no local endpoints"`;
        noLocalEndpointsExternal++;
      }
    }

    const port = sp.port;
    if (hasInternalEndpoints) {
      natRules.add(
        `-A ${KUBE_SERVICES} -m comment --comment "${name} cluster IP" ${match} -d ${sp.clusterIP} --dport ${port} -j ${internalTrafficChain}`,
      );
    } else {
      filterRules.add(
        `-A ${KUBE_SERVICES} -m comment --comment ${internalFilterComment} ${match} -d ${sp.clusterIP} --dport ${port} -j ${internalFilterTarget}`,
      );
    }

    for (const externalIP of sp.externalIPs) {
      if (hasAnyEndpoints) {
        natRules.add(
          `-A ${KUBE_SERVICES} -m comment --comment "${name} external IP" ${match} -d ${externalIP} --dport ${port} -j ${externalTrafficChain}`,
        );
      }
      if (!hasExternalEndpoints) {
        filterRules.add(
          `-A ${KUBE_EXTERNAL_SERVICES} -m comment --comment ${externalFilterComment} ${match} -d ${externalIP} --dport ${port} -j ${externalFilterTarget}`,
        );
      }
    }

    for (const lbIP of sp.loadBalancerIPs) {
      if (hasAnyEndpoints) {
        natRules.add(
          `-A ${KUBE_SERVICES} -m comment --comment "${name} loadbalancer IP" ${match} -d ${lbIP} --dport ${port} -j ${loadBalancerTrafficChain}`,
        );
      }
      if (usesFirewallChain) {
        filterRules.add(
          `-A ${KUBE_PROXY_FIREWALL} -m comment --comment "${name} traffic not accepted by ${chains.firewall}" ${match} -d ${lbIP} --dport ${port} -j DROP`,
        );
      }
    }
    if (!hasExternalEndpoints) {
      for (const lbIP of sp.loadBalancerIPs) {
        filterRules.add(
          `-A ${KUBE_EXTERNAL_SERVICES} -m comment --comment ${externalFilterComment} ${match} -d ${lbIP} --dport ${port} -j ${externalFilterTarget}`,
        );
      }
    }

    if (sp.nodePort !== 0) {
      if (hasAnyEndpoints) {
        // NodePorts are deliberately not subject to loadBalancerSourceRanges (upstream behaviour).
        if (countLocalhostNodePorts) {
          natRules.add(
            `-A ${KUBE_NODEPORTS} -m comment --comment ${name} ${match} -d 127.0.0.0/8 --dport ${sp.nodePort} -m nfacct --nfacct-name ${LOCALHOST_NODEPORTS_COUNTER} -j ${externalTrafficChain}`,
          );
        }
        natRules.add(
          `-A ${KUBE_NODEPORTS} -m comment --comment ${name} ${match} --dport ${sp.nodePort} -j ${externalTrafficChain}`,
        );
      }
      if (!hasExternalEndpoints) {
        filterRules.add(
          `-A ${KUBE_EXTERNAL_SERVICES} -m comment --comment ${externalFilterComment} -m addrtype --dst-type LOCAL ${match} --dport ${sp.nodePort} -j ${externalFilterTarget}`,
        );
      }
    }

    if (sp.healthCheckNodePort !== 0) {
      // Accepted whether or not this node has local endpoints: the answer (200/503) is the point.
      filterRules.add(
        `-A ${KUBE_NODEPORTS} -m comment --comment "${name} health check node port" -m tcp -p tcp --dport ${sp.healthCheckNodePort} -j ACCEPT`,
      );
    }

    // From here on: the service port's own chains, written only when a full sync or a change asks for them.
    const write = changed === undefined || changed.has(sp.key);

    if (hasInternalEndpoints && (options.masqueradeAll || local !== undefined)) {
      if (write) {
        // Off-cluster traffic to a ClusterIP (e.g. via a static route to the service range) may leave the node again, so it is SNATed.
        natRules.add(
          `-A ${internalTrafficChain} -m comment --comment "${name} cluster IP" ${match} -d ${sp.clusterIP} --dport ${port}${
            options.masqueradeAll ? "" : ` ${local?.ifNotLocal}`
          } -j ${KUBE_MARK_MASQ}`,
        );
      } else skippedRules++;
    }

    if (usesExternalTrafficChain) {
      active.add(externalTrafficChain);
      if (write) {
        natChains.add(chainLine(externalTrafficChain));
        if (!externalPolicyLocal) {
          natRules.add(
            `-A ${externalTrafficChain} -m comment --comment "masquerade traffic for ${name} external destinations" -j ${KUBE_MARK_MASQ}`,
          );
        } else {
          // Pods reaching an external IP of a Local service go to any endpoint, as if via the outside load balancer.
          if (local !== undefined) {
            natRules.add(
              `-A ${externalTrafficChain} -m comment --comment "pod traffic for ${name} external destinations" ${local.ifLocal} -j ${chains.cluster}`,
            );
          }
          // The node itself has the external IP as a local address, so its own traffic must be SNATed and may use any endpoint.
          natRules.add(
            `-A ${externalTrafficChain} -m comment --comment "masquerade LOCAL traffic for ${name} external destinations" -m addrtype --src-type LOCAL -j ${KUBE_MARK_MASQ}`,
          );
          natRules.add(
            `-A ${externalTrafficChain} -m comment --comment "route LOCAL traffic for ${name} external destinations" -m addrtype --src-type LOCAL -j ${chains.cluster}`,
          );
        }
        if (hasExternalEndpoints) natRules.add(`-A ${externalTrafficChain} -j ${externalPolicyChain}`);
      } else {
        skippedRules +=
          (externalPolicyLocal ? (local !== undefined ? 3 : 2) : 1) + (hasExternalEndpoints ? 1 : 0);
      }
    }

    if (usesFirewallChain) {
      active.add(chains.firewall);
      let allowFromNode = false;
      const ranges = sp.loadBalancerSourceRanges;
      if (nodeIP !== undefined) {
        for (const range of ranges) if (cidrContains(range, nodeIP)) allowFromNode = true;
      }
      if (write) {
        natChains.add(chainLine(chains.firewall));
        const head = `-A ${chains.firewall} -m comment --comment "${name} loadbalancer IP"`;
        for (const range of ranges) natRules.add(`${head} -s ${range.trim()} -j ${externalTrafficChain}`);
        // A node reaching its own LB VIP loops back with the VIP as source; let it through when the node may connect.
        if (allowFromNode) {
          for (const lbIP of sp.loadBalancerIPs) natRules.add(`${head} -s ${lbIP} -j ${externalTrafficChain}`);
        }
        natRules.add(
          `-A ${chains.firewall} -m comment --comment "other traffic to ${name} will be dropped by ${KUBE_PROXY_FIREWALL}"`,
        );
      } else {
        skippedRules += ranges.length + (allowFromNode ? sp.loadBalancerIPs.length : 0) + 1;
      }
    }

    const affinitySeconds = sp.sessionAffinity.type === "ClientIP" ? sp.sessionAffinity.timeoutSeconds : undefined;

    if (usesClusterPolicyChain) {
      active.add(chains.cluster);
      if (write) {
        natChains.add(chainLine(chains.cluster));
        writeServiceToEndpointRules(natRules, sp, chains.cluster, clusterEndpoints, affinitySeconds, largeClusterMode);
      } else skippedRules += clusterEndpoints.length * (affinitySeconds !== undefined ? 2 : 1);
    }

    if (usesLocalPolicyChain) {
      active.add(chains.local);
      if (write) {
        natChains.add(chainLine(chains.local));
        writeServiceToEndpointRules(natRules, sp, chains.local, localEndpoints, affinitySeconds, largeClusterMode);
      } else skippedRules += localEndpoints.length * (affinitySeconds !== undefined ? 2 : 1);
    }

    const sepComment = largeClusterMode ? "" : ` -m comment --comment ${name}`;
    for (const ep of allReachableEndpoints) {
      const { endpoint, chain: sep } = endpointNames(name, sp.protocol, ep);
      active.add(sep);
      if (write) {
        natChains.add(chainLine(sep));
        // Hairpin: a pod reaching itself through the service must be SNATed or it would answer itself directly.
        natRules.add(`-A ${sep}${sepComment} -s ${ep.ip} -j ${KUBE_MARK_MASQ}`);
        natRules.add(
          `-A ${sep}${sepComment}${affinitySeconds !== undefined ? ` -m recent --name ${sep} --set` : ""} ${match} -j DNAT --to-destination ${endpoint}`,
        );
      } else skippedRules += 2;
    }
  }

  const deletedChains: string[] = [];
  if (existingChains !== undefined) {
    for (const chain of existingChains) {
      if (active.has(chain) || !isServiceChainName(chain)) continue;
      // Declaring the chain flushes it, so nothing references or fills it when -X runs.
      natChains.add(chainLine(chain));
      natRules.add(`-X ${chain}`);
      deletedChains.push(chain);
    }
  }

  // The jump to KUBE-NODEPORTS must stay the last rule of KUBE-SERVICES: it matches any local destination.
  if (nodePortAddresses === "all") {
    const notLocalhost = isIPv6 ? " ! -d ::1/128" : localhostNodePorts ? "" : " ! -d 127.0.0.0/8";
    natRules.add(
      `-A ${KUBE_SERVICES} -m comment --comment ${NODEPORTS_JUMP_COMMENT} -m addrtype --dst-type LOCAL${notLocalhost} -j ${KUBE_NODEPORTS}`,
    );
  } else {
    for (const ip of nodePortAddresses) {
      if (isLoopback(ip) && !localhostNodePorts) continue;
      natRules.add(`-A ${KUBE_SERVICES} -m comment --comment ${NODEPORTS_JUMP_COMMENT} -d ${ip} -j ${KUBE_NODEPORTS}`);
    }
  }

  if (!options.conntrackTCPLiberal) {
    // Without tcp_be_liberal, an INVALID packet would bypass DNAT and reach the pod's peer as a stray RST.
    filterRules.add(
      `-A ${KUBE_FORWARD} -m conntrack --ctstate INVALID${
        options.nfacctCounters.ctStateInvalidDropped ? ` -m nfacct --nfacct-name ${INVALID_DROPPED_COUNTER}` : ""
      } -j DROP`,
    );
  }
  // Marked packets are forwarded even where the FORWARD policy is DROP (NodePort traffic to other nodes' pods).
  filterRules.add(
    `-A ${KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" -m mark --mark ${mark}/${mark} -j ACCEPT`,
  );
  filterRules.add(
    `-A ${KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
  );

  const text = `*filter\n${filterChains.text()}${filterRules.text()}COMMIT\n*nat\n${natChains.text()}${natRules.text()}COMMIT\n`;

  const natRuleLines = natRules.lines - deletedChains.length;
  return {
    text,
    activeNatChains: active,
    deletedChains,
    counts: {
      servicePorts,
      endpoints: totalEndpoints,
      filterChains: filterChains.lines,
      filterRules: filterRules.lines,
      natChains: natChains.lines,
      natRules: natRuleLines,
      natRulesTotal: natRuleLines + skippedRules,
      deletedChains: deletedChains.length,
      noLocalEndpointsInternal,
      noLocalEndpointsExternal,
      largeClusterMode,
    },
    partial: changed !== undefined,
  };
}

/** Session-affinity checks first (a known client goes back to its endpoint), then the random spread. */
function writeServiceToEndpointRules(
  natRules: LineBuffer,
  sp: ServicePort,
  chain: string,
  endpoints: readonly Endpoint[],
  affinitySeconds: number | undefined,
  largeClusterMode: boolean,
): void {
  const name = sp.servicePortName;
  const n = endpoints.length;
  const targets: string[] = new Array<string>(n);
  const comments: string[] = new Array<string>(n);
  for (let i = 0; i < n; i++) {
    const { endpoint, chain: sep } = endpointNames(name, sp.protocol, endpoints[i] as Endpoint);
    targets[i] = sep;
    comments[i] = largeClusterMode ? "" : ` -m comment --comment "${name} -> ${endpoint}"`;
  }
  if (affinitySeconds !== undefined) {
    for (let i = 0; i < n; i++) {
      const sep = targets[i];
      natRules.add(
        `-A ${chain}${comments[i]} -m recent --name ${sep} --rcheck --seconds ${affinitySeconds} --reap -j ${sep}`,
      );
    }
  }
  for (let i = 0; i < n; i++) {
    // Endpoint i of n takes 1/(n-i) of what is left, which spreads evenly; the last one takes the rest.
    const spread = i < n - 1 ? ` -m statistic --mode random --probability ${probability(n - i)}` : "";
    natRules.add(`-A ${chain}${comments[i]}${spread} -j ${targets[i]}`);
  }
}
