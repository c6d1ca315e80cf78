/**
 * The iptables mode, applied: generated rules go into the kernel with `iptables-restore --noflush`,
 * per IP family (iptables for IPv4, ip6tables for IPv6, same code), in the node's flavour.
 *
 * A full sync rewrites every kproxy chain and deletes per-service chains no longer wanted; a partial
 * sync rewrites only the changed service ports' chains, plus those top-level chains whose content
 * changed (none, and no filter table, when only endpoints of a service port with endpoints changed;
 * nothing at all when no rule changed). A partial sync costs O(changed service ports) in kproxy;
 * the restore is what it is (iptables-legacy replaces the whole table each time). A sync is full when
 * the loop asks for it, after any failure, and when a canary chain is gone (someone flushed the
 * tables, taking the jump rules with them). The canaries are checked at the start of a sync, at
 * most every `canaryCheckIntervalMs` (half a syncPeriod from the configuration); the jump rules from built-in chains are ensured with
 * `-C`/`-I` at start, after a failure and when a canary is gone, so restarts never duplicate them
 * and a flush is repaired by the next sync.
 *
 * A failed restore changes nothing (iptables-restore commits a table atomically): the error is
 * counted and thrown, the loop retries with a full sync, and the previous rules keep working.
 */
import { availableParallelism } from "node:os";
import type { Config } from "../../config/index.ts";
import type { Logger } from "../../log.ts";
import type { KproxyMetrics } from "../../metrics.ts";
import { cidrFamilyOf, ipFamilyOf } from "../../model/ip.ts";
import { categorizeEndpoints } from "../../model/topology.ts";
import type { ChangeSet, Endpoint, IPFamily, ServicePort, Snapshot } from "../../model/types.ts";
import { Conntrack } from "../../system/conntrack.ts";
import { bunExec, type Exec } from "../../system/exec.ts";
import { detectIptablesFlavour, Iptables, type IptablesFlavour, supportsRandomFully } from "../../system/iptables.ts";
import { type Clock, realClock } from "../../system/clock.ts";
import type { Backend, SyncResult } from "../backend.ts";
import { hostAddresses, type LocalAddresses, ruleOptionsForNode, ruleOptionsFromConfig } from "../iptables-options.ts";
import { type ProxierHealthCheck, ServiceHealthServer } from "../../server/service-health.ts";
import { procSysctl, type Sysctl } from "../../system/sysctl.ts";
import { familiesIn } from "../planners.ts";
import { CANARY_TABLES, JUMP_RULES, KUBE_PROXY_CANARY, KUBELET_JUMP_RULES } from "./chains.ts";
import { chainContents, DEFAULT_PIECE_LINES, splitRestoreInput, withoutUnchangedChains } from "./chunks.ts";
import { isServiceChainName } from "./hash.ts";
import { clearStaleConntrack, staleConntrackOps } from "./conntrack-cleanup.ts";
import { isLoopback } from "./ip.ts";
import type { RuleOptions } from "./options.ts";
import { applySysctls } from "./sysctls.ts";
import { type CategorizeEndpoints, type GenerateContext, type GeneratedRules, generateRules, type RulesMemory } from "./rules.ts";

/** The part of ServiceHealthServer the backend drives (health check node ports). */
export interface ServiceHealthPorts {
  syncServices(desired: ReadonlyMap<string, number>): Promise<void>;
  syncEndpoints(localEndpoints: ReadonlyMap<string, number>): void;
  close(): Promise<void>;
}

export interface IptablesBackendOptions {
  readonly exec: Exec;
  /** `auto` detects the node's flavour before the first sync. */
  readonly flavour: IptablesFlavour | "auto";
  /** Rule options from the configuration; node facts are added per sync. */
  readonly ruleOptions: RuleOptions;
  /** config.nodePortAddresses (CIDRs or "primary"). */
  readonly nodePortAddresses: readonly string[];
  readonly localAddresses: LocalAddresses;
  readonly metrics: KproxyMetrics;
  readonly logger: Logger;
  /** Deletes stale UDP/SCTP flows after syncs; `conntrack` through `exec` when omitted. */
  readonly conntrack?: Conntrack;
  readonly serviceHealth?: ServiceHealthPorts;
  readonly categorize?: CategorizeEndpoints;
  /** Runs once before the first sync (kernel settings); its failures are the callee's to log. */
  readonly prepare?: () => Promise<void>;
  /**
   * Least time between two canary checks (default 0: every sync). Each check is three `-S` calls,
   * and with iptables-legacy each one reads the whole table from the kernel under the xtables lock,
   * which shows in the latency of small syncs on large tables; upstream checks once per syncPeriod.
   */
  readonly canaryCheckIntervalMs?: number;
  /** For the canary interval; the real clock when omitted. */
  readonly clock?: Clock;
  /**
   * nft flavour only: full restores longer than this many nat lines go in pieces of about this
   * size (see chunks.ts); 0 restores in one piece always.
   */
  readonly pieceLines?: number;
  /**
   * Frees memory around a large restore: once its input is ready, and once it is done (default:
   * `Bun.shrink()`, a full collection and the freed memory handed back to the system as soon as
   * the thread is idle, which is during the restore). Generating 10,000 services leaves about 80 MB
   * of garbage (the whole input, its lines, rebuilt per-service text) that the engine would keep
   * through the seconds the restore takes (7 s legacy, 16 s nft here), and the allocator returns
   * freed pages only some seconds after a plain collection. It costs about 50 ms, and the next
   * sync runs its code cold once (a partial sync at 10,000 services: 146 instead of 114 ms).
   */
  readonly collectGarbage?: () => void;
  /** Inputs of at least this many characters are large (default 4 Mi, about 1,500 services). */
  readonly largeInputChars?: number;
}

// Deprecated in Bun's types but kept in the pinned Bun; nothing else hands freed memory back at once.
const releaseMemory = () => Bun.shrink();
const LARGE_INPUT_CHARS = 4 * 1024 * 1024;

interface FamilyState {
  readonly family: IPFamily;
  readonly iptables: Iptables;
  /** Canaries and jumps are in place and the last restore succeeded. */
  ready: boolean;
  /** When the canaries were last seen (Clock ms). */
  canaryCheckedAt: number;
  /** Contents of the top-level chains (`table chain` → rules) as of the last successful restore. */
  topLevel: ReadonlyMap<string, string> | undefined;
  /** Per-service nat chains in the kernel as of the last successful restore; unknown after a failure. */
  natChains: ReadonlySet<string> | undefined;
  /** What the last successful restore was generated from, so a partial one writes only differences. */
  memory: RulesMemory | undefined;
}

/** Why a service port cannot be written safely, or undefined when it can. */
export function servicePortProblem(sp: ServicePort): string | undefined {
  // Comments quote the name; a quote, space or newline in it would break the restore input.
  if (!/^[A-Za-z0-9][A-Za-z0-9._\-/:]{0,200}$/.test(sp.servicePortName)) return `unusable name ${JSON.stringify(sp.servicePortName)}`;
  const ipOk = (ip: string) => ipFamilyOf(ip) === sp.family;
  if (sp.clusterIP !== "" && sp.clusterIP !== "None" && !ipOk(sp.clusterIP)) return `bad clusterIP ${sp.clusterIP}`;
  for (const ip of [...sp.externalIPs, ...sp.loadBalancerIPs]) if (!ipOk(ip)) return `bad IP ${ip}`;
  for (const cidr of sp.loadBalancerSourceRanges) {
    if (cidrFamilyOf(cidr.trim()) !== sp.family) return `bad source range ${cidr}`;
  }
  const port = (n: number, min: number) => Number.isInteger(n) && n >= min && n <= 65535;
  if (!port(sp.port, 1)) return `bad port ${sp.port}`;
  if (!port(sp.nodePort, 0)) return `bad nodePort ${sp.nodePort}`;
  if (!port(sp.healthCheckNodePort, 0)) return `bad healthCheckNodePort ${sp.healthCheckNodePort}`;
  if (sp.sessionAffinity.type === "ClientIP") {
    const t = sp.sessionAffinity.timeoutSeconds;
    if (!(Number.isInteger(t) && t >= 1 && t <= 86400)) return `bad session affinity timeout ${t}`;
  }
  return undefined;
}

function endpointUsable(ep: Endpoint, family: IPFamily): boolean {
  return ipFamilyOf(ep.ip) === family && Number.isInteger(ep.port) && ep.port >= 1 && ep.port <= 65535;
}

/**
 * The snapshot without what would make iptables-restore reject the whole input: service ports with
 * malformed fields are left out (one warning each), malformed endpoints are dropped. The model
 * validates objects already; this guard keeps one bad object from taking every service down if
 * something slips through. Results are memoized per object, so a sync of an unchanged model costs
 * map lookups only.
 */
export class SnapshotGuard {
  private readonly problems = new WeakMap<ServicePort, string | null>();
  private readonly cleanEndpoints = new WeakMap<readonly Endpoint[], readonly Endpoint[]>();
  /** The last apply found nothing to leave out, so the snapshot it got is known clean. */
  private lastClean = false;

  constructor(private readonly logger: Logger) {}

  /**
   * With `changed` (the keys changed since the previous call's snapshot), only those are checked
   * when the previous snapshot was clean: a partial sync then costs O(changed) here too.
   */
  apply(snapshot: Snapshot, changed?: ReadonlySet<string>): Snapshot {
    if (changed !== undefined && this.lastClean && [...changed].every((key) => this.clean(snapshot, key))) return snapshot;
    const result = this.applyAll(snapshot);
    this.lastClean = result === snapshot;
    return result;
  }

  private clean(snapshot: Snapshot, key: string): boolean {
    const sp = snapshot.services.get(key);
    if (sp === undefined) return true;
    let problem = this.problems.get(sp);
    if (problem === undefined) {
      problem = servicePortProblem(sp) ?? null;
      // Not remembered when bad: the full pass that follows logs it once.
      if (problem === null) this.problems.set(sp, null);
    }
    if (problem !== null) return false;
    const list = snapshot.endpoints.get(key);
    return list === undefined || this.cleanEndpoints.get(list) === list || list.every((ep) => endpointUsable(ep, sp.family));
  }

  private applyAll(snapshot: Snapshot): Snapshot {
    let services: Map<string, ServicePort> | undefined;
    let endpoints: Map<string, readonly Endpoint[]> | undefined;
    for (const [key, sp] of snapshot.services) {
      let problem = this.problems.get(sp);
      if (problem === undefined) {
        problem = servicePortProblem(sp) ?? null;
        this.problems.set(sp, problem);
        if (problem !== null) {
          this.logger.warn("Skipping a service port that cannot be programmed", {
            servicePort: sp.servicePortName,
            protocol: sp.protocol,
            family: sp.family,
            problem,
          });
        }
      }
      if (problem !== null) {
        services ??= new Map(snapshot.services);
        services.delete(key);
        continue;
      }
      const list = snapshot.endpoints.get(key);
      if (!list) continue;
      let clean = this.cleanEndpoints.get(list);
      if (clean === undefined) {
        clean = list.every((ep) => endpointUsable(ep, sp.family)) ? list : list.filter((ep) => endpointUsable(ep, sp.family));
        this.cleanEndpoints.set(list, clean);
        if (clean !== list) {
          this.logger.warn("Skipping malformed endpoints", {
            servicePort: sp.servicePortName,
            endpoints: list.filter((ep) => !endpointUsable(ep, sp.family)).map((ep) => `${ep.ip}:${ep.port}`),
          });
        }
      }
      if (clean !== list) {
        endpoints ??= new Map(snapshot.endpoints);
        endpoints.set(key, clean);
      }
    }
    if (!services && !endpoints) return snapshot;
    return { services: services ?? snapshot.services, endpoints: endpoints ?? snapshot.endpoints, node: snapshot.node };
  }
}

/** Health check node ports ("ns/name" → port) and each such service's local ready endpoint count. */
export function healthCheckState(
  snapshot: Snapshot,
  categorize: CategorizeEndpoints,
): { ports: Map<string, number>; localEndpoints: Map<string, number> } {
  const ports = new Map<string, number>();
  const localIPs = new Map<string, Set<string>>();
  for (const sp of snapshot.services.values()) {
    if (sp.healthCheckNodePort === 0) continue;
    const nsName = `${sp.namespace}/${sp.name}`;
    ports.set(nsName, sp.healthCheckNodePort);
    const set = localIPs.get(nsName) ?? new Set<string>();
    localIPs.set(nsName, set);
    const { localEndpoints } = categorize(sp, snapshot.endpoints.get(sp.key) ?? [], snapshot.node);
    for (const ep of localEndpoints) if (ep.ready) set.add(ep.ip);
  }
  const localEndpoints = new Map<string, number>();
  for (const [nsName, set] of localIPs) localEndpoints.set(nsName, set.size);
  return { ports, localEndpoints };
}

export class IptablesBackend implements Backend {
  readonly mode = "iptables" as const;
  private readonly categorize: CategorizeEndpoints;
  private readonly conntrack: Conntrack;
  private readonly guard: SnapshotGuard;
  private readonly nodePortConfig: { nodePortAddresses: string[] };
  private readonly states = new Map<IPFamily, FamilyState>();
  /**
   * Families this node's iptables cannot serve (no ip6tables, or IPv6 off in the kernel). A
   * dual-stack cluster's other family is then left out, as upstream runs single-stack, instead of
   * failing every sync and keeping the node unhealthy.
   */
  private readonly unsupported = new Set<IPFamily>();
  /** Families synced at least once: a later failure of theirs is a failure, never a missing family. */
  private readonly workedOnce = new Set<IPFamily>();
  private flavour: IptablesFlavour | undefined;
  /** The node's iptables has `MASQUERADE --random-fully`; asked once, before the first sync. */
  private randomFully: boolean | undefined;
  private prepared = false;
  /** What the kernel has, as of the last successful sync (for conntrack cleanup). */
  private applied: Snapshot | undefined;
  /** Endpoints in `applied`, kept up to date by partial syncs. */
  private endpointCount = 0;
  /** The previous sync completed, so `changes` of this one are relative to `applied`. */
  private lastSyncOk = false;

  constructor(private readonly options: IptablesBackendOptions) {
    this.categorize = options.categorize ?? categorizeEndpoints;
    this.conntrack = options.conntrack ?? new Conntrack(options.exec);
    this.guard = new SnapshotGuard(options.logger);
    this.nodePortConfig = { nodePortAddresses: [...options.nodePortAddresses] };
    if (options.flavour !== "auto") this.flavour = options.flavour;
  }

  /** The flavour in use; undefined before the first sync when it is detected. */
  get iptablesFlavour(): IptablesFlavour | undefined {
    return this.flavour;
  }

  private async start(): Promise<IptablesFlavour> {
    if (!this.prepared) {
      this.prepared = true;
      await this.options.prepare?.();
    }
    if (this.flavour === undefined) {
      this.flavour = await detectIptablesFlavour(this.options.exec);
      this.options.logger.info("Using the node's iptables flavour", { flavour: this.flavour });
    }
    if (this.randomFully === undefined) {
      this.randomFully = supportsRandomFully(await new Iptables(this.options.exec, "IPv4", this.flavour).version());
    }
    return this.flavour;
  }

  /** Whether the family's iptables answers at all: its nat table's POSTROUTING chain is always there. */
  private async familyWorks(family: IPFamily, flavour: IptablesFlavour): Promise<boolean> {
    try {
      return await new Iptables(this.options.exec, family, flavour).chainExists("nat", "POSTROUTING");
    } catch {
      return false;
    }
  }

  private stateOf(family: IPFamily, flavour: IptablesFlavour): FamilyState {
    let state = this.states.get(family);
    if (!state) {
      state = {
        family,
        iptables: new Iptables(this.options.exec, family, flavour),
        ready: false,
        canaryCheckedAt: Number.NEGATIVE_INFINITY,
        topLevel: undefined,
        natChains: undefined,
        memory: undefined,
      };
      this.states.set(family, state);
    }
    return state;
  }

  async sync(input: Snapshot, changes: ChangeSet): Promise<SyncResult> {
    const flavour = await this.start();
    // What a partial sync looks at is the changed keys; full syncs and the first one walk everything.
    const changedOnly = !changes.full && this.lastSyncOk ? changes.changed : undefined;
    this.lastSyncOk = false;
    const snapshot = this.guard.apply(input, changedOnly);
    const options: RuleOptions = {
      ...ruleOptionsForNode(this.options.ruleOptions, this.nodePortConfig, snapshot.node, this.options.localAddresses),
      randomFully: this.randomFully ?? false,
    };
    // A family once synced keeps being synced, so its chains go away with its last service.
    const families = new Set<IPFamily>(this.states.keys());
    if (changedOnly === undefined) for (const family of familiesIn(snapshot)) families.add(family);
    else for (const key of changedOnly) families.add(snapshot.services.get(key)?.family ?? "IPv4");
    if (families.size === 0) families.add("IPv4");
    let filter = 0;
    let nat = 0;
    let partial = true;
    let noLocalInternal = 0;
    let noLocalExternal = 0;
    let memoryReleased = false;
    const errors: string[] = [];
    for (const family of families) {
      if (this.unsupported.has(family)) continue;
      try {
        const result = await this.syncFamily(this.stateOf(family, flavour), snapshot, changes, options);
        filter += result.filter;
        nat += result.nat;
        partial &&= result.partial;
        noLocalInternal += result.noLocalInternal;
        noLocalExternal += result.noLocalExternal;
        memoryReleased ||= result.memoryReleased;
        this.workedOnce.add(family);
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        if (!this.workedOnce.has(family) && !(await this.familyWorks(family, flavour))) {
          this.unsupported.add(family);
          this.states.delete(family);
          this.options.logger.warn(`This node's iptables does not support ${family}; ${family} service ports are left out`, {
            family,
            error: message,
          });
          continue;
        }
        errors.push(`${family}: ${message}`);
      }
    }
    if (errors.length > 0) throw new Error(`iptables sync failed (${errors.join("; ")})`);
    this.options.metrics.noLocalEndpointsTotal.set({ traffic_policy: "internal" }, noLocalInternal);
    this.options.metrics.noLocalEndpointsTotal.set({ traffic_policy: "external" }, noLocalExternal);

    const before = this.applied;
    // The first sync after a start has nothing to compare with: flushing every UDP service's flows
    // then would break healthy ones on each restart (the rules were kept; so are the flows).
    if (this.applied) {
      const ops = staleConntrackOps(this.applied, snapshot, {
        categorize: this.categorize,
        ...(partial ? { keys: changes.changed } : {}),
      });
      if (ops.length > 0) await clearStaleConntrack(this.conntrack, ops, this.options.logger);
    }
    this.applied = snapshot;

    const health = this.options.serviceHealth;
    const healthChanged =
      changedOnly === undefined ||
      [...changedOnly].some(
        (key) => (snapshot.services.get(key)?.healthCheckNodePort ?? 0) !== 0 || (before?.services.get(key)?.healthCheckNodePort ?? 0) !== 0,
      );
    if (health && healthChanged) {
      const { ports, localEndpoints } = healthCheckState(snapshot, this.categorize);
      await health.syncServices(ports);
      health.syncEndpoints(localEndpoints);
    }

    let endpoints = this.endpointCount;
    if (changedOnly === undefined || before === undefined) {
      endpoints = 0;
      for (const list of snapshot.endpoints.values()) endpoints += list.length;
    } else {
      for (const key of changedOnly) {
        endpoints += (snapshot.endpoints.get(key)?.length ?? 0) - (before.endpoints.get(key)?.length ?? 0);
      }
    }
    this.endpointCount = endpoints;
    this.lastSyncOk = true;
    return { servicePorts: snapshot.services.size, endpoints, rules: { filter, nat }, partial, memoryReleased };
  }

  private async canaryPresent(state: FamilyState): Promise<boolean> {
    const present = await Promise.all(CANARY_TABLES.map((table) => state.iptables.chainExists(table, KUBE_PROXY_CANARY)));
    return present.every(Boolean);
  }

  /** Canary chains, the chains the jumps lead to, and the jumps; each step a no-op when already there. */
  private async ensureBase(state: FamilyState, options: RuleOptions): Promise<void> {
    const ipt = state.iptables;
    for (const table of CANARY_TABLES) await ipt.ensureChain(table, KUBE_PROXY_CANARY);
    const jumps = [...JUMP_RULES];
    // kproxy fills kubelet's KUBE-FIREWALL when localhost NodePorts are on; the chain must be reached.
    if (state.family === "IPv4" && options.localhostNodePorts && localhostReachable(options)) jumps.push(...KUBELET_JUMP_RULES);
    const targets = new Set<string>();
    for (const jump of jumps) {
      const id = `${jump.table}/${jump.target}`;
      if (targets.has(id)) continue;
      targets.add(id);
      await ipt.ensureChain(jump.table, jump.target);
    }
    for (const jump of jumps) await ipt.ensureRule({ table: jump.table, chain: jump.chain, args: jump.args });
  }

  private async syncFamily(
    state: FamilyState,
    snapshot: Snapshot,
    changes: ChangeSet,
    options: RuleOptions,
  ): Promise<{ filter: number; nat: number; partial: boolean; noLocalInternal: number; noLocalExternal: number; memoryReleased: boolean }> {
    const { logger, metrics } = this.options;
    const now = (this.options.clock ?? realClock).now();
    const checkCanary = state.ready && now - state.canaryCheckedAt >= (this.options.canaryCheckIntervalMs ?? 0);
    if (checkCanary) state.canaryCheckedAt = now;
    if (checkCanary && !(await this.canaryPresent(state))) {
      logger.warn("kproxy's canary chain is gone (the tables were flushed); rewriting every rule", { family: state.family });
      state.ready = false;
      state.natChains = undefined;
      state.topLevel = undefined;
      state.memory = undefined;
    }
    const partial = !changes.full && state.ready && state.natChains !== undefined;
    // Jumps live in chains anyone may flush; the canary going with them is what says so.
    if (!state.ready) {
      await this.ensureBase(state, options);
      state.canaryCheckedAt = now;
    }
    const existing = state.natChains ?? (await state.iptables.chains("nat"));

    // The memory is taken over by the generation (updated in place), so it is dropped until the restore succeeds.
    const previous = partial && state.topLevel ? state.memory : undefined;
    state.memory = undefined;
    const context: GenerateContext = partial
      ? { categorize: this.categorize, changed: changes.changed, existingChains: existing, ...(previous ? { previous } : {}) }
      : { categorize: this.categorize, existingChains: existing };
    // A full nft restore of 10,000 services takes seconds per piece: holding the whole input as well
    // as every piece until the last one lands would keep two copies (about 45 MB) resident all that
    // time. Only the pieces are kept here (the generation is not held by this frame), each dropped
    // once restored.
    const { activeNatChains, memory, counts, pieces, topLevel, skipped } = this.restoreInput(
      state,
      generateRules(snapshot, state.family, options, context),
      partial,
    );
    let inputChars = 0;
    for (const piece of pieces) inputChars += piece.length;
    // Small inputs (nearly every partial sync) go at once: a collection would only add latency.
    const large = inputChars >= (this.options.largeInputChars ?? LARGE_INPUT_CHARS);
    const freeMemory = this.options.collectGarbage ?? releaseMemory;
    if (large) freeMemory();
    try {
      for (let i = 0; i < pieces.length; i++) {
        const piece = pieces[i] as string;
        pieces[i] = "";
        // Nothing changed in what the kernel holds (e.g. an update that leaves the rules as they were).
        if (piece !== "") await state.iptables.restore(piece);
      }
    } catch (err) {
      if (large) freeMemory();
      metrics.iptablesRestoreFailuresTotal.inc();
      if (partial) metrics.iptablesPartialRestoreFailuresTotal.inc();
      state.ready = false;
      state.natChains = undefined;
      state.topLevel = undefined;
      state.memory = undefined;
      throw err;
    }
    if (large) freeMemory();
    state.ready = true;
    state.natChains = activeNatChains;
    state.topLevel = topLevel;
    state.memory = memory;
    logger.debug(3, "Restored iptables rules", {
      family: state.family,
      partial,
      pieces: pieces.length,
      unchangedChainsSkipped: skipped,
      natRules: counts.natRules,
      deletedChains: counts.deletedChains,
    });
    return {
      filter: counts.filterRules,
      nat: partial ? counts.natRules : counts.natRulesTotal,
      partial,
      // Counted over every service port, partial sync or not: the top-level chains are always rewritten.
      noLocalInternal: counts.noLocalEndpointsInternal,
      noLocalExternal: counts.noLocalEndpointsExternal,
      memoryReleased: large,
    };
  }

  /**
   * What to restore for a generation: the input in pieces (nft) or whole, without the top-level
   * chains the kernel already holds as they are, and the top-level chains' contents to remember.
   * The generation's text is not referenced by anything returned except through the pieces.
   */
  private restoreInput(
    state: FamilyState,
    generated: GeneratedRules,
    partial: boolean,
  ): Pick<GeneratedRules, "activeNatChains" | "memory" | "counts"> & { pieces: string[]; topLevel: ReadonlyMap<string, string>; skipped: number } {
    let text = generated.text;
    let topLevel: ReadonlyMap<string, string>;
    let skipped = 0;
    if (generated.topLevelUnchanged && state.topLevel) {
      topLevel = state.topLevel;
      skipped = state.topLevel.size;
    } else {
      topLevel = chainContents(generated.topLevelText(), isTopLevelChain);
      if (partial && state.topLevel) ({ text, skipped } = withoutUnchangedChains(text, topLevel, state.topLevel));
    }
    const pieceLines = this.options.pieceLines ?? DEFAULT_PIECE_LINES;
    // A partial sync can be large too (a namespace deleted, a node's pods moved at once).
    const pieces = state.iptables.flavour === "nft" && pieceLines > 0 ? splitRestoreInput(text, pieceLines) : [text];
    const { activeNatChains, memory, counts } = generated;
    return { activeNatChains, memory, counts, pieces, topLevel, skipped };
  }

  plan(snapshot: Snapshot): string {
    const options = ruleOptionsForNode(
      this.options.ruleOptions,
      this.nodePortConfig,
      snapshot.node,
      this.options.localAddresses,
    );
    return familiesIn(snapshot)
      .map((family) => generateRules(snapshot, family, options, { categorize: this.categorize }).text)
      .join("");
  }

  async cleanup(): Promise<void> {
    const { cleanupIptables } = await import("./cleanup.ts");
    await cleanupIptables({ exec: this.options.exec, logger: this.options.logger });
  }

  async close(): Promise<void> {
    await this.options.serviceHealth?.close();
  }
}

/** Chains every restore rewrites (KUBE-SERVICES, KUBE-NODEPORTS, ...), as opposed to per-service ones. */
function isTopLevelChain(chain: string): boolean {
  return !isServiceChainName(chain);
}

/** Whether NodePorts answer on 127.0.0.1 at all (nodePortAddresses "all" or including a loopback IP). */
function localhostReachable(options: RuleOptions): boolean {
  return options.nodePortAddresses === "all" || options.nodePortAddresses.some((ip) => isLoopback(ip));
}

export interface IptablesBackendDeps {
  readonly metrics: KproxyMetrics;
  readonly logger: Logger;
  /** Proxier health, for the health check node ports' answers. */
  readonly health: ProxierHealthCheck;
  readonly exec?: Exec;
  readonly localAddresses?: LocalAddresses;
  readonly sysctl?: Sysctl;
  readonly conntrackParameters?: Sysctl;
  readonly cores?: number;
}

/** The iptables backend a configuration asks for, with kernel settings applied before the first sync. */
export function iptablesBackendFromConfig(config: Config, deps: IptablesBackendDeps): IptablesBackend {
  const exec = deps.exec ?? bunExec;
  const logger = deps.logger;
  const ruleOptions = ruleOptionsFromConfig(config);
  const localhostNodePorts =
    ruleOptions.localhostNodePorts &&
    (config.nodePortAddresses.length === 0 || config.nodePortAddresses.some((cidr) => cidr.startsWith("127.")));
  return new IptablesBackend({
    exec,
    flavour: config.iptables.flavour,
    ruleOptions,
    nodePortAddresses: config.nodePortAddresses,
    localAddresses: deps.localAddresses ?? hostAddresses,
    metrics: deps.metrics,
    logger,
    serviceHealth: new ServiceHealthServer({ health: deps.health, logger }),
    // A flush is then noticed, and repaired, within one syncPeriod, as upstream's canary monitor does.
    canaryCheckIntervalMs: config.iptables.syncPeriod / 2,
    prepare: async () => {
      await applySysctls({
        conntrack: config.conntrack,
        localhostNodePorts,
        cores: deps.cores ?? availableParallelism(),
        sysctl: deps.sysctl ?? procSysctl(),
        conntrackParameters: deps.conntrackParameters ?? procSysctl("/sys/module/nf_conntrack/parameters"),
        logger,
      });
    },
  });
}
