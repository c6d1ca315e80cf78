/**
 * The iptables-restore input for one IP family, as a pure function of a snapshot: the same chains,
 * rules, order and comments as upstream kube-proxy's iptables mode, so the two can replace each other
 * on a node (upstream's golden tests pass on it, see test/backends/iptables/golden.test.ts).
 *
 * A partial generation (`changed` given) still rewrites every top-level chain (each is flushed by
 * its `:CHAIN` line), but declares and fills the per-service chains only of changed service ports;
 * the others stay in the kernel untouched. Stale per-service chains among `existingChains` are
 * flushed and deleted with `-X` in both modes.
 *
 * Given the memory of the previous generation (`previous`, whose restore succeeded), a partial
 * generation also leaves out the top-level chains, and the filter table with them, when no service
 * port's rules in them changed: one endpoint changed among 10,000 services is then a restore of
 * that service port's own chains only, generated in O(changed service ports).
 *
 * The mangle/nat/filter KUBE-PROXY-CANARY chains and the jumps from built-in chains are not part of
 * this input: see chains.ts.
 */
import { categorizeEndpoints } from "../../model/topology.ts";
import type { Endpoint, IPFamily, ServicePort, Snapshot } from "../../model/types.ts";
import {
  chainLine,
  FILTER_TOP_LEVEL_CHAINS,
  KUBE_FIREWALL,
  KUBE_FORWARD,
  KUBE_MARK_MASQ,
  KUBE_NODEPORTS,
  KUBE_POSTROUTING,
  KUBE_SERVICES,
  NAT_TOP_LEVEL_CHAINS,
} from "./chains.ts";
import { isServiceChainName } from "./hash.ts";
import { familyOf, isLoopback } from "./ip.ts";
import { localTrafficMatch, masqueradeMark, sameRuleOptions, type RuleOptions } from "./options.ts";
import { releaseRuleText, sameOwnRules, serviceRules, type CategorizeEndpoints, type ServiceRules, type ServiceRulesEnv } from "./service-rules.ts";

export type { CategorizedEndpoints, CategorizeEndpoints } from "./service-rules.ts";
export { probability } from "./probability.ts";

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
  /**
   * The memory of the last generation whose restore succeeded (partial generation only). Its
   * chain set is taken over and updated in place: do not use it again after this call.
   */
  readonly previous?: RulesMemory;
}

/** Whether `sp` gets rules in `family` at all (headless and family-less service ports do not). */
function hasRules(sp: ServicePort | undefined, family: IPFamily): sp is ServicePort {
  return sp !== undefined && sp.family === family && sp.clusterIP !== "" && sp.clusterIP !== "None";
}

/**
 * What a generation wrote, as the next partial generation needs it to write only differences.
 * Its containers are updated in place by that generation.
 */
export interface RulesMemory {
  readonly family: IPFamily;
  readonly options: RuleOptions;
  readonly largeClusterMode: boolean;
  /** The snapshot's maps it was generated from (what the changed keys had before). */
  readonly services: Snapshot["services"];
  readonly endpoints: Snapshot["endpoints"];
  readonly node: Snapshot["node"];
  /** Rules of the service ports with rules, by key. */
  readonly byKey: Map<string, ServiceRules>;
  /** Per-service nat chains in the kernel after that restore. */
  readonly activeChains: Set<string>;
  /** Counts of the whole ruleset as written (see RuleCounts). */
  readonly counts: RuleCounts;
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
  /**
   * The top-level chains (and the filter table) are not in `text`: the kernel's are current. Only
   * with `previous`; `text` is then empty when nothing at all needs writing.
   */
  readonly topLevelUnchanged: boolean;
  /** For the next partial generation, once this restore has succeeded. */
  readonly memory: RulesMemory;
  /**
   * The top-level chains alone, as a restore input lists them (in `text` they are interleaved with
   * the per-service ones): about a twentieth of a full input, for comparing with the kernel's.
   */
  topLevelText(): string;
}

const INVALID_DROPPED_COUNTER = "ct_state_invalid_dropped_pkts";
const NODEPORTS_JUMP_COMMENT = `"kubernetes service nodeports; NOTE: this must be the last rule in this chain"`;
const NO_ENDPOINTS: readonly Endpoint[] = Object.freeze([]);

/**
 * Options seen recently, so that an equal options object rebuilt by the caller on every sync still
 * lets per-service results be reused (they are remembered against the options object).
 */
const recentOptions: RuleOptions[] = [];

function canonicalOptions(options: RuleOptions): RuleOptions {
  for (const seen of recentOptions) if (sameRuleOptions(seen, options)) return seen;
  recentOptions.unshift(options);
  if (recentOptions.length > 4) recentOptions.pop();
  return options;
}

/**
 * Per-service results are reused while the service port object, its endpoint list, the node object,
 * the options (by value) and `categorize` are unchanged: snapshots share unchanged objects.
 */
export function generateRules(
  snapshot: Snapshot,
  family: IPFamily,
  givenOptions: RuleOptions,
  context: GenerateContext = {},
): GeneratedRules {
  const options = canonicalOptions(givenOptions);
  const { categorize = categorizeEndpoints, changed, existingChains } = context;
  // Incremental only against a memory of the same family and options: the fixed rules depend on them.
  const previous =
    changed !== undefined && context.previous?.family === family && context.previous.options === options
      ? context.previous
      : undefined;
  if (previous !== undefined && changed !== undefined) {
    const incremental = changedOnly(snapshot, family, options, categorize, changed, previous);
    if (incremental !== undefined) return incremental;
  }
  const node = snapshot.node;
  const isIPv6 = family === "IPv6";
  const mark = masqueradeMark(options.masqueradeBit);
  const nodePortAddresses =
    options.nodePortAddresses === "all" ? "all" : options.nodePortAddresses.filter((ip) => familyOf(ip) === family);
  const localhostNodePorts =
    !isIPv6 &&
    options.localhostNodePorts &&
    (nodePortAddresses === "all" || nodePortAddresses.some((ip) => isLoopback(ip)));

  // One walk over the snapshot: this family's service ports with rules, their endpoints, and the
  // endpoint count, which must be known before any rule is written (large-cluster mode).
  const ports: ServicePort[] = [];
  const portEndpoints: (readonly Endpoint[])[] = [];
  let totalEndpoints = 0;
  snapshot.services.forEach((sp) => {
    if (sp.family !== family) return;
    const list = snapshot.endpoints.get(sp.key);
    if (list !== undefined) totalEndpoints += list.length;
    if (sp.clusterIP === "" || sp.clusterIP === "None") return;
    ports.push(sp);
    portEndpoints.push(list ?? NO_ENDPOINTS);
  });
  const largeClusterMode = totalEndpoints > options.largeClusterEndpointsThreshold;
  const env = rulesEnv(snapshot, family, options, categorize, largeClusterMode);

  // Output sections in upstream's order; each holds whole lines ending in "\n".
  const filterChains: string[] = [];
  const filterRules: string[] = [];
  const natChains: string[] = [];
  const natRules: string[] = [];
  let filterChainCount = 0;
  let filterRuleCount = 0;
  let natChainCount = 0;
  let natRuleCount = 0;
  let skippedRules = 0;

  for (const chain of FILTER_TOP_LEVEL_CHAINS) filterChains.push(`${chainLine(chain)}\n`);
  filterChainCount += FILTER_TOP_LEVEL_CHAINS.length;
  for (const chain of NAT_TOP_LEVEL_CHAINS) natChains.push(`${chainLine(chain)}\n`);
  natChainCount += NAT_TOP_LEVEL_CHAINS.length;

  // Top-level nat rules, also kept apart from the per-service ones for topLevelText().
  const natTop: string[] = [];
  natTop.push(
    `-A ${KUBE_POSTROUTING} -m mark ! --mark ${mark}/${mark} -j RETURN\n`,
    // Clearing the mark keeps a packet that goes through the stack again from being masqueraded twice.
    `-A ${KUBE_POSTROUTING} -j MARK --xor-mark ${mark}\n`,
    `-A ${KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE${
      options.randomFully ? " --random-fully" : ""
    }\n`,
    `-A ${KUBE_MARK_MASQ} -j MARK --or-mark ${mark}\n`,
  );
  natRules.push(...natTop);
  natRuleCount += 4;

  if (localhostNodePorts) {
    // route_localnet opens 127.0.0.0/8 to the network; this rule (shared with kubelet) closes it again.
    filterChains.push(`${chainLine(KUBE_FIREWALL)}\n`);
    filterChainCount++;
    filterRules.push(
      `-A ${KUBE_FIREWALL} -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n`,
    );
    filterRuleCount++;
  }

  // With a previous memory, chain sets are updated for the changed service ports only.
  const active = previous?.activeChains ?? new Set<string>();
  const byKey = new Map<string, ServiceRules>();
  // Own chains of the changed service ports now (incremental mode), written or unchanged.
  const changedChains: string[] = [];
  let servicePorts = 0;
  let noLocalEndpointsInternal = 0;
  let noLocalEndpointsExternal = 0;

  for (let i = 0; i < ports.length; i++) {
    const sp = ports[i] as ServicePort;
    const list = portEndpoints[i] as readonly Endpoint[];
    // With a previous memory only the changed service ports can need their text written.
    const rules = serviceRules(sp, list, env, changed === undefined || changed.has(sp.key));
    servicePorts++;
    byKey.set(sp.key, rules);
    if (rules.noLocalEndpointsInternal) noLocalEndpointsInternal++;
    if (rules.noLocalEndpointsExternal) noLocalEndpointsExternal++;
    if (rules.filterRuleCount > 0) {
      filterRules.push(rules.filterRules);
      filterRuleCount += rules.filterRuleCount;
    }
    if (rules.natTopRuleCount > 0) {
      natRules.push(rules.natTopRules);
      natTop.push(rules.natTopRules);
      natRuleCount += rules.natTopRuleCount;
    }
    if (previous === undefined) for (const chain of rules.chains) active.add(chain);
    const before = previous?.byKey.get(sp.key);
    if (previous !== undefined && changed?.has(sp.key)) changedChains.push(...rules.chains);
    const rewrite = changed === undefined || (changed.has(sp.key) && (before === undefined || !sameOwnRules(before, rules)));
    if (rewrite) {
      if (rules.chains.length > 0) natChains.push(rules.natChains);
      natChainCount += rules.chains.length;
      if (rules.natRuleCount > 0) natRules.push(rules.natRules);
      natRuleCount += rules.natRuleCount;
    } else {
      skippedRules += rules.natRuleCount;
    }
  }

  const deletedChains: string[] = [];
  if (previous !== undefined) {
    // Stale chains can only be those of changed service ports: the previous restore left no others.
    const stale: string[] = [];
    for (const key of changed ?? []) {
      const before = previous.byKey.get(key);
      if (before === undefined || before === byKey.get(key)) continue;
      for (const chain of before.chains) if (active.delete(chain)) stale.push(chain);
    }
    for (const chain of changedChains) active.add(chain);
    for (const chain of stale) {
      if (active.has(chain)) continue;
      natChains.push(`${chainLine(chain)}\n`);
      natRules.push(`-X ${chain}\n`);
      deletedChains.push(chain);
    }
    natChainCount += deletedChains.length;
  } else if (existingChains !== undefined) {
    for (const chain of existingChains) {
      if (active.has(chain) || !isServiceChainName(chain)) continue;
      // Declaring the chain flushes it, so nothing references or fills it when -X runs.
      natChains.push(`${chainLine(chain)}\n`);
      natRules.push(`-X ${chain}\n`);
      deletedChains.push(chain);
    }
    natChainCount += deletedChains.length;
  }

  // The jump to KUBE-NODEPORTS must stay the last rule of KUBE-SERVICES: it matches any local destination.
  const nodePortJumps: string[] = [];
  if (nodePortAddresses === "all") {
    const notLocalhost = isIPv6 ? " ! -d ::1/128" : localhostNodePorts ? "" : " ! -d 127.0.0.0/8";
    nodePortJumps.push(
      `-A ${KUBE_SERVICES} -m comment --comment ${NODEPORTS_JUMP_COMMENT} -m addrtype --dst-type LOCAL${notLocalhost} -j ${KUBE_NODEPORTS}\n`,
    );
  } else {
    for (const ip of nodePortAddresses) {
      if (isLoopback(ip) && !localhostNodePorts) continue;
      nodePortJumps.push(`-A ${KUBE_SERVICES} -m comment --comment ${NODEPORTS_JUMP_COMMENT} -d ${ip} -j ${KUBE_NODEPORTS}\n`);
    }
  }
  natRules.push(...nodePortJumps);
  natTop.push(...nodePortJumps);
  natRuleCount += nodePortJumps.length;

  if (!options.conntrackTCPLiberal) {
    // Without tcp_be_liberal, an INVALID packet would bypass DNAT and reach the pod's peer as a stray RST.
    filterRules.push(
      `-A ${KUBE_FORWARD} -m conntrack --ctstate INVALID${
        options.nfacctCounters.ctStateInvalidDropped ? ` -m nfacct --nfacct-name ${INVALID_DROPPED_COUNTER}` : ""
      } -j DROP\n`,
    );
    filterRuleCount++;
  }
  // Marked packets are forwarded even where the FORWARD policy is DROP (NodePort traffic to other nodes' pods).
  filterRules.push(
    `-A ${KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" -m mark --mark ${mark}/${mark} -j ACCEPT\n`,
    `-A ${KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n`,
  );
  filterRuleCount += 2;

  const text = [
    "*filter\n",
    ...filterChains,
    ...filterRules,
    "COMMIT\n*nat\n",
    ...natChains,
    ...natRules,
    "COMMIT\n",
  ].join("");
  byKey.forEach(releaseRuleText);

  const counts: RuleCounts = {
    servicePorts,
    endpoints: totalEndpoints,
    filterChains: filterChainCount,
    filterRules: filterRuleCount,
    natChains: natChainCount,
    natRules: natRuleCount,
    natRulesTotal: natRuleCount + skippedRules,
    deletedChains: deletedChains.length,
    noLocalEndpointsInternal,
    noLocalEndpointsExternal,
    largeClusterMode,
  };
  return {
    text,
    activeNatChains: active,
    deletedChains,
    counts,
    partial: changed !== undefined,
    topLevelUnchanged: false,
    topLevelText: () =>
      [
        "*filter\n",
        ...filterChains,
        ...filterRules,
        "COMMIT\n*nat\n",
        ...NAT_TOP_LEVEL_CHAINS.map((chain) => `${chainLine(chain)}\n`),
        ...natTop,
        "COMMIT\n",
      ].join(""),
    memory: {
      family,
      options,
      largeClusterMode,
      services: snapshot.services,
      endpoints: snapshot.endpoints,
      node: snapshot.node,
      byKey,
      activeChains: active,
      counts,
    },
  };
}

function rulesEnv(
  snapshot: Snapshot,
  family: IPFamily,
  options: RuleOptions,
  categorize: CategorizeEndpoints,
  largeClusterMode: boolean,
): ServiceRulesEnv {
  const nodePortAddresses =
    options.nodePortAddresses === "all" ? "all" : options.nodePortAddresses.filter((ip) => familyOf(ip) === family);
  const localhostNodePorts =
    family === "IPv4" &&
    options.localhostNodePorts &&
    (nodePortAddresses === "all" || nodePortAddresses.some((ip) => isLoopback(ip)));
  return {
    node: snapshot.node,
    options,
    categorize,
    largeClusterMode,
    local: localTrafficMatch(options, family, snapshot.node),
    nodeIP: options.nodeIPs.find((ip) => familyOf(ip) === family),
    countLocalhostNodePorts: localhostNodePorts && options.nfacctCounters.localhostNodePortsAccepted,
  };
}

/**
 * A partial generation in O(changed service ports), when none of them adds or removes a service
 * port, changes its rules in a top-level chain or flips large-cluster mode: the top-level chains
 * (and the filter table) are then left out, since the kernel's are current, and only the changed
 * service ports' own chains are written. Undefined when that does not hold.
 */
function changedOnly(
  snapshot: Snapshot,
  family: IPFamily,
  options: RuleOptions,
  categorize: CategorizeEndpoints,
  changed: ReadonlySet<string>,
  previous: RulesMemory,
): GeneratedRules | undefined {
  // Every service port's rules depend on the node (its labels, addresses); the model makes that a full sync anyway.
  if (snapshot.node !== previous.node) return undefined;
  let totalEndpoints = previous.counts.endpoints;
  for (const key of changed) {
    if (previous.services.get(key)?.family === family) totalEndpoints -= previous.endpoints.get(key)?.length ?? 0;
    if (snapshot.services.get(key)?.family === family) totalEndpoints += snapshot.endpoints.get(key)?.length ?? 0;
  }
  const largeClusterMode = totalEndpoints > options.largeClusterEndpointsThreshold;
  if (largeClusterMode !== previous.largeClusterMode) return undefined;
  const env = rulesEnv(snapshot, family, options, categorize, largeClusterMode);

  const updates: [string, ServiceRules, ServiceRules][] = [];
  for (const key of changed) {
    const before = previous.byKey.get(key);
    const sp = snapshot.services.get(key);
    if (!hasRules(sp, family)) {
      if (before !== undefined) return undefined;
      continue;
    }
    if (before === undefined) return undefined;
    const rules = serviceRules(sp, snapshot.endpoints.get(key) ?? NO_ENDPOINTS, env);
    if (rules === before) continue;
    if (rules.filterRules !== before.filterRules || rules.natTopRules !== before.natTopRules) return undefined;
    updates.push([key, before, rules]);
  }

  // From here on the memory is updated in place.
  const active = previous.activeChains;
  const natChains: string[] = [];
  const natRules: string[] = [];
  let natChainCount = 0;
  let natRuleCount = 0;
  let natRulesTotal = previous.counts.natRulesTotal;
  let noLocalInternal = previous.counts.noLocalEndpointsInternal;
  let noLocalExternal = previous.counts.noLocalEndpointsExternal;
  const stale: string[] = [];
  for (const [key, before, rules] of updates) {
    previous.byKey.set(key, rules);
    natRulesTotal += rules.natRuleCount - before.natRuleCount;
    noLocalInternal += Number(rules.noLocalEndpointsInternal) - Number(before.noLocalEndpointsInternal);
    noLocalExternal += Number(rules.noLocalEndpointsExternal) - Number(before.noLocalEndpointsExternal);
    for (const chain of before.chains) if (active.delete(chain)) stale.push(chain);
  }
  for (const [, before, rules] of updates) {
    for (const chain of rules.chains) active.add(chain);
    // An equal rendering (e.g. a new but equal endpoint list) needs no rewrite.
    if (sameOwnRules(before, rules)) continue;
    if (rules.chains.length > 0) natChains.push(rules.natChains);
    natChainCount += rules.chains.length;
    if (rules.natRuleCount > 0) natRules.push(rules.natRules);
    natRuleCount += rules.natRuleCount;
  }
  const deletedChains = stale.filter((chain) => !active.has(chain));
  // Declaring a chain flushes it, so nothing references or fills it when -X runs.
  for (const chain of deletedChains) natChains.push(`${chainLine(chain)}\n`);
  for (const chain of deletedChains) natRules.push(`-X ${chain}\n`);
  natChainCount += deletedChains.length;

  const counts: RuleCounts = {
    ...previous.counts,
    endpoints: totalEndpoints,
    natChains: natChainCount,
    natRules: natRuleCount,
    natRulesTotal,
    deletedChains: deletedChains.length,
    noLocalEndpointsInternal: noLocalInternal,
    noLocalEndpointsExternal: noLocalExternal,
  };
  const text = natChains.length === 0 ? "" : ["*nat\n", ...natChains, ...natRules, "COMMIT\n"].join("");
  for (const [, , rules] of updates) releaseRuleText(rules);
  return {
    text,
    activeNatChains: active,
    deletedChains,
    counts,
    partial: true,
    topLevelUnchanged: true,
    topLevelText: () => {
      throw new Error("top-level chains were not generated: they are unchanged");
    },
    memory: { ...previous, services: snapshot.services, endpoints: snapshot.endpoints, counts },
  };
}
