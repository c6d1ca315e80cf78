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
  KUBE_EXTERNAL_SERVICES,
  KUBE_MARK_MASQ,
  KUBE_NODEPORTS,
  KUBE_PROXY_FIREWALL,
  KUBE_SERVICES,
} from "./chains.ts";
import {
  endpointChainHash,
  portProtoHash,
  SERVICE_CLUSTER_CHAIN_PREFIX,
  SERVICE_EXTERNAL_CHAIN_PREFIX,
  SERVICE_FIREWALL_CHAIN_PREFIX,
  SERVICE_LOCAL_CHAIN_PREFIX,
} from "./hash.ts";
import { cidrContains, joinHostPort } from "./ip.ts";
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
  /** Declarations of the service port's own chains; "" once released (see releaseRuleText). */
  natChains: string;
  /** Rules in the service port's own chains; "" once released. */
  natRules: string;
  readonly natRuleCount: number;
  /** The service port's own chains, as declared. */
  readonly chains: readonly string[];
  readonly noLocalEndpointsInternal: boolean;
  readonly noLocalEndpointsExternal: boolean;
  /** A hash of natChains and natRules, set when they are released. */
  natDigest: bigint | undefined;
}

function ownRulesDigest(rules: ServiceRules): bigint {
  return rules.natDigest ?? Bun.hash(rules.natRules, Bun.hash(rules.natChains));
}

/**
 * Drops the text of the service port's own chains once it has been written, keeping a hash of it.
 * That text is nine tenths of a ruleset (about 20 MB at 10,000 services), and a kproxy holding it
 * for every service port between syncs would keep that much memory for good on a small node. The
 * price is that a full sync builds every service port's text again (about 0.1 s at that size).
 */
export function releaseRuleText(rules: ServiceRules): void {
  if (rules.natDigest !== undefined) return;
  rules.natDigest = ownRulesDigest(rules);
  rules.natChains = "";
  rules.natRules = "";
}

/** Whether two renderings of a service port write the same own chains (by text, or by hash once released). */
export function sameOwnRules(a: ServiceRules, b: ServiceRules): boolean {
  if (a === b) return true;
  if (a.natDigest === undefined && b.natDigest === undefined) return a.natChains === b.natChains && a.natRules === b.natRules;
  return ownRulesDigest(a) === ownRulesDigest(b);
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

/**
 * The service port's rules, reused while nothing they depend on changed. With `needText`, a reused
 * result whose own-chain text was released is built again.
 */
export function serviceRules(sp: ServicePort, endpoints: readonly Endpoint[], env: ServiceRulesEnv, needText = true): ServiceRules {
  const m = memo.get(sp);
  if (
    m !== undefined &&
    (!needText || m.rules.natDigest === undefined) &&
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
const MARK_MASQ_JUMP = ` -j ${KUBE_MARK_MASQ}\n`;
const DECLARED = " - [0:0]\n";

/**
 * One section of a service port's rules (filter, nat top-level, nat chain declarations, nat
 * rules), built as a list of fragments joined once. Fragments are strings that already exist
 * (names, IPs, per-service-port constants), so a line costs no string of its own and the block is
 * copied once. Hot rules store fragments with `parts[parts.length] = ...` in place: generation of
 * a whole cluster runs mostly before the JIT's top tiers, where each call (a helper method, or a
 * `push` of several values) costs more than the store itself. The sections are reused for every
 * service port.
 */
class Section {
  readonly parts: string[] = [];
  /** Whole lines written so far. */
  lines = 0;

  /** A whole line given as one string (rare rules, where clarity beats fragments). */
  line(text: string): void {
    this.parts.push(text, "\n");
    this.lines++;
  }

  /** The section's text (whole lines, or empty); the section is empty again afterwards. */
  take(): string {
    const text = this.parts.length === 0 ? "" : this.parts.join("");
    this.parts.length = 0;
    this.lines = 0;
    return text;
  }
}

const filterSection = new Section();
const natTopSection = new Section();
const chainSection = new Section();
const ruleSection = new Section();

function buildServiceRules(sp: ServicePort, endpoints: readonly Endpoint[], env: ServiceRulesEnv): ServiceRules {
  const { options, local, largeClusterMode } = env;
  const name = sp.servicePortName;
  const proto = LOWER_PROTOCOL[sp.protocol];
  const match = `-m ${proto} -p ${proto}`;
  const hash = portProtoHash(name, sp.protocol);
  const clusterChain = SERVICE_CLUSTER_CHAIN_PREFIX + hash;
  const localChain = SERVICE_LOCAL_CHAIN_PREFIX + hash;
  const externalTrafficChain = SERVICE_EXTERNAL_CHAIN_PREFIX + hash;
  const firewallChain = SERVICE_FIREWALL_CHAIN_PREFIX + hash;
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

  const internalTrafficChain = internalPolicyLocal ? localChain : clusterChain;
  const hasInternalEndpoints = hasAnyEndpoints && (!internalPolicyLocal || localEndpoints.length > 0);
  const externalPolicyChain = externalPolicyLocal ? localChain : clusterChain;
  const hasExternalEndpoints = hasAnyEndpoints && (!externalPolicyLocal || localEndpoints.length > 0);
  const usesExternalTrafficChain = hasAnyEndpoints && externallyAccessible;
  const usesFirewallChain = hasAnyEndpoints && sp.loadBalancerIPs.length > 0 && sp.loadBalancerSourceRanges.length > 0;
  const loadBalancerTrafficChain = usesFirewallChain ? firewallChain : externalTrafficChain;

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

  const filter = filterSection;
  const natTop = natTopSection;
  const natChains = chainSection;
  const natRules = ruleSection;
  const t = natTop.parts;
  const c = natChains.parts;
  const r = natRules.parts;
  const ownChains: string[] = [];
  const declare = (chain: string): void => {
    ownChains.push(chain);
    c[c.length] = ":";
    c[c.length] = chain;
    c[c.length] = DECLARED;
  };

  const port = String(sp.port);
  // `"<name> cluster IP" -m tcp -p tcp -d <clusterIP> --dport <port>`, shared by two rules.
  const clusterIPMatch = ` -m comment --comment "${name} cluster IP" ${match} -d ${sp.clusterIP} --dport ${port}`;
  if (hasInternalEndpoints) {
    t[t.length] = `-A ${KUBE_SERVICES}`;
    t[t.length] = clusterIPMatch;
    t[t.length] = " -j ";
    t[t.length] = internalTrafficChain;
    t[t.length] = "\n";
    natTop.lines++;
  } else {
    filter.line(
      `-A ${KUBE_SERVICES} -m comment --comment ${internalFilterComment} ${match} -d ${sp.clusterIP} --dport ${port} -j ${internalFilterTarget}`,
    );
  }

  for (const externalIP of sp.externalIPs) {
    if (hasAnyEndpoints) {
      natTop.line(
        `-A ${KUBE_SERVICES} -m comment --comment "${name} external IP" ${match} -d ${externalIP} --dport ${port} -j ${externalTrafficChain}`,
      );
    }
    if (!hasExternalEndpoints) {
      filter.line(
        `-A ${KUBE_EXTERNAL_SERVICES} -m comment --comment ${externalFilterComment} ${match} -d ${externalIP} --dport ${port} -j ${externalFilterTarget}`,
      );
    }
  }

  for (const lbIP of sp.loadBalancerIPs) {
    if (hasAnyEndpoints) {
      natTop.line(
        `-A ${KUBE_SERVICES} -m comment --comment "${name} loadbalancer IP" ${match} -d ${lbIP} --dport ${port} -j ${loadBalancerTrafficChain}`,
      );
    }
    if (usesFirewallChain) {
      filter.line(
        `-A ${KUBE_PROXY_FIREWALL} -m comment --comment "${name} traffic not accepted by ${firewallChain}" ${match} -d ${lbIP} --dport ${port} -j DROP`,
      );
    }
  }
  if (!hasExternalEndpoints) {
    for (const lbIP of sp.loadBalancerIPs) {
      filter.line(
        `-A ${KUBE_EXTERNAL_SERVICES} -m comment --comment ${externalFilterComment} ${match} -d ${lbIP} --dport ${port} -j ${externalFilterTarget}`,
      );
    }
  }

  if (sp.nodePort !== 0) {
    if (hasAnyEndpoints) {
      // NodePorts are deliberately not subject to loadBalancerSourceRanges (upstream behaviour).
      if (env.countLocalhostNodePorts) {
        natTop.line(
          `-A ${KUBE_NODEPORTS} -m comment --comment ${name} ${match} -d 127.0.0.0/8 --dport ${sp.nodePort} -m nfacct --nfacct-name ${LOCALHOST_NODEPORTS_COUNTER} -j ${externalTrafficChain}`,
        );
      }
      natTop.line(`-A ${KUBE_NODEPORTS} -m comment --comment ${name} ${match} --dport ${sp.nodePort} -j ${externalTrafficChain}`);
    }
    if (!hasExternalEndpoints) {
      filter.line(
        `-A ${KUBE_EXTERNAL_SERVICES} -m comment --comment ${externalFilterComment} -m addrtype --dst-type LOCAL ${match} --dport ${sp.nodePort} -j ${externalFilterTarget}`,
      );
    }
  }

  if (sp.healthCheckNodePort !== 0) {
    // Accepted whether or not this node has local endpoints: the answer (200/503) is the point.
    filter.line(
      `-A ${KUBE_NODEPORTS} -m comment --comment "${name} health check node port" -m tcp -p tcp --dport ${sp.healthCheckNodePort} -j ACCEPT`,
    );
  }

  if (hasInternalEndpoints && (options.masqueradeAll || local !== undefined)) {
    // Off-cluster traffic to a ClusterIP (e.g. via a static route to the service range) may leave the node again, so it is SNATed.
    r[r.length] = "-A ";
    r[r.length] = internalTrafficChain;
    r[r.length] = clusterIPMatch;
    if (!options.masqueradeAll) {
      r[r.length] = " ";
      r[r.length] = (local as LocalTrafficMatch).ifNotLocal;
    }
    r[r.length] = MARK_MASQ_JUMP;
    natRules.lines++;
  }

  if (usesExternalTrafficChain) {
    declare(externalTrafficChain);
    if (!externalPolicyLocal) {
      r[r.length] = "-A ";
      r[r.length] = externalTrafficChain;
      r[r.length] = ` -m comment --comment "masquerade traffic for `;
      r[r.length] = name;
      r[r.length] = ` external destinations"`;
      r[r.length] = MARK_MASQ_JUMP;
      natRules.lines++;
    } else {
      // Pods reaching an external IP of a Local service go to any endpoint, as if via the outside load balancer.
      if (local !== undefined) {
        natRules.line(
          `-A ${externalTrafficChain} -m comment --comment "pod traffic for ${name} external destinations" ${local.ifLocal} -j ${clusterChain}`,
        );
      }
      // The node itself has the external IP as a local address, so its own traffic must be SNATed and may use any endpoint.
      natRules.line(
        `-A ${externalTrafficChain} -m comment --comment "masquerade LOCAL traffic for ${name} external destinations" -m addrtype --src-type LOCAL -j ${KUBE_MARK_MASQ}`,
      );
      natRules.line(
        `-A ${externalTrafficChain} -m comment --comment "route LOCAL traffic for ${name} external destinations" -m addrtype --src-type LOCAL -j ${clusterChain}`,
      );
    }
    if (hasExternalEndpoints) {
      r[r.length] = "-A ";
      r[r.length] = externalTrafficChain;
      r[r.length] = " -j ";
      r[r.length] = externalPolicyChain;
      r[r.length] = "\n";
      natRules.lines++;
    }
  }

  if (usesFirewallChain) {
    declare(firewallChain);
    const head = `-A ${firewallChain} -m comment --comment "${name} loadbalancer IP"`;
    let allowFromNode = false;
    for (const range of sp.loadBalancerSourceRanges) {
      natRules.line(`${head} -s ${range.trim()} -j ${externalTrafficChain}`);
      if (env.nodeIP !== undefined && cidrContains(range, env.nodeIP)) allowFromNode = true;
    }
    // A node reaching its own LB VIP loops back with the VIP as source; let it through when the node may connect.
    if (allowFromNode) {
      for (const lbIP of sp.loadBalancerIPs) natRules.line(`${head} -s ${lbIP} -j ${externalTrafficChain}`);
    }
    natRules.line(`-A ${firewallChain} -m comment --comment "other traffic to ${name} will be dropped by ${KUBE_PROXY_FIREWALL}"`);
  }

  const affinitySeconds = sp.sessionAffinity.type === "ClientIP" ? String(sp.sessionAffinity.timeoutSeconds) : undefined;
  const names = endpointNamesOf(name + proto, allReachableEndpoints);

  if (usesClusterPolicyChain) {
    declare(clusterChain);
    writeServiceToEndpointRules(natRules, name, names, clusterChain, clusterEndpoints, affinitySeconds, largeClusterMode);
  }
  if (usesLocalPolicyChain) {
    declare(localChain);
    writeServiceToEndpointRules(natRules, name, names, localChain, localEndpoints, affinitySeconds, largeClusterMode);
  }

  // Per endpoint: `-A <sep><comment> -s <ip> -j KUBE-MARK-MASQ` and `-A <sep><comment>[ -m recent ...] -m tcp -p tcp -j DNAT --to-destination <ip:port>`.
  const sepComment = largeClusterMode ? "" : ` -m comment --comment ${name}`;
  const masqSource = `${sepComment} -s `;
  const masqThenNext = `${MARK_MASQ_JUMP}-A `;
  const dnat = ` ${match} -j DNAT --to-destination `;
  const commentThenDnat = sepComment + dnat;
  for (let i = 0; i < allReachableEndpoints.length; i++) {
    const sep = names.chains[i] as string;
    declare(sep);
    // Hairpin: a pod reaching itself through the service must be SNATed or it would answer itself directly.
    r[r.length] = "-A ";
    r[r.length] = sep;
    r[r.length] = masqSource;
    r[r.length] = (allReachableEndpoints[i] as Endpoint).ip;
    r[r.length] = masqThenNext;
    r[r.length] = sep;
    if (affinitySeconds === undefined) {
      r[r.length] = commentThenDnat;
    } else {
      r[r.length] = sepComment;
      r[r.length] = " -m recent --name ";
      r[r.length] = sep;
      r[r.length] = ` --set${dnat}`;
    }
    r[r.length] = names.endpoints[i] as string;
    r[r.length] = "\n";
    natRules.lines += 2;
  }

  const filterRuleCount = filter.lines;
  const natTopRuleCount = natTop.lines;
  const natRuleCount = natRules.lines;
  return {
    filterRules: filter.take(),
    filterRuleCount,
    natTopRules: natTop.take(),
    natTopRuleCount,
    natChains: natChains.take(),
    natRules: natRules.take(),
    natRuleCount,
    chains: ownChains,
    noLocalEndpointsInternal,
    noLocalEndpointsExternal,
    natDigest: undefined,
  };
}

/** `ip:port` texts and KUBE-SEP chains of a service port's reachable endpoints, index for index. */
interface EndpointNameList {
  readonly list: readonly Endpoint[];
  readonly endpoints: readonly string[];
  readonly chains: readonly string[];
  readonly hashPrefix: string;
  /** Where each endpoint is in `list`; built only when a policy's list is not `list` itself. */
  indexOf?: Map<Endpoint, number>;
}

/**
 * Names hashed straight from the endpoint, without a cache: a service port's rules are rebuilt
 * only when it or its endpoints changed, and one SHA-256 is cheaper than keeping a name table for
 * every endpoint of the cluster.
 */
function endpointNamesOf(hashPrefix: string, list: readonly Endpoint[]): EndpointNameList {
  const n = list.length;
  const endpoints = new Array<string>(n);
  const chains = new Array<string>(n);
  for (let i = 0; i < n; i++) {
    const ep = list[i] as Endpoint;
    const endpoint = joinHostPort(ep.ip, ep.port);
    endpoints[i] = endpoint;
    chains[i] = endpointChainHash(hashPrefix + endpoint);
  }
  return { list, endpoints, chains, hashPrefix };
}

/** Names of `endpoints` (a subset of `names.list`, as categorization guarantees), index for index. */
function pickNames(names: EndpointNameList, endpoints: readonly Endpoint[]): { endpoints: string[]; chains: string[] } {
  let index = names.indexOf;
  if (index === undefined) {
    index = new Map();
    for (let i = 0; i < names.list.length; i++) index.set(names.list[i] as Endpoint, i);
    names.indexOf = index;
  }
  const n = endpoints.length;
  const picked = { endpoints: new Array<string>(n), chains: new Array<string>(n) };
  for (let i = 0; i < n; i++) {
    const ep = endpoints[i] as Endpoint;
    const at = index.get(ep);
    if (at !== undefined) {
      picked.endpoints[i] = names.endpoints[at] as string;
      picked.chains[i] = names.chains[at] as string;
    } else {
      const endpoint = joinHostPort(ep.ip, ep.port);
      picked.endpoints[i] = endpoint;
      picked.chains[i] = endpointChainHash(names.hashPrefix + endpoint);
    }
  }
  return picked;
}

/** `"` + the statistic match for `1/n` + ` -j `, as written after an endpoint's comment. */
const spreadAfterComment: string[] = [];
/** The same without the closing quote (large-cluster mode writes no comment). */
const spreadBare: string[] = [];

function spread(n: number, commented: boolean): string {
  const cache = commented ? spreadAfterComment : spreadBare;
  let text = cache[n];
  if (text === undefined) {
    text = `${commented ? `"` : ""} -m statistic --mode random --probability ${probability(n)} -j `;
    cache[n] = text;
  }
  return text;
}

/** Session-affinity checks first (a known client goes back to its endpoint), then the random spread. */
function writeServiceToEndpointRules(
  natRules: Section,
  name: string,
  names: EndpointNameList,
  chain: string,
  endpoints: readonly Endpoint[],
  affinitySeconds: string | undefined,
  largeClusterMode: boolean,
): void {
  const r = natRules.parts;
  const n = endpoints.length;
  const { endpoints: texts, chains: targets } = endpoints === names.list ? names : pickNames(names, endpoints);
  // `-A <chain> -m comment --comment "<name> -> ` comes before each endpoint's `ip:port`.
  const head = largeClusterMode ? `-A ${chain}` : `-A ${chain} -m comment --comment "${name} -> `;
  const lastTail = largeClusterMode ? " -j " : `" -j `;
  if (affinitySeconds !== undefined) {
    const recent = `${largeClusterMode ? "" : `"`} -m recent --name `;
    const check = ` --rcheck --seconds ${affinitySeconds} --reap -j `;
    for (let i = 0; i < n; i++) {
      const sep = targets[i] as string;
      r[r.length] = head;
      if (!largeClusterMode) r[r.length] = texts[i] as string;
      r[r.length] = recent;
      r[r.length] = sep;
      r[r.length] = check;
      r[r.length] = sep;
      r[r.length] = "\n";
    }
  }
  for (let i = 0; i < n; i++) {
    r[r.length] = head;
    if (!largeClusterMode) r[r.length] = texts[i] as string;
    // Endpoint i of n takes 1/(n-i) of what is left, which spreads evenly; the last one takes the rest.
    r[r.length] = i < n - 1 ? spread(n - i, !largeClusterMode) : lastTail;
    r[r.length] = targets[i] as string;
    r[r.length] = "\n";
  }
  natRules.lines += affinitySeconds === undefined ? n : 2 * n;
}
