/**
 * The ipvs mode, applied. A full sync reads what the kernel holds (the virtual servers from
 * /proc/net/ip_vs when it is complete, else `ipvsadm -S -n`; `ipset save`; `ip -j addr show`),
 * plans the whole snapshot and writes only the difference: one `ipvsadm -R` (started first: it is
 * most of a large sync), one `ipset restore` and one `ip -batch` for kube-ipvs0's addresses, all
 * at once, and one `iptables-restore --noflush` of the companion chains per family, plus the
 * jumps into them ensured with -C/-I. A partial sync re-plans only the changed service ports and
 * diffs them against what the last sync wrote (nothing is read back), so a one-endpoint change
 * costs one short batch; its `ipvsadm -R` is started before the planning and fed afterwards.
 *
 * Neither `ipvsadm -R` nor `ipset restore` is atomic (each stops at its first bad line), and each
 * batch lists additions before deletions. The companion rules wait for the set batch when it
 * creates or destroys a set they name. After any failure the next sync is full and re-reads the
 * kernel.
 *
 * Ownership: the virtual servers kproxy manages are those on kube-ipvs0's addresses, those whose
 * address and port are members of kproxy's sets (ClusterIPs, external and LB IPs), and NodePorts
 * (a node address with a port in the NodePort sets). Everything in `excludeCIDRs` is never touched.
 */
import { availableParallelism } from "node:os";
import { cidrContains, type Config } from "../../config/index.ts";
import type { Logger } from "../../log.ts";
import type { KproxyMetrics } from "../../metrics.ts";
import { ipFamilyOf } from "../../model/ip.ts";
import { categorizeEndpoints } from "../../model/topology.ts";
import type { ChangeSet, Endpoint, IPFamily, ServicePort, Snapshot } from "../../model/types.ts";
import { type ProxierHealthCheck, ServiceHealthServer } from "../../server/service-health.ts";
import { Conntrack, type ConntrackFilter } from "../../system/conntrack.ts";
import { type Clock, realClock } from "../../system/clock.ts";
import { bunExec, type Exec } from "../../system/exec.ts";
import { diffIpsets, type Ipset, IpsetTool, ipsetLine } from "../../system/ipset.ts";
import { detectIptablesFlavour, Iptables, type IptablesFlavour } from "../../system/iptables.ts";
import { diffIpvs, Ipvsadm, type IpvsTimeouts, streamingExec, type VirtualServer, virtualServerKey } from "../../system/ipvs.ts";
import { ensureSysctl, procSysctl, type Sysctl } from "../../system/sysctl.ts";
import type { Backend, SyncResult } from "../backend.ts";
import { healthCheckState, type ServiceHealthPorts, servicePortProblem, SnapshotGuard } from "../iptables/backend.ts";
import type { RuleOptions } from "../iptables/options.ts";
import type { CategorizeEndpoints } from "../iptables/service-rules.ts";
import { staleConntrackOps } from "../iptables/conntrack-cleanup.ts";
import { applySysctls } from "../iptables/sysctls.ts";
import { hostAddresses, type LocalAddresses, resolveNodePortAddresses, ruleOptionsFromConfig } from "../iptables-options.ts";
import { familiesIn } from "../planners.ts";
import { changeAddresses, ensureDummyInterface, type NodeAddresses, readNodeAddresses } from "./addresses.ts";
import { DrainingServers, realServerId, withDraining } from "./graceful.ts";
import {
  applyAddressMembers,
  companionRules,
  type DesiredDelta,
  DesiredState,
  describePlan,
  FILTER_CHAINS,
  IPVS_JUMP_RULES,
  type IpvsPlanEnv,
  NAT_CHAINS,
  planServicePort,
  planSnapshot,
  wantedIpsets,
} from "./plan.ts";
import { isOwnedSet, setName } from "./sets.ts";

export interface IpvsBackendOptions {
  readonly exec: Exec;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics: KproxyMetrics;
  /** Flavour of iptables for the companion rules; `auto` detects it before the first sync. */
  readonly flavour: IptablesFlavour | "auto";
  readonly ruleOptions: RuleOptions;
  /** config.nodePortAddresses (CIDRs or "primary"). */
  readonly nodePortAddresses: readonly string[];
  readonly scheduler: string;
  readonly excludeCIDRs: readonly string[];
  readonly strictARP: boolean;
  /** Seconds; 0 leaves the kernel's value. */
  readonly timeouts: IpvsTimeouts;
  readonly sysctl: Sysctl;
  readonly serviceHealth?: ServiceHealthPorts;
  readonly categorize?: CategorizeEndpoints;
  /** Runs once before the first sync (conntrack settings); its failures are the callee's to log. */
  readonly prepare?: () => Promise<void>;
  /** How often draining real servers are checked between syncs (default 60 s, as upstream). */
  readonly drainCheckIntervalMs?: number;
  /** Deletes stale UDP/SCTP flows after syncs; `conntrack` through `exec` when omitted. */
  readonly conntrack?: Conntrack;
}

/** Settings IPVS needs; conntrack=1 is required (masquerading rules see IPVS traffic only with it). */
export function ipvsSysctls(strictARP: boolean): { name: string; value: number; required: boolean }[] {
  const out = [
    { name: "net.ipv4.vs.conntrack", value: 1, required: true },
    { name: "net.ipv4.vs.expire_nodest_conn", value: 1, required: false },
    { name: "net.ipv4.vs.expire_quiescent_template", value: 1, required: false },
    { name: "net.ipv4.ip_forward", value: 1, required: false },
  ];
  if (strictARP) {
    out.push({ name: "net.ipv4.conf.all.arp_ignore", value: 1, required: false });
    out.push({ name: "net.ipv4.conf.all.arp_announce", value: 2, required: false });
  }
  return out;
}

interface KernelState {
  readonly virtualServers: VirtualServer[];
  readonly ipsets: Ipset[];
  readonly addresses: NodeAddresses;
}

export class IpvsBackend implements Backend {
  readonly mode = "ipvs" as const;
  private readonly ipvs: Ipvsadm;
  private readonly ipset: IpsetTool;
  private readonly categorize: CategorizeEndpoints;
  private readonly guard: SnapshotGuard;
  private readonly draining: DrainingServers;
  private readonly stop = new AbortController();
  private flavour: IptablesFlavour | undefined;
  private started = false;
  /** Desired state as of the last successful sync; undefined forces a full sync. */
  private desired: DesiredState | undefined;
  private env: IpvsPlanEnv | undefined;
  /** Virtual servers as the last sync wrote them (draining real servers included), by key. */
  private applied = new Map<string, VirtualServer>();
  private appliedRules = new Map<IPFamily, string>();
  /** ruleCount() of appliedRules; cleared whenever appliedRules changes. */
  private countedRules: { filter: number; nat: number } | undefined;
  private readonly iptables = new Map<IPFamily, Iptables>();
  private readonly conntrack: Conntrack;
  /** The snapshot the kernel reflects, for stale UDP flow cleanup. */
  private appliedSnapshot: Snapshot | undefined;
  /** Endpoints per service port as planned, and their sum (kept up to date by partial syncs). */
  private readonly endpointsOf = new Map<string, number>();
  private endpointCount = 0;
  /** Serializes syncs and drain checks: both write ipvs and `applied`. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Stale conntrack deletions still running. */
  private housekeeping: Promise<unknown> = Promise.resolve();

  constructor(private readonly options: IpvsBackendOptions) {
    this.ipvs = new Ipvsadm(options.exec);
    this.ipset = new IpsetTool(options.exec);
    this.categorize = options.categorize ?? categorizeEndpoints;
    this.guard = new SnapshotGuard(options.logger);
    this.draining = new DrainingServers(options.exec);
    this.conntrack = options.conntrack ?? new Conntrack(options.exec);
    if (options.flavour !== "auto") this.flavour = options.flavour;
  }

  /** Resolves once the work queued so far (syncs, drain checks, conntrack cleanup) is done. */
  async settled(): Promise<void> {
    await this.queue;
    await this.housekeeping;
  }

  /** Real servers currently at weight 0 waiting for their connections to end. */
  get drainingCount(): number {
    return this.draining.size;
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }

  private async start(): Promise<IptablesFlavour> {
    if (!this.started) {
      this.started = true;
      const { sysctl, logger } = this.options;
      for (const s of ipvsSysctls(this.options.strictARP)) {
        try {
          if (await ensureSysctl(sysctl, s.name, s.value)) logger.info("Set sysctl", { name: s.name, value: s.value });
        } catch (err) {
          if (s.required) throw new Error(`cannot set ${s.name}=${s.value}, which the ipvs mode needs: ${err instanceof Error ? err.message : String(err)}`);
          logger.warn("Could not set sysctl", { name: s.name, value: s.value, err });
        }
      }
      try {
        await this.ipvs.setTimeouts(this.options.timeouts);
      } catch (err) {
        logger.error("Failed to configure IPVS timeouts", { err });
      }
      await this.options.prepare?.();
      void this.drainLoop();
    }
    if (this.flavour === undefined) {
      this.flavour = await detectIptablesFlavour(this.options.exec);
      this.options.logger.info("Using the node's iptables flavour", { flavour: this.flavour });
    }
    return this.flavour;
  }

  private async drainLoop(): Promise<void> {
    const interval = this.options.drainCheckIntervalMs ?? 60_000;
    while (!this.stop.signal.aborted) {
      await this.options.clock.sleep(interval, this.stop.signal);
      if (this.stop.signal.aborted) return;
      await this.checkDraining().catch((err) => this.options.logger.warn("Checking draining real servers failed", { err }));
    }
  }

  /** Deletes draining real servers whose connections are gone; also run after every sync. */
  checkDraining(): Promise<number> {
    return this.exclusive(async () => {
      if (this.draining.size === 0) return 0;
      const deleted = await this.draining.deleteIdle();
      for (const [vsKey, rsId] of deleted) {
        const vs = this.applied.get(vsKey);
        if (vs) this.applied.set(vsKey, { ...vs, realServers: vs.realServers.filter((rs) => realServerId(rs) !== rsId) });
      }
      if (deleted.length > 0) this.options.logger.debug(2, "Deleted drained real servers", { realServers: deleted.map(([v, r]) => `${v} -> ${r}`) });
      return deleted.length;
    });
  }

  private iptablesFor(family: IPFamily, flavour: IptablesFlavour): Iptables {
    let ipt = this.iptables.get(family);
    if (!ipt) this.iptables.set(family, (ipt = new Iptables(this.options.exec, family, flavour)));
    return ipt;
  }

  sync(snapshot: Snapshot, changes: ChangeSet): Promise<SyncResult> {
    return this.exclusive(async () => {
      const flavour = this.started && this.flavour !== undefined ? this.flavour : await this.start();
      const partial = !changes.full && this.desired !== undefined && this.env !== undefined;
      // A partial sync looks at the changed service ports only (partialSync checks each), so its
      // cost does not grow with the cluster; a full sync screens the whole snapshot.
      const clean = partial ? snapshot : this.guard.apply(snapshot);
      const previous = this.appliedSnapshot;
      let ops: ConntrackFilter[] = [];
      // As upstream: UDP flows to endpoints that are gone would keep their NAT until they time out.
      // Worked out while the kernel applies the batches, so it adds nothing to the sync's time.
      const whileApplying = () => {
        ops = staleConntrackOps(previous, clean, { categorize: this.categorize, ...(partial && previous ? { keys: changes.changed } : {}) });
      };
      let result: SyncResult;
      try {
        result = partial ? await this.partialSync(clean, changes, flavour, whileApplying) : await this.fullSync(clean, flavour, whileApplying);
      } catch (err) {
        this.desired = undefined;
        throw err;
      }
      this.appliedSnapshot = clean;
      // All stale flow groups in one `conntrack -R` (a thousand groups at the first sync of a large
      // cluster), as housekeeping off the sync's path, in order, never holding up the next sync.
      if (ops.length > 0) this.housekeeping = this.housekeeping.then(() => this.clearConntrack(ops));
      const health = this.options.serviceHealth;
      const hasHealthPort = (key: string) => (previous?.services.get(key)?.healthCheckNodePort ?? 0) !== 0 || (clean.services.get(key)?.healthCheckNodePort ?? 0) !== 0;
      if (health && (!partial || [...changes.changed].some(hasHealthPort))) {
        const { ports, localEndpoints } = healthCheckState(clean, this.categorize);
        await health.syncServices(ports);
        health.syncEndpoints(localEndpoints);
      }
      return result;
    }).then((result) => {
      // Upstream tries to delete a drained server right after giving it weight 0. Here that is
      // housekeeping after the sync (queued behind it, never overlapping the next one).
      if (this.draining.size > 0) {
        setTimeout(() => void this.checkDraining().catch((err) => this.options.logger.warn("Checking draining real servers failed", { err })), 0);
      }
      return result;
    });
  }

  /**
   * servicePortProblem, remembered per service port object: an endpoint change leaves the
   * service port as it was, so a one-endpoint sync does not screen it again.
   */
  private readonly problems = new WeakMap<ServicePort, { problem: string | undefined }>();
  private problemOf(sp: ServicePort): string | undefined {
    let known = this.problems.get(sp);
    if (!known) this.problems.set(sp, (known = { problem: servicePortProblem(sp) }));
    return known.problem;
  }

  /** Failures are logged, never thrown: the kernel's rules are right, only old flows linger. */
  private async clearConntrack(ops: readonly ConntrackFilter[]): Promise<void> {
    try {
      await this.conntrack.deleteAll(ops);
    } catch (err) {
      this.options.logger.warn("Could not delete stale conntrack entries", { err, groups: ops.length });
    }
  }

  private isExcluded(address: string): boolean {
    return this.options.excludeCIDRs.some((cidr) => {
      try {
        return cidrContains(cidr, address);
      } catch {
        return false;
      }
    });
  }

  private envFor(snapshot: Snapshot, addresses: NodeAddresses): IpvsPlanEnv {
    const others = addresses.others;
    const resolved = resolveNodePortAddresses(this.options.nodePortAddresses, snapshot.node, () => others);
    const usable = (ip: string) => !ip.startsWith("127.") && ip !== "::1" && !ip.toLowerCase().startsWith("fe80:");
    const nodePortIPs = resolved === "all" ? others.filter(usable) : resolved.filter(usable);
    return {
      scheduler: this.options.scheduler,
      categorize: this.categorize,
      nodePortIPs,
      nodeAddresses: new Set(others),
      nodeIPs: snapshot.node.addresses,
      node: snapshot.node,
    };
  }

  private async readKernel(): Promise<KernelState> {
    const [virtualServers, ipsets, addresses] = await Promise.all([this.readVirtualServers(), this.ipset.save(), readNodeAddresses(this.options.exec)]);
    return { virtualServers, ipsets, addresses };
  }

  /**
   * The kernel's virtual servers. `ipvsadm -S -n` asks the kernel once per virtual server (46-50 s
   * at 13,000 of them under emulation); /proc/net/ip_vs lists them all in one read, but is not
   * always complete: when other network namespaces hold virtual servers too, the kernel loses its
   * place between reads and leaves some of ours out (seen with Debian's 6.1). So the proc file is
   * used only when it holds every virtual server the last sync wrote, and the save otherwise: at
   * the first sync (nothing to check against), with `mh` (the proc file shows no scheduler flags,
   * and mh is the one scheduler kproxy gives flags), and whenever the proc file misses one.
   */
  private async readVirtualServers(): Promise<VirtualServer[]> {
    if (this.options.scheduler === "mh" || this.applied.size === 0) return this.ipvs.save();
    const { virtualServers } = await this.ipvs.table();
    const listed = new Set(virtualServers.map(virtualServerKey));
    for (const key of this.applied.keys()) {
      if (!listed.has(key)) {
        this.options.logger.debug(2, "The proc file misses a virtual server; reading ipvsadm -S", { virtualServer: key });
        return this.ipvs.save();
      }
    }
    return virtualServers;
  }

  /** Virtual servers of the kernel that kproxy manages (see the file comment). */
  private ownedVirtualServers(kernel: KernelState, wanted: ReadonlySet<string>, nodePortIPs: readonly string[]): VirtualServer[] {
    const dummy = new Set(kernel.addresses.dummy);
    const members = new Map<string, Set<string>>();
    for (const set of kernel.ipsets) if (isOwnedSet(set.name)) members.set(set.name, new Set(set.entries.map((e) => e.toLowerCase())));
    const inSet = (id: Parameters<typeof setName>[0], family: IPFamily, member: string) => members.get(setName(id, family))?.has(member.toLowerCase()) ?? false;
    const nodeIPs = new Set([...nodePortIPs, ...kernel.addresses.others]);
    return kernel.virtualServers.filter((vs) => {
      if (this.isExcluded(vs.address)) return false;
      if (wanted.has(virtualServerKey(vs)) || dummy.has(vs.address)) return true;
      const family = ipFamilyOf(vs.address) ?? "IPv4";
      const ipPort = `${vs.address},${vs.protocol}:${vs.port}`;
      if (inSet("clusterIP", family, ipPort) || inSet("externalIP", family, ipPort) || inSet("externalIPLocal", family, ipPort)) return true;
      if (inSet("loadBalancer", family, ipPort)) return true;
      if (!nodeIPs.has(vs.address)) return false;
      if (vs.protocol === "sctp") return inSet("nodePortSCTP", family, ipPort);
      return inSet(vs.protocol === "tcp" ? "nodePortTCP" : "nodePortUDP", family, String(vs.port));
    });
  }

  /** `whileApplying` runs once the kernel batches are under way (work that needs no result of them). */
  private async fullSync(snapshot: Snapshot, flavour: IptablesFlavour, whileApplying: () => void): Promise<SyncResult> {
    const { logger } = this.options;
    // The companion chains are checked with one save per family; it needs nothing from the kernel
    // read, so it runs alongside it.
    const saves = new Map<IPFamily, Promise<string>>();
    for (const family of new Set<IPFamily>([...familiesIn(snapshot), ...(this.desired?.families ?? [])])) {
      const saved = this.iptablesFor(family, flavour).save();
      saved.catch(() => {});
      saves.set(family, saved);
    }
    const kernel = await this.readKernel();
    if (!kernel.addresses.dummyExists) await ensureDummyInterface(this.options.exec);
    const env = this.envFor(snapshot, kernel.addresses);
    const desired = planSnapshot(snapshot, env);
    // A family whose sets exist keeps them: their rules may still reference them, and a referenced
    // set cannot be destroyed (the restore would fail on every sync).
    const families = new Set<IPFamily>([...familiesIn(snapshot), ...(this.desired?.families ?? [])]);
    for (const set of kernel.ipsets) if (isOwnedSet(set.name)) families.add(set.name.startsWith("KUBE-6-") ? "IPv6" : "IPv4");
    for (const family of families) desired.addFamily(family);

    const wanted = desired.virtualServers();
    const wantedKeys = new Set(wanted.map(virtualServerKey));
    const owned = this.ownedVirtualServers(kernel, wantedKeys, env.nodePortIPs);
    const current = new Map(owned.map((vs) => [virtualServerKey(vs), vs]));
    const writes: VirtualServer[] = [];
    const drainedNow: [VirtualServer, VirtualServer["realServers"][number]][] = [];
    for (const vs of wanted) {
      const { virtualServer, drained } = withDraining(current.get(virtualServerKey(vs)), vs);
      writes.push(virtualServer);
      for (const rs of drained) drainedNow.push([vs, rs]);
    }
    const batch = diffIpvs(owned, writes);
    // The virtual servers are the longest batch by far (most of a large sync): they start before
    // the rest is worked out. Sets, virtual servers and addresses are independent of each other.
    const ipvsApplied = this.ipvs.applyBatch(batch);
    ipvsApplied.catch(() => {});
    const sets = diffIpsets(kernel.ipsets, wantedIpsets(desired), { owned: isOwnedSet });
    const bound = desired.boundAddresses();
    const boundSet = new Set(bound);
    const dummy = new Set(kernel.addresses.dummy);
    const addAddresses = bound.filter((ip) => !dummy.has(ip));
    const removeAddresses = kernel.addresses.dummy.filter((ip) => !boundSet.has(ip));

    const restores = Promise.all([ipvsApplied, this.ipset.restore(sets), changeAddresses(this.options.exec, addAddresses, removeAddresses)]);
    // The rules match sets by name, so they wait for the set batch when it creates a set they use
    // or destroys one (a set still referenced cannot be destroyed); otherwise all run at once.
    const existing = new Set(kernel.ipsets.map((set) => set.name));
    const rulesFirstNeedSets = /^(create|destroy) /m.test(sets) || ![...desired.families].every((family) => referencedSets(this.rulesText(desired, family, snapshot)).every((name) => existing.has(name)));
    restores.catch(() => {});
    whileApplying();
    let rules: { filter: number; nat: number };
    if (rulesFirstNeedSets) {
      await restores;
      rules = await this.writeRules(desired, flavour, snapshot, true, saves);
    } else {
      [, rules] = await Promise.all([restores, this.writeRules(desired, flavour, snapshot, true, saves)]);
    }

    this.applied = new Map(writes.map((vs) => [virtualServerKey(vs), vs]));
    this.draining.retain((vsKey, rsId) => this.applied.get(vsKey)?.realServers.some((rs) => rs.weight === 0 && realServerId(rs) === rsId) ?? false);
    for (const [vs, rs] of drainedNow) this.draining.add(vs, rs);
    this.desired = desired;
    this.env = env;
    logger.debug(3, "Synced ipvs (full)", {
      ipvsLines: batch.length,
      ipsetLines: sets === "" ? 0 : sets.split("\n").length - 1,
      addressesAdded: addAddresses.length,
      addressesRemoved: removeAddresses.length,
      draining: this.draining.size,
    });
    this.endpointsOf.clear();
    this.endpointCount = 0;
    for (const [key, list] of snapshot.endpoints) {
      if (!snapshot.services.has(key) || list.length === 0) continue;
      this.endpointsOf.set(key, list.length);
      this.endpointCount += list.length;
    }
    return this.result(desired, rules, false);
  }

  private async partialSync(snapshot: Snapshot, changes: ChangeSet, flavour: IptablesFlavour, whileApplying: () => void): Promise<SyncResult> {
    // Nearly every partial sync changes a virtual server: ipvsadm starts now and takes the batch
    // once it is planned.
    const ipvsBatch = this.ipvs.startBatch();
    let sent = false;
    try {
      return await this.planAndApply(snapshot, changes, flavour, whileApplying, (batch) => {
        sent = true;
        return ipvsBatch.apply(batch);
      });
    } finally {
      if (!sent) void ipvsBatch.apply([]);
    }
  }

  private async planAndApply(
    snapshot: Snapshot,
    changes: ChangeSet,
    flavour: IptablesFlavour,
    whileApplying: () => void,
    applyIpvs: (batch: readonly string[]) => Promise<void>,
  ): Promise<SyncResult> {
    const desired = this.desired as DesiredState;
    const env = { ...(this.env as IpvsPlanEnv), node: snapshot.node, nodeIPs: snapshot.node.addresses };
    let delta: DesiredDelta | undefined;
    let endpointChange = 0;
    const endpointsNow = new Map<string, number>();
    for (const key of changes.changed) {
      let sp = snapshot.services.get(key);
      const problem = sp ? this.problemOf(sp) : undefined;
      if (sp && problem !== undefined) {
        this.options.logger.warn("Skipping a service port that cannot be programmed", { servicePort: sp.servicePortName, protocol: sp.protocol, problem });
        sp = undefined;
      }
      const endpoints = usableEndpoints(sp, snapshot.endpoints.get(key) ?? []);
      endpointChange += endpoints.length - (this.endpointsOf.get(key) ?? 0);
      endpointsNow.set(key, endpoints.length);
      delta = desired.replace(key, sp ? planServicePort(sp, endpoints, env) : undefined, delta);
    }
    const countEndpoints = () => {
      this.endpointCount += endpointChange;
      for (const [key, n] of endpointsNow) n > 0 ? this.endpointsOf.set(key, n) : this.endpointsOf.delete(key);
    };
    if (!delta) {
      countEndpoints();
      whileApplying();
      return this.result(desired, this.ruleCount(), true);
    }
    applyAddressMembers(delta);

    const before: VirtualServer[] = [];
    const writes = new Map<string, VirtualServer>();
    const drainedNow: [VirtualServer, VirtualServer["realServers"][number]][] = [];
    for (const key of delta.virtualServers) {
      const current = this.applied.get(key);
      const wanted = desired.virtualServer(key);
      if (current) before.push(current);
      if (!wanted) {
        // An excluded address is never deleted, even one kproxy created.
        if (current && this.isExcluded(current.address)) before.pop();
        continue;
      }
      const { virtualServer, drained } = withDraining(current, wanted);
      writes.set(key, virtualServer);
      for (const rs of drained) drainedNow.push([wanted, rs]);
    }
    const batch = diffIpvs(before, [...writes.values()]);
    let setLines = "";
    let setLineCount = 0;
    for (const [name, members] of delta.addedMembers) {
      for (const m of members) setLines += `${ipsetLine.add(name, m)}\n`;
      setLineCount += members.length;
    }
    for (const [name, members] of delta.removedMembers) {
      for (const m of members) setLines += `${ipsetLine.del(name, m)}\n`;
      setLineCount += members.length;
    }

    // The kernel's part starts now; kproxy's own bookkeeping is done while it runs and only
    // committed once it succeeded.
    const applying = Promise.all([applyIpvs(batch), this.ipset.restore(setLines), changeAddresses(this.options.exec, delta.addedAddresses, delta.removedAddresses)]);
    applying.catch(() => {});
    const rulesChanged = desired.rulesChanged(delta);
    whileApplying();
    await applying;
    const rules = rulesChanged ? await this.writeRules(desired, flavour, snapshot, false) : this.ruleCount();

    for (const key of delta.virtualServers) {
      const vs = writes.get(key);
      if (vs) {
        this.applied.set(key, vs);
        for (const rs of vs.realServers) if (rs.weight > 0) this.draining.forget(key, realServerId(rs));
      } else {
        this.applied.delete(key);
        this.draining.forget(key);
      }
    }
    for (const [vs, rs] of drainedNow) this.draining.add(vs, rs);
    countEndpoints();
    this.options.logger.debug(3, "Synced ipvs (partial)", { servicePorts: changes.changed.size, ipvsLines: batch.length, ipsetLines: setLineCount });
    return this.result(desired, rules, true);
  }

  /** Rules per table of what was written last, counted once per write (every sync reports it). */
  private ruleCount(): { filter: number; nat: number } {
    this.countedRules ??= this.countRules();
    return this.countedRules;
  }

  private countRules(): { filter: number; nat: number } {
    let filter = 0;
    let nat = 0;
    for (const text of this.appliedRules.values()) {
      let table = "";
      for (const line of text.split("\n")) {
        if (line.startsWith("*")) table = line.slice(1);
        else if (line.startsWith("-A ")) table === "nat" ? nat++ : filter++;
      }
    }
    return { filter, nat };
  }

  /** A family's companion rules as `iptables-restore` input (the same text for the same state). */
  private rulesText(desired: DesiredState, family: IPFamily, snapshot: Snapshot): string {
    return companionRules(desired, family, { rule: { ...this.options.ruleOptions, nodeIPs: snapshot.node.addresses }, node: snapshot.node });
  }

  /**
   * Writes each family's companion rules (when they changed, or always on a full sync). `saves`
   * holds saves a full sync started early, by family.
   */
  private async writeRules(
    desired: DesiredState,
    flavour: IptablesFlavour,
    snapshot: Snapshot,
    full: boolean,
    saves?: ReadonlyMap<IPFamily, Promise<string>>,
  ): Promise<{ filter: number; nat: number }> {
    for (const family of desired.families) {
      const ipt = this.iptablesFor(family, flavour);
      const text = this.rulesText(desired, family, snapshot);
      if (!full && this.appliedRules.get(family) === text) continue;
      try {
        if (full) {
          // One save says whether the chains and the jumps into them are all still there; a full
          // sync with nothing changed and nothing flushed then writes no rules at all.
          const saved = await (saves?.get(family) ?? ipt.save());
          const missing = IPVS_JUMP_RULES.filter((j) => !saved.includes(`-A ${j.chain} -m comment --comment "${j.comment}" -j ${j.target}\n`));
          const chainsThere = [...NAT_CHAINS, ...FILTER_CHAINS].every((c) => saved.includes(`:${c} `));
          if (missing.length > 0 || !chainsThere || this.appliedRules.get(family) !== text) await ipt.restore(text);
          for (const jump of missing) {
            await ipt.ensureRule({ table: jump.table, chain: jump.chain, args: ["-m", "comment", "--comment", jump.comment, "-j", jump.target] });
          }
        } else {
          await ipt.restore(text);
        }
      } catch (err) {
        this.options.metrics.iptablesRestoreFailuresTotal.inc();
        this.appliedRules.delete(family);
        this.countedRules = undefined;
        throw err;
      }
      if (this.appliedRules.get(family) !== text) this.countedRules = undefined;
      this.appliedRules.set(family, text);
    }
    return this.ruleCount();
  }

  private result(desired: DesiredState, rules: { filter: number; nat: number }, partial: boolean): SyncResult {
    return { servicePorts: desired.servicePorts, endpoints: this.endpointCount, rules, partial };
  }

  plan(snapshot: Snapshot): string {
    return planIpvsText(snapshot, {
      scheduler: this.options.scheduler,
      categorize: this.categorize,
      ruleOptions: this.options.ruleOptions,
      nodePortAddresses: this.options.nodePortAddresses,
      localAddresses: hostAddresses,
    });
  }

  async cleanup(): Promise<void> {
    const { cleanupIpvs } = await import("./cleanup.ts");
    await cleanupIpvs({ exec: this.options.exec, logger: this.options.logger });
  }

  async close(): Promise<void> {
    this.stop.abort();
    await this.options.serviceHealth?.close();
  }
}

/** The set names an `iptables-restore` input matches with `-m set --match-set`. */
function referencedSets(rules: string): string[] {
  return [...rules.matchAll(/--match-set (\S+)/g)].map((m) => m[1] as string);
}

/** The endpoints of a service port that can be real servers (its family, a valid port). */
function usableEndpoints(sp: ServicePort | undefined, endpoints: readonly Endpoint[]): readonly Endpoint[] {
  if (!sp) return [];
  const ok = (ep: Endpoint) => ipFamilyOf(ep.ip) === sp.family && Number.isInteger(ep.port) && ep.port >= 1 && ep.port <= 65535;
  return endpoints.every(ok) ? endpoints : endpoints.filter(ok);
}

export interface IpvsPlanTextOptions {
  readonly scheduler: string;
  readonly categorize?: CategorizeEndpoints;
  readonly ruleOptions: RuleOptions;
  readonly nodePortAddresses: readonly string[];
  readonly localAddresses: LocalAddresses;
}

/** The whole plan as text, from this host's addresses (for --dry-run; reads nothing else). */
export function planIpvsText(snapshot: Snapshot, options: IpvsPlanTextOptions): string {
  const local = options.localAddresses();
  const resolved = resolveNodePortAddresses(options.nodePortAddresses, snapshot.node, options.localAddresses);
  const usable = (ip: string) => !ip.startsWith("127.") && ip !== "::1" && !ip.toLowerCase().startsWith("fe80:");
  const env: IpvsPlanEnv = {
    scheduler: options.scheduler,
    categorize: options.categorize ?? categorizeEndpoints,
    nodePortIPs: (resolved === "all" ? local : resolved).filter(usable),
    nodeAddresses: new Set(local),
    nodeIPs: snapshot.node.addresses,
    node: snapshot.node,
  };
  const desired = planSnapshot(snapshot, env);
  for (const family of familiesIn(snapshot)) desired.addFamily(family);
  return describePlan(desired, { rule: { ...options.ruleOptions, nodeIPs: snapshot.node.addresses }, node: snapshot.node });
}

/** Why IPVS cannot be used here, or undefined when it can (checked synchronously at start). */
export function ipvsUnavailableReason(run: (argv: string[]) => { exitCode: number; stderr: string } = spawnQuietly): string | undefined {
  const result = run(["ipvsadm", "-L", "-n"]);
  if (result.exitCode === 0) return undefined;
  const said = result.stderr.trim().split("\n").slice(0, 2).join("; ");
  return said || `ipvsadm exited ${result.exitCode}`;
}

function spawnQuietly(argv: string[]): { exitCode: number; stderr: string } {
  try {
    const out = Bun.spawnSync(argv, { stdout: "ignore", stderr: "pipe" });
    return { exitCode: out.exitCode ?? 1, stderr: out.stderr?.toString() ?? "" };
  } catch (err) {
    return { exitCode: 127, stderr: `${argv[0]}: ${err instanceof Error ? err.message : String(err)}` };
  }
}

export interface IpvsBackendDeps {
  readonly metrics: KproxyMetrics;
  readonly logger: Logger;
  readonly health: ProxierHealthCheck;
  readonly exec?: Exec;
  readonly clock?: Clock;
  readonly sysctl?: Sysctl;
  readonly conntrackParameters?: Sysctl;
  readonly cores?: number;
}

const seconds = (ms: number) => Math.floor(ms / 1000);

/** The ipvs backend a configuration asks for. */
export function ipvsBackendFromConfig(config: Config, deps: IpvsBackendDeps): IpvsBackend {
  const exec = deps.exec ?? streamingExec(bunExec);
  const logger = deps.logger;
  const sysctl = deps.sysctl ?? procSysctl();
  return new IpvsBackend({
    exec,
    clock: deps.clock ?? realClock,
    logger,
    metrics: deps.metrics,
    flavour: config.iptables.flavour,
    ruleOptions: ruleOptionsFromConfig(config),
    nodePortAddresses: config.nodePortAddresses,
    scheduler: config.ipvs.scheduler,
    excludeCIDRs: config.ipvs.excludeCIDRs,
    strictARP: config.ipvs.strictARP,
    timeouts: { tcp: seconds(config.ipvs.tcpTimeout), tcpFin: seconds(config.ipvs.tcpFinTimeout), udp: seconds(config.ipvs.udpTimeout) },
    sysctl,
    serviceHealth: new ServiceHealthServer({ health: deps.health, logger }),
    // Drained servers are checked on every sync too; between syncs, as often as syncs may come.
    drainCheckIntervalMs: Math.min(60_000, Math.max(1000, config.ipvs.syncPeriod)),
    prepare: async () => {
      await applySysctls({
        conntrack: config.conntrack,
        localhostNodePorts: false,
        cores: deps.cores ?? availableParallelism(),
        sysctl,
        conntrackParameters: deps.conntrackParameters ?? procSysctl("/sys/module/nf_conntrack/parameters"),
        logger,
      });
    },
  });
}
