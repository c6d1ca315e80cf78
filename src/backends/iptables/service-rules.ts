/**
 * The rules of one service port, exactly as upstream's syncProxyRules writes them inside its loop
 * over services: rules in the top-level chains (KUBE-SERVICES, KUBE-NODEPORTS, the filter chains)
 * and the service port's own KUBE-SVC/SVL/EXT/FW/SEP chains.
 *
 * The result is remembered per ServicePort object. Snapshots share unchanged service ports and
 * endpoint lists, so a periodic full sync or a partial sync rebuilds only what changed and copies
 * the rest, which keeps generation far below the cost of the restore itself.
 */
import {
  externallyAccessible as isExternallyAccessible,
  usesClusterEndpoints,
  usesLocalEndpoints,
} from "../../model/topology.ts";
import type { Endpoint, NodeInfo, Protocol, ServicePort } from "../../model/types.ts";
import {
  chainLine,
  KUBE_EXTERNAL_SERVICES,
  KUBE_MARK_MASQ,
  KUBE_NODEPORTS,
  KUBE_PROXY_FIREWALL,
  KUBE_SERVICES,
} from "./chains.ts";
import { chainsOfServicePort, endpointNameTable, type EndpointNameTable } from "./hash.ts";
import { cidrContains } from "./ip.ts";
import type { LocalTrafficMatch, RuleOptions } from "./options.ts";
import { probability } from "./probability.ts";

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

/** Everything besides the service port and its endpoints that its rules depend on. */
export interface ServiceRulesEnv {
  readonly node: NodeInfo;
  readonly options: RuleOptions;
  readonly categorize: CategorizeEndpoints;
  readonly largeClusterMode: boolean;
  /** Derived from the above for this family; not part of the memo key. */
  readonly local: LocalTrafficMatch | undefined;
  readonly nodeIP: string | undefined;
  readonly countLocalhostNodePorts: boolean;
}

/** Text blocks are whole lines, each ending in a newline (or empty). */
export interface ServiceRules {
  readonly filterRules: string;
  readonly filterRuleCount: number;
  /** Rules in nat KUBE-SERVICES and KUBE-NODEPORTS. */
  readonly natTopRules: string;
  readonly natTopRuleCount: number;
  /** Declarations of the service port's own chains. */
  readonly natChains: string;
  /** Rules in the service port's own chains. */
  readonly natRules: string;
  readonly natRuleCount: number;
  /** The service port's own chains, as declared. */
  readonly chains: readonly string[];
  readonly noLocalEndpointsInternal: boolean;
  readonly noLocalEndpointsExternal: boolean;
}

interface Memo {
  readonly endpoints: readonly Endpoint[];
  readonly node: NodeInfo;
  readonly options: RuleOptions;
  readonly categorize: CategorizeEndpoints;
  readonly largeClusterMode: boolean;
  readonly rules: ServiceRules;
}

const memo = new WeakMap<ServicePort, Memo>();

export function serviceRules(sp: ServicePort, endpoints: readonly Endpoint[], env: ServiceRulesEnv): ServiceRules {
  const m = memo.get(sp);
  if (
    m !== undefined &&
    m.endpoints === endpoints &&
    m.node === env.node &&
    m.options === env.options &&
    m.categorize === env.categorize &&
    m.largeClusterMode === env.largeClusterMode
  ) {
    return m.rules;
  }
  const rules = buildServiceRules(sp, endpoints, env);
  memo.set(sp, {
    endpoints,
    node: env.node,
    options: env.options,
    categorize: env.categorize,
    largeClusterMode: env.largeClusterMode,
    rules,
  });
  return rules;
}

const LOWER_PROTOCOL: Readonly<Record<Protocol, string>> = { TCP: "tcp", UDP: "udp", SCTP: "sctp" };
const LOCALHOST_NODEPORTS_COUNTER = "localhost_nps_accepted_pkts";

/** Lines joined into one flat string with a trailing newline (the empty last element supplies it). */
function block(lines: string[]): string {
  if (lines.length === 0) return "";
  lines.push("");
  return lines.join("\n");
}

function buildServiceRules(sp: ServicePort, endpoints: readonly Endpoint[], env: ServiceRulesEnv): ServiceRules {
  const { options, local, largeClusterMode } = env;
  const name = sp.servicePortName;
  const proto = LOWER_PROTOCOL[sp.protocol];
  const match = `-m ${proto} -p ${proto}`;
  const chains = chainsOfServicePort(sp);
  const names = endpointNameTable(name, sp.protocol);
  const { clusterEndpoints, localEndpoints, allReachableEndpoints, hasAnyEndpoints } = env.categorize(
    sp,
    endpoints,
    env.node,
  );

  const externallyAccessible = isExternallyAccessible(sp);
  const externalPolicyLocal = sp.externalPolicyLocal && externallyAccessible;
  const internalPolicyLocal = sp.internalPolicyLocal;
  // External traffic needs the Cluster chain even with a Local policy: pods and the node short-circuit to it.
  const usesClusterPolicyChain = clusterEndpoints.length > 0 && usesClusterEndpoints(sp);
  const usesLocalPolicyChain = localEndpoints.length > 0 && usesLocalEndpoints(sp);

  const internalTrafficChain = internalPolicyLocal ? chains.local : chains.cluster;
  const hasInternalEndpoints = hasAnyEndpoints && (!internalPolicyLocal || localEndpoints.length > 0);
  const externalPolicyChain = externalPolicyLocal ? chains.local : chains.cluster;
  const hasExternalEndpoints = hasAnyEndpoints && (!externalPolicyLocal || localEndpoints.length > 0);
  const externalTrafficChain = chains.external;
  const usesExternalTrafficChain = hasAnyEndpoints && externallyAccessible;
  const usesFirewallChain = hasAnyEndpoints && sp.loadBalancerIPs.length > 0 && sp.loadBalancerSourceRanges.length > 0;
  const loadBalancerTrafficChain = usesFirewallChain ? chains.firewall : externalTrafficChain;

  let internalFilterTarget = "";
  let internalFilterComment = "";
  let externalFilterTarget = "";
  let externalFilterComment = "";
  let noLocalEndpointsInternal = false;
  let noLocalEndpointsExternal = false;
  if (!hasAnyEndpoints) {
    internalFilterTarget = externalFilterTarget = "REJECT";
    internalFilterComment = externalFilterComment = `"${name} has no endpoints"`;
  } else {
    if (!hasInternalEndpoints) {
      internalFilterTarget = "DROP";
      internalFilterComment = `"${name} has no local endpoints"`;
      noLocalEndpointsInternal = true;
    }
    if (!hasExternalEndpoints) {
      externalFilterTarget = "DROP";
      externalFilterComment = `"${name} has no local endpoints"`;
      noLocalEndpointsExternal = true;
    }
  }

  const filterRules: string[] = [];
  const natTopRules: string[] = [];
  const natChains: string[] = [];
  const natRules: string[] = [];
  const ownChains: string[] = [];
  const declare = (chain: string): void => {
    ownChains.push(chain);
    natChains.push(chainLine(chain));
  };

  const port = sp.port;
  if (hasInternalEndpoints) {
    natTopRules.push(
      `-A ${KUBE_SERVICES} -m comment --comment "${name} cluster IP" ${match} -d ${sp.clusterIP} --dport ${port} -j ${internalTrafficChain}`,
    );
  } else {
    filterRules.push(
      `-A ${KUBE_SERVICES} -m comment --comment ${internalFilterComment} ${match} -d ${sp.clusterIP} --dport ${port} -j ${internalFilterTarget}`,
    );
  }

  for (const externalIP of sp.externalIPs) {
    if (hasAnyEndpoints) {
      natTopRules.push(
        `-A ${KUBE_SERVICES} -m comment --comment "${name} external IP" ${match} -d ${externalIP} --dport ${port} -j ${externalTrafficChain}`,
      );
    }
    if (!hasExternalEndpoints) {
      filterRules.push(
        `-A ${KUBE_EXTERNAL_SERVICES} -m comment --comment ${externalFilterComment} ${match} -d ${externalIP} --dport ${port} -j ${externalFilterTarget}`,
      );
    }
  }

  for (const lbIP of sp.loadBalancerIPs) {
    if (hasAnyEndpoints) {
      natTopRules.push(
        `-A ${KUBE_SERVICES} -m comment --comment "${name} loadbalancer IP" ${match} -d ${lbIP} --dport ${port} -j ${loadBalancerTrafficChain}`,
      );
    }
    if (usesFirewallChain) {
      filterRules.push(
        `-A ${KUBE_PROXY_FIREWALL} -m comment --comment "${name} traffic not accepted by ${chains.firewall}" ${match} -d ${lbIP} --dport ${port} -j DROP`,
      );
    }
  }
  if (!hasExternalEndpoints) {
    for (const lbIP of sp.loadBalancerIPs) {
      filterRules.push(
        `-A ${KUBE_EXTERNAL_SERVICES} -m comment --comment ${externalFilterComment} ${match} -d ${lbIP} --dport ${port} -j ${externalFilterTarget}`,
      );
    }
  }

  if (sp.nodePort !== 0) {
    if (hasAnyEndpoints) {
      // NodePorts are deliberately not subject to loadBalancerSourceRanges (upstream behaviour).
      if (env.countLocalhostNodePorts) {
        natTopRules.push(
          `-A ${KUBE_NODEPORTS} -m comment --comment ${name} ${match} -d 127.0.0.0/8 --dport ${sp.nodePort} -m nfacct --nfacct-name ${LOCALHOST_NODEPORTS_COUNTER} -j ${externalTrafficChain}`,
        );
      }
      natTopRules.push(
        `-A ${KUBE_NODEPORTS} -m comment --comment ${name} ${match} --dport ${sp.nodePort} -j ${externalTrafficChain}`,
      );
    }
    if (!hasExternalEndpoints) {
      filterRules.push(
        `-A ${KUBE_EXTERNAL_SERVICES} -m comment --comment ${externalFilterComment} -m addrtype --dst-type LOCAL ${match} --dport ${sp.nodePort} -j ${externalFilterTarget}`,
      );
    }
  }

  if (sp.healthCheckNodePort !== 0) {
    // Accepted whether or not this node has local endpoints: the answer (200/503) is the point.
    filterRules.push(
      `-A ${KUBE_NODEPORTS} -m comment --comment "${name} health check node port" -m tcp -p tcp --dport ${sp.healthCheckNodePort} -j ACCEPT`,
    );
  }

  if (hasInternalEndpoints && (options.masqueradeAll || local !== undefined)) {
    // Off-cluster traffic to a ClusterIP (e.g. via a static route to the service range) may leave the node again, so it is SNATed.
    natRules.push(
      `-A ${internalTrafficChain} -m comment --comment "${name} cluster IP" ${match} -d ${sp.clusterIP} --dport ${port}${
        options.masqueradeAll ? "" : ` ${local?.ifNotLocal}`
      } -j ${KUBE_MARK_MASQ}`,
    );
  }

  if (usesExternalTrafficChain) {
    declare(externalTrafficChain);
    if (!externalPolicyLocal) {
      natRules.push(
        `-A ${externalTrafficChain} -m comment --comment "masquerade traffic for ${name} external destinations" -j ${KUBE_MARK_MASQ}`,
      );
    } else {
      // Pods reaching an external IP of a Local service go to any endpoint, as if via the outside load balancer.
      if (local !== undefined) {
        natRules.push(
          `-A ${externalTrafficChain} -m comment --comment "pod traffic for ${name} external destinations" ${local.ifLocal} -j ${chains.cluster}`,
        );
      }
      // The node itself has the external IP as a local address, so its own traffic must be SNATed and may use any endpoint.
      natRules.push(
        `-A ${externalTrafficChain} -m comment --comment "masquerade LOCAL traffic for ${name} external destinations" -m addrtype --src-type LOCAL -j ${KUBE_MARK_MASQ}`,
        `-A ${externalTrafficChain} -m comment --comment "route LOCAL traffic for ${name} external destinations" -m addrtype --src-type LOCAL -j ${chains.cluster}`,
      );
    }
    if (hasExternalEndpoints) natRules.push(`-A ${externalTrafficChain} -j ${externalPolicyChain}`);
  }

  if (usesFirewallChain) {
    declare(chains.firewall);
    const head = `-A ${chains.firewall} -m comment --comment "${name} loadbalancer IP"`;
    let allowFromNode = false;
    for (const range of sp.loadBalancerSourceRanges) {
      natRules.push(`${head} -s ${range.trim()} -j ${externalTrafficChain}`);
      if (env.nodeIP !== undefined && cidrContains(range, env.nodeIP)) allowFromNode = true;
    }
    // A node reaching its own LB VIP loops back with the VIP as source; let it through when the node may connect.
    if (allowFromNode) {
      for (const lbIP of sp.loadBalancerIPs) natRules.push(`${head} -s ${lbIP} -j ${externalTrafficChain}`);
    }
    natRules.push(
      `-A ${chains.firewall} -m comment --comment "other traffic to ${name} will be dropped by ${KUBE_PROXY_FIREWALL}"`,
    );
  }

  const affinitySeconds = sp.sessionAffinity.type === "ClientIP" ? sp.sessionAffinity.timeoutSeconds : undefined;

  if (usesClusterPolicyChain) {
    declare(chains.cluster);
    writeServiceToEndpointRules(natRules, name, names, chains.cluster, clusterEndpoints, affinitySeconds, largeClusterMode);
  }
  if (usesLocalPolicyChain) {
    declare(chains.local);
    writeServiceToEndpointRules(natRules, name, names, chains.local, localEndpoints, affinitySeconds, largeClusterMode);
  }

  const sepComment = largeClusterMode ? "" : ` -m comment --comment ${name}`;
  for (const ep of allReachableEndpoints) {
    const { endpoint, chain: sep } = names.names(ep);
    declare(sep);
    // Hairpin: a pod reaching itself through the service must be SNATed or it would answer itself directly.
    natRules.push(
      `-A ${sep}${sepComment} -s ${ep.ip} -j ${KUBE_MARK_MASQ}`,
      `-A ${sep}${sepComment}${affinitySeconds !== undefined ? ` -m recent --name ${sep} --set` : ""} ${match} -j DNAT --to-destination ${endpoint}`,
    );
  }

  const filterRuleCount = filterRules.length;
  const natTopRuleCount = natTopRules.length;
  const natRuleCount = natRules.length;
  return {
    filterRules: block(filterRules),
    filterRuleCount,
    natTopRules: block(natTopRules),
    natTopRuleCount,
    natChains: block(natChains),
    natRules: block(natRules),
    natRuleCount,
    chains: ownChains,
    noLocalEndpointsInternal,
    noLocalEndpointsExternal,
  };
}

/** Session-affinity checks first (a known client goes back to its endpoint), then the random spread. */
function writeServiceToEndpointRules(
  natRules: string[],
  name: string,
  names: EndpointNameTable,
  chain: string,
  endpoints: readonly Endpoint[],
  affinitySeconds: number | undefined,
  largeClusterMode: boolean,
): void {
  const n = endpoints.length;
  const targets: string[] = new Array<string>(n);
  const comments: string[] = new Array<string>(n);
  for (let i = 0; i < n; i++) {
    const { endpoint, chain: sep } = names.names(endpoints[i] as Endpoint);
    targets[i] = sep;
    comments[i] = largeClusterMode ? "" : ` -m comment --comment "${name} -> ${endpoint}"`;
  }
  if (affinitySeconds !== undefined) {
    for (let i = 0; i < n; i++) {
      const sep = targets[i];
      natRules.push(`-A ${chain}${comments[i]} -m recent --name ${sep} --rcheck --seconds ${affinitySeconds} --reap -j ${sep}`);
    }
  }
  for (let i = 0; i < n; i++) {
    // Endpoint i of n takes 1/(n-i) of what is left, which spreads evenly; the last one takes the rest.
    const spread = i < n - 1 ? ` -m statistic --mode random --probability ${probability(n - i)}` : "";
    natRules.push(`-A ${chain}${comments[i]}${spread} -j ${targets[i]}`);
  }
}
