/**
 * The ipvs mode's pure planning: a snapshot becomes what the kernel should hold — virtual servers
 * with their real servers, ipset members, addresses on the dummy interface kube-ipvs0, and the
 * iptables companion rules that use the sets (as upstream kube-proxy's ipvs proxier builds them).
 *
 * Planning is per service port (`planServicePort`), so a partial sync re-plans only the changed
 * ports; `DesiredState` adds the per-port pieces up with reference counts (two ports may want the
 * same member or address) and reports what appeared and disappeared.
 */
import { cidrContains } from "../../config/index.ts";
import { ipFamilyOf } from "../../model/ip.ts";
import type { Endpoint, IPFamily, NodeInfo, ServicePort, Snapshot } from "../../model/types.ts";
import { type Ipset, ipsetLine } from "../../system/ipset.ts";
import { canonicalAddress, ipvsLine, type RealServer, type VirtualServer, virtualServerKey } from "../../system/ipvs.ts";
import type { CategorizeEndpoints } from "../iptables/service-rules.ts";
import { localTrafficMatch, masqueradeMark, type RuleOptions } from "../iptables/options.ts";
import { entry, SET_INFO, type SetId, setDefinition, setInfo, setName } from "./sets.ts";

export const DUMMY_INTERFACE = "kube-ipvs0";
export const DEFAULT_SCHEDULER = "rr";

/** Facts a plan needs besides the snapshot; node facts come from the last full sync. */
export interface IpvsPlanEnv {
  /** ipvs.scheduler; "" means rr. */
  readonly scheduler: string;
  readonly categorize: CategorizeEndpoints;
  /** Addresses NodePort virtual servers listen on (any family; each port uses its own). */
  readonly nodePortIPs: readonly string[];
  /** Local addresses not on kube-ipvs0: an external or LB IP already there is not bound again. */
  readonly nodeAddresses: ReadonlySet<string>;
  /** This node's IPs; the first of a family decides whether LB source ranges let the node in. */
  readonly nodeIPs: readonly string[];
  readonly node: NodeInfo;
}

/** A load-balancer IP:port the node itself may not reach (its source ranges leave the node out). */
export interface BlockedFromNode {
  readonly ip: string;
  readonly protocol: string;
  readonly port: number;
}

/** What one service port wants. */
export interface ServicePortPlan {
  readonly family: IPFamily;
  readonly virtualServers: readonly VirtualServer[];
  /** [set id, member]. */
  readonly members: readonly (readonly [SetId, string])[];
  /** Addresses for kube-ipvs0. */
  readonly bound: readonly string[];
  readonly blockedFromNode: readonly BlockedFromNode[];
}

function realServers(endpoints: readonly Endpoint[]): RealServer[] {
  const seen = new Set<string>();
  const out: RealServer[] = [];
  for (const ep of endpoints) {
    const id = `${ep.ip}|${ep.port}`;
    if (seen.has(id)) continue;
    seen.add(id);
    out.push({ address: canonicalAddress(ep.ip), port: ep.port, forwarding: "masq", weight: 1 });
  }
  return out;
}

/** ipset prints a host-length net without its prefix. */
function setNet(cidr: string): string {
  const trimmed = cidr.trim();
  if (trimmed.endsWith("/32") && !trimmed.includes(":")) return trimmed.slice(0, -3);
  if (trimmed.endsWith("/128") && trimmed.includes(":")) return canonicalAddress(trimmed.slice(0, -4));
  return trimmed;
}

export function planServicePort(sp: ServicePort, endpoints: readonly Endpoint[], env: IpvsPlanEnv): ServicePortPlan {
  const family = sp.family;
  const protocol = sp.protocol.toLowerCase();
  const scheduler = env.scheduler === "" ? DEFAULT_SCHEDULER : env.scheduler;
  const persistenceTimeout = sp.sessionAffinity.type === "ClientIP" ? sp.sessionAffinity.timeoutSeconds : 0;
  // upstream sets the source-hash flag (mh-port) for the maglev scheduler
  const flags = scheduler === "mh" ? ["mh-port"] : [];
  const vsProtocol = protocol as VirtualServer["protocol"];

  const { clusterEndpoints, localEndpoints } = env.categorize(sp, endpoints, env.node);
  // Local policy falls back to the cluster endpoints (empty when the port never uses them), as upstream.
  const pick = (onlyLocal: boolean) => (onlyLocal && localEndpoints.length > 0 ? localEndpoints : clusterEndpoints);
  const internal = realServers(pick(sp.internalPolicyLocal));
  const external = realServers(pick(sp.externalPolicyLocal));
  const vs = (address: string, port: number, reals: readonly RealServer[]): VirtualServer => ({
    protocol: vsProtocol,
    address: canonicalAddress(address),
    port,
    scheduler,
    persistenceTimeout,
    flags,
    realServers: reals,
  });

  const virtualServers: VirtualServer[] = [];
  const members: [SetId, string][] = [];
  const bound: string[] = [];
  const blockedFromNode: BlockedFromNode[] = [];

  for (const ep of endpoints) {
    if (!ep.isLocal) continue;
    members.push(["loopBack", entry.ipPortIP(canonicalAddress(ep.ip), protocol, ep.port, canonicalAddress(ep.ip))]);
  }

  if (sp.clusterIP !== "" && sp.clusterIP !== "None") {
    const ip = canonicalAddress(sp.clusterIP);
    members.push(["clusterIP", entry.ipPort(ip, protocol, sp.port)]);
    virtualServers.push(vs(ip, sp.port, internal));
    bound.push(ip);
  }

  for (const raw of sp.externalIPs) {
    const ip = canonicalAddress(raw);
    members.push([sp.externalPolicyLocal ? "externalIPLocal" : "externalIP", entry.ipPort(ip, protocol, sp.port)]);
    virtualServers.push(vs(ip, sp.port, external));
    if (!env.nodeAddresses.has(ip)) bound.push(ip);
  }

  const nodeIP = env.nodeIPs.find((ip) => ipFamilyOf(ip) === family);
  for (const raw of sp.loadBalancerIPs) {
    const ip = canonicalAddress(raw);
    const member = entry.ipPort(ip, protocol, sp.port);
    members.push(["loadBalancer", member]);
    if (sp.externalPolicyLocal) members.push(["loadBalancerLocal", member]);
    if (sp.loadBalancerSourceRanges.length > 0) {
      members.push(["loadBalancerFW", member]);
      let allowFromNode = false;
      for (const cidr of sp.loadBalancerSourceRanges) {
        members.push(["loadBalancerSourceCIDR", entry.ipPortNet(ip, protocol, sp.port, setNet(cidr))]);
        if (nodeIP !== undefined && cidrContains(cidr.trim(), nodeIP)) allowFromNode = true;
      }
      // Traffic a node sends to its own LB IP never leaves it, so its source is the LB IP itself.
      if (allowFromNode) members.push(["loadBalancerSourceIP", entry.ipPortIP(ip, protocol, sp.port, ip)]);
      else blockedFromNode.push({ ip, protocol, port: sp.port });
    }
    virtualServers.push(vs(ip, sp.port, external));
    if (!env.nodeAddresses.has(ip)) bound.push(ip);
  }

  if (sp.nodePort !== 0) {
    const nodeIPs = env.nodePortIPs.filter((ip) => ipFamilyOf(ip) === family).map(canonicalAddress);
    if (nodeIPs.length > 0) {
      const local = sp.externalPolicyLocal;
      if (protocol === "sctp") {
        for (const ip of nodeIPs) {
          members.push(["nodePortSCTP", entry.ipPort(ip, protocol, sp.nodePort)]);
          if (local) members.push(["nodePortLocalSCTP", entry.ipPort(ip, protocol, sp.nodePort)]);
        }
      } else {
        const tcp = protocol === "tcp";
        members.push([tcp ? "nodePortTCP" : "nodePortUDP", entry.port(sp.nodePort)]);
        if (local) members.push([tcp ? "nodePortLocalTCP" : "nodePortLocalUDP", entry.port(sp.nodePort)]);
      }
      for (const ip of nodeIPs) virtualServers.push(vs(ip, sp.nodePort, external));
    }
  }

  if (sp.healthCheckNodePort !== 0) members.push(["healthCheckNodePort", entry.port(sp.healthCheckNodePort)]);
  return { family, virtualServers, members, bound, blockedFromNode };
}

function bump<K>(map: Map<K, number>, key: K, by: number): "added" | "removed" | undefined {
  const before = map.get(key) ?? 0;
  const after = before + by;
  if (after <= 0) map.delete(key);
  else map.set(key, after);
  if (before === 0 && after > 0) return "added";
  if (before > 0 && after <= 0) return "removed";
  return undefined;
}

/** What a change of the desired state touched. */
export interface DesiredDelta {
  /** Virtual server keys whose wanted definition may have changed (present or gone). */
  readonly virtualServers: Set<string>;
  /** Set name → members that appeared / disappeared. */
  readonly addedMembers: Map<string, string[]>;
  readonly removedMembers: Map<string, string[]>;
  readonly addedAddresses: string[];
  readonly removedAddresses: string[];
  /** A family was planned for the first time. */
  newFamily: boolean;
  /** Set name (or blocked LB key) → whether it was empty (absent) before the first change in this delta. */
  readonly emptyBefore: Map<string, boolean>;
}

function emptyDelta(): DesiredDelta {
  return {
    virtualServers: new Set(),
    addedMembers: new Map(),
    removedMembers: new Map(),
    addedAddresses: [],
    removedAddresses: [],
    newFamily: false,
    emptyBefore: new Map(),
  };
}

function pushTo(map: Map<string, string[]>, key: string, value: string): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

/**
 * Everything the snapshot wants, as reference-counted sums of per-service-port plans. `replace`
 * swaps one port's plan and returns what changed in the sums.
 */
export class DesiredState {
  private readonly plans = new Map<string, ServicePortPlan>();
  /** Virtual server key → the plans that define it (normally one). */
  private readonly vsOwners = new Map<string, Map<string, VirtualServer>>();
  /** Set name → member → references. */
  private readonly members = new Map<string, Map<string, number>>();
  private readonly addresses = new Map<string, number>();
  private readonly blocked = new Map<string, number>();
  /** Families ever planned; their sets and rules stay while kproxy runs. */
  readonly families = new Set<IPFamily>();

  /** Keeps a family's sets and rules even while it has no service port. */
  addFamily(family: IPFamily): void {
    this.families.add(family);
  }

  get servicePorts(): number {
    return this.plans.size;
  }

  replace(key: string, plan: ServicePortPlan | undefined, delta: DesiredDelta = emptyDelta()): DesiredDelta {
    const old = this.plans.get(key);
    if (old) this.account(key, old, -1, delta);
    if (plan) {
      this.plans.set(key, plan);
      if (!this.families.has(plan.family)) {
        this.families.add(plan.family);
        delta.newFamily = true;
      }
      this.account(key, plan, 1, delta);
    } else {
      this.plans.delete(key);
    }
    return delta;
  }

  private account(key: string, plan: ServicePortPlan, by: 1 | -1, delta: DesiredDelta): void {
    for (const vs of plan.virtualServers) {
      const id = virtualServerKey(vs);
      delta.virtualServers.add(id);
      let owners = this.vsOwners.get(id);
      if (by > 0) {
        if (!owners) this.vsOwners.set(id, (owners = new Map()));
        owners.set(key, vs);
      } else if (owners) {
        owners.delete(key);
        if (owners.size === 0) this.vsOwners.delete(id);
      }
    }
    for (const [id, member] of plan.members) {
      const name = setName(id, plan.family);
      let set = this.members.get(name);
      if (!set) this.members.set(name, (set = new Map()));
      if (!delta.emptyBefore.has(name)) delta.emptyBefore.set(name, set.size === 0);
      const change = bump(set, member, by);
      if (change === "added") {
        if (!removeFrom(delta.removedMembers, name, member)) pushTo(delta.addedMembers, name, member);
      } else if (change === "removed") {
        if (!removeFrom(delta.addedMembers, name, member)) pushTo(delta.removedMembers, name, member);
      }
    }
    for (const ip of plan.bound) {
      const change = bump(this.addresses, ip, by);
      if (change === "added") {
        if (!removeValue(delta.removedAddresses, ip)) delta.addedAddresses.push(ip);
      } else if (change === "removed") {
        if (!removeValue(delta.addedAddresses, ip)) delta.removedAddresses.push(ip);
      }
    }
    for (const b of plan.blockedFromNode) {
      const id = `${b.protocol}|${b.ip}|${b.port}`;
      if (!delta.emptyBefore.has(`blocked ${id}`)) delta.emptyBefore.set(`blocked ${id}`, !this.blocked.has(id));
      bump(this.blocked, id, by);
    }
  }

  /** Whether the companion rules may differ after `delta`: a set turned empty or non-empty, a blocked LB came or went. */
  rulesChanged(delta: DesiredDelta): boolean {
    if (delta.newFamily) return true;
    for (const [name, wasEmpty] of delta.emptyBefore) {
      const emptyNow = name.startsWith("blocked ") ? !this.blocked.has(name.slice("blocked ".length)) : this.isEmptySet(name);
      if (wasEmpty !== emptyNow) return true;
    }
    return false;
  }

  /** The wanted virtual server for a key; when two ports claim one, the first wins. */
  virtualServer(key: string): VirtualServer | undefined {
    const owners = this.vsOwners.get(key);
    if (!owners) return undefined;
    for (const vs of owners.values()) return vs;
    return undefined;
  }

  virtualServers(): VirtualServer[] {
    const out: VirtualServer[] = [];
    for (const key of this.vsOwners.keys()) out.push(this.virtualServer(key) as VirtualServer);
    return out;
  }

  boundAddresses(): string[] {
    return [...this.addresses.keys()];
  }

  isEmptySet(name: string): boolean {
    return (this.members.get(name)?.size ?? 0) === 0;
  }

  /** Every owned set of the planned families with its full membership (KUBE-IPVS-IPS included). */
  ipsets(): Ipset[] {
    const out: Ipset[] = [];
    for (const family of this.families) {
      for (const info of SET_INFO) {
        const name = setName(info.id, family);
        out.push(setDefinition(info.id, family, [...(this.members.get(name)?.keys() ?? [])]));
      }
    }
    return out;
  }

  blockedFromNode(family: IPFamily): BlockedFromNode[] {
    const out: BlockedFromNode[] = [];
    for (const key of this.blocked.keys()) {
      const [protocol, ip, port] = key.split("|") as [string, string, string];
      if ((ipFamilyOf(ip) ?? "IPv4") === family) out.push({ ip, protocol, port: Number(port) });
    }
    return out;
  }
}

function removeFrom(map: Map<string, string[]>, key: string, value: string): boolean {
  const list = map.get(key);
  if (!list) return false;
  const i = list.indexOf(value);
  if (i < 0) return false;
  list.splice(i, 1);
  if (list.length === 0) map.delete(key);
  return true;
}

function removeValue(list: string[], value: string): boolean {
  const i = list.indexOf(value);
  if (i < 0) return false;
  list.splice(i, 1);
  return true;
}

/**
 * KUBE-IPVS-IPS holds the addresses bound to kube-ipvs0 (per family); its members follow the
 * address changes of a delta.
 */
export function applyAddressMembers(delta: DesiredDelta): void {
  for (const ip of delta.addedAddresses) pushTo(delta.addedMembers, setName("ipvsIPs", ipFamilyOf(ip) ?? "IPv4"), ip);
  for (const ip of delta.removedAddresses) pushTo(delta.removedMembers, setName("ipvsIPs", ipFamilyOf(ip) ?? "IPv4"), ip);
}

/** Builds the desired state of a whole snapshot. */
export function planSnapshot(snapshot: Snapshot, env: IpvsPlanEnv): DesiredState {
  const state = new DesiredState();
  for (const [key, sp] of snapshot.services) {
    state.replace(key, planServicePort(sp, snapshot.endpoints.get(key) ?? [], env));
  }
  return state;
}

/** The per-family sets with KUBE-IPVS-IPS filled from the bound addresses. */
export function wantedIpsets(state: DesiredState): Ipset[] {
  const bound = state.boundAddresses();
  return state.ipsets().map((set) => {
    for (const family of ["IPv4", "IPv6"] as const) {
      if (set.name === setName("ipvsIPs", family)) {
        return { ...set, entries: bound.filter((ip) => (ipFamilyOf(ip) ?? "IPv4") === family) };
      }
    }
    return set;
  });
}

export interface CompanionRuleOptions {
  readonly rule: RuleOptions;
  readonly node: NodeInfo;
}

/** Chains of the companion rules, per table, in upstream's order. */
export const NAT_CHAINS = ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ"] as const;
export const FILTER_CHAINS = [
  "KUBE-FORWARD",
  "KUBE-NODE-PORT",
  "KUBE-PROXY-FIREWALL",
  "KUBE-SOURCE-RANGES-FIREWALL",
  "KUBE-IPVS-FILTER",
  "KUBE-IPVS-OUT-FILTER",
] as const;

/** Jumps from built-in chains into the companion chains, ensured with -C/-I (upstream's iptablesJumpChain). */
export const IPVS_JUMP_RULES: readonly { table: "nat" | "filter"; chain: string; target: string; comment: string }[] = [
  { table: "nat", chain: "OUTPUT", target: "KUBE-SERVICES", comment: "kubernetes service portals" },
  { table: "nat", chain: "PREROUTING", target: "KUBE-SERVICES", comment: "kubernetes service portals" },
  { table: "nat", chain: "POSTROUTING", target: "KUBE-POSTROUTING", comment: "kubernetes postrouting rules" },
  { table: "filter", chain: "FORWARD", target: "KUBE-FORWARD", comment: "kubernetes forwarding rules" },
  { table: "filter", chain: "INPUT", target: "KUBE-NODE-PORT", comment: "kubernetes health check rules" },
  { table: "filter", chain: "INPUT", target: "KUBE-PROXY-FIREWALL", comment: "kube-proxy firewall rules" },
  { table: "filter", chain: "FORWARD", target: "KUBE-PROXY-FIREWALL", comment: "kube-proxy firewall rules" },
  { table: "filter", chain: "INPUT", target: "KUBE-IPVS-FILTER", comment: "kubernetes ipvs access filter" },
  { table: "filter", chain: "OUTPUT", target: "KUBE-IPVS-OUT-FILTER", comment: "kubernetes ipvs access filter" },
];

/** Sets matched by a jump or verdict, in upstream's order (ipsetWithIptablesChain). */
const SET_RULES: readonly { id: SetId; table: "nat" | "filter"; from: string; to: string; match: string; protocol?: string }[] = [
  { id: "loopBack", table: "nat", from: "KUBE-POSTROUTING", to: "MASQUERADE", match: "dst,dst,src" },
  { id: "loadBalancer", table: "nat", from: "KUBE-SERVICES", to: "KUBE-LOAD-BALANCER", match: "dst,dst" },
  { id: "loadBalancerLocal", table: "nat", from: "KUBE-LOAD-BALANCER", to: "RETURN", match: "dst,dst" },
  { id: "nodePortLocalTCP", table: "nat", from: "KUBE-NODE-PORT", to: "RETURN", match: "dst", protocol: "tcp" },
  { id: "nodePortTCP", table: "nat", from: "KUBE-NODE-PORT", to: "KUBE-MARK-MASQ", match: "dst", protocol: "tcp" },
  { id: "nodePortLocalUDP", table: "nat", from: "KUBE-NODE-PORT", to: "RETURN", match: "dst", protocol: "udp" },
  { id: "nodePortUDP", table: "nat", from: "KUBE-NODE-PORT", to: "KUBE-MARK-MASQ", match: "dst", protocol: "udp" },
  { id: "nodePortLocalSCTP", table: "nat", from: "KUBE-NODE-PORT", to: "RETURN", match: "dst,dst", protocol: "sctp" },
  { id: "nodePortSCTP", table: "nat", from: "KUBE-NODE-PORT", to: "KUBE-MARK-MASQ", match: "dst,dst", protocol: "sctp" },
  { id: "loadBalancerFW", table: "filter", from: "KUBE-PROXY-FIREWALL", to: "KUBE-SOURCE-RANGES-FIREWALL", match: "dst,dst" },
  { id: "loadBalancerSourceCIDR", table: "filter", from: "KUBE-SOURCE-RANGES-FIREWALL", to: "RETURN", match: "dst,dst,src" },
  { id: "loadBalancerSourceIP", table: "filter", from: "KUBE-SOURCE-RANGES-FIREWALL", to: "RETURN", match: "dst,dst,src" },
];

function comment(id: SetId): string {
  return `-m comment --comment "${setInfo(id).comment}"`;
}

/**
 * The iptables-restore input (for `--noflush`) of one family's companion rules. Every chain is
 * declared, so the restore replaces each chain's rules as a whole; a set that is empty gets no rule.
 */
export function companionRules(state: DesiredState, family: IPFamily, options: CompanionRuleOptions): string {
  const nat: string[] = ["*nat", ...NAT_CHAINS.map((c) => `:${c} - [0:0]`)];
  const filter: string[] = ["*filter", ...FILTER_CHAINS.map((c) => `:${c} - [0:0]`)];
  const name = (id: SetId) => setName(id, family);
  const has = (id: SetId) => id === "ipvsIPs" ? state.boundAddresses().some((ip) => (ipFamilyOf(ip) ?? "IPv4") === family) : !state.isEmptySet(name(id));
  const mark = masqueradeMark(options.rule.masqueradeBit);

  nat.push(`-A KUBE-SERVICES -s ${family === "IPv6" ? "::1/128" : "127.0.0.0/8"} -j RETURN`);
  for (const r of SET_RULES) {
    if (!has(r.id)) continue;
    const line = `-A ${r.from}${r.protocol ? ` -p ${r.protocol}` : ""} ${comment(r.id)} -m set --match-set ${name(r.id)} ${r.match} -j ${r.to}`;
    (r.table === "nat" ? nat : filter).push(line);
  }
  if (has("clusterIP")) {
    const base = `-A KUBE-SERVICES ${comment("clusterIP")} -m set --match-set ${name("clusterIP")}`;
    const local = localTrafficMatch(options.rule, family, options.node);
    if (options.rule.masqueradeAll) nat.push(`${base} dst,dst -j KUBE-MARK-MASQ`);
    else if (local) nat.push(`${base} dst,dst ${local.ifNotLocal} -j KUBE-MARK-MASQ`);
    // Without a way to tell pod traffic apart, masquerade what the node sends from a VIP.
    else nat.push(`${base} src,dst -j KUBE-MARK-MASQ`);
  }
  const externalRules = (args: string) => {
    nat.push(`${args} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT`);
    nat.push(`${args} -m addrtype --dst-type LOCAL -j ACCEPT`);
  };
  if (has("externalIP")) {
    const args = `-A KUBE-SERVICES ${comment("externalIP")} -m set --match-set ${name("externalIP")} dst,dst`;
    nat.push(`${args} -j KUBE-MARK-MASQ`);
    externalRules(args);
  }
  if (has("externalIPLocal")) {
    externalRules(`-A KUBE-SERVICES ${comment("externalIPLocal")} -m set --match-set ${name("externalIPLocal")} dst,dst`);
  }
  nat.push("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT");
  nat.push("-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ");
  filter.push("-A KUBE-SOURCE-RANGES-FIREWALL -j DROP");
  for (const b of state.blockedFromNode(family)) {
    filter.push(`-A KUBE-IPVS-OUT-FILTER -s ${b.ip} -m ipvs --vaddr ${b.ip} --vproto ${b.protocol} --vport ${b.port} -j DROP`);
  }
  // IPVS traffic is accepted at the end of KUBE-SERVICES so later nat rules cannot disturb it.
  if (has("clusterIP")) nat.push(`-A KUBE-SERVICES -m set --match-set ${name("clusterIP")} dst,dst -j ACCEPT`);
  if (has("loadBalancer")) nat.push(`-A KUBE-SERVICES -m set --match-set ${name("loadBalancer")} dst,dst -j ACCEPT`);
  filter.push(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark ${mark}/${mark} -j ACCEPT`);
  filter.push(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`);
  filter.push(`-A KUBE-NODE-PORT ${comment("healthCheckNodePort")} -m set --match-set ${name("healthCheckNodePort")} dst -j ACCEPT`);
  for (const id of ["loadBalancer", "clusterIP", "externalIP", "externalIPLocal"] as const) {
    filter.push(`-A KUBE-IPVS-FILTER -m set --match-set ${name(id)} dst,dst -j RETURN`);
  }
  filter.push(`-A KUBE-IPVS-FILTER -m set --match-set ${name("healthCheckNodePort")} dst -j RETURN`);
  filter.push(`-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set ${name("ipvsIPs")} dst -j REJECT`);
  nat.push(`-A KUBE-POSTROUTING -m mark ! --mark ${mark}/${mark} -j RETURN`);
  nat.push(`-A KUBE-POSTROUTING -j MARK --xor-mark ${mark}`);
  nat.push(
    `-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE${options.rule.randomFully ? " --random-fully" : ""}`,
  );
  nat.push(`-A KUBE-MARK-MASQ -j MARK --or-mark ${mark}`);
  nat.push("COMMIT");
  filter.push("COMMIT");
  return `${nat.join("\n")}\n${filter.join("\n")}\n`;
}

/** The plan as readable text (for --dry-run): virtual servers, addresses, sets and rules. */
export function describePlan(state: DesiredState, options: CompanionRuleOptions): string {
  const lines: string[] = [];
  lines.push(`# ipvsadm -R`);
  for (const vs of state.virtualServers()) {
    lines.push(ipvsLine.addVirtualServer(vs));
    for (const rs of vs.realServers) lines.push(ipvsLine.addRealServer(vs, rs));
  }
  lines.push(`# addresses on ${DUMMY_INTERFACE}`);
  for (const ip of state.boundAddresses()) lines.push(ip);
  lines.push("# ipset restore");
  for (const set of wantedIpsets(state)) {
    lines.push(ipsetLine.create(set));
    for (const member of set.entries) lines.push(ipsetLine.add(set.name, member));
  }
  for (const family of state.families) {
    lines.push(`# ${family}: iptables-restore --noflush`);
    lines.push(companionRules(state, family, options).trimEnd());
  }
  return `${lines.join("\n")}\n`;
}
