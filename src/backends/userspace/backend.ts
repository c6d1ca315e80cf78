/**
 * The userspace mode, applied: kproxy accepts service traffic itself and relays it to endpoints.
 *
 * Every TCP/UDP service port gets a relay listening on a local port (from portRange, or the kernel's
 * choice) for its ClusterIP traffic; when external traffic selects endpoints differently (Cluster vs
 * Local traffic policy) a second relay takes externalIP, LoadBalancer IP and NodePort traffic; and a
 * service port with a NodePort also listens on the NodePort itself. Portal rules (portals.ts) send
 * ClusterIP/externalIP/LoadBalancer IP/NodePort traffic to the relay ports.
 *
 * Without root or without iptables there are no portals: NodePorts still work, because their relays
 * listen on them, and the log says once what does not (see `portalsUnavailableReason`).
 *
 * Each relay has its own balancing key, fed with the endpoints the model's selection rules give
 * (categorizeEndpoints, internal vs external traffic policy), so an endpoint change applies to the
 * next connection; a removed service port closes its relays (running TCP connections finish) and
 * its portal rules go with the next restore.
 */
import { readFileSync } from "node:fs";
import { availableParallelism, networkInterfaces } from "node:os";
import { type Config, parsePortRange, type PortRange } from "../../config/index.ts";
import type { Logger } from "../../log.ts";
import { ipFamilyOf } from "../../model/ip.ts";
import { categorizeEndpoints, externallyAccessible } from "../../model/topology.ts";
import type { ChangeSet, Endpoint, IPFamily, ServicePort, SessionAffinity, Snapshot } from "../../model/types.ts";
import { Conntrack } from "../../system/conntrack.ts";
import { bunExec, type Exec } from "../../system/exec.ts";
import { detectIptablesFlavour, Iptables, type IptablesFlavour } from "../../system/iptables.ts";
import type { Backend, SyncResult } from "../backend.ts";
import { healthCheckState, type ServiceHealthPorts, SnapshotGuard } from "../iptables/backend.ts";
import { type ProxierHealthCheck, ServiceHealthServer } from "../../server/service-health.ts";
import { cleanupIptables } from "../iptables/cleanup.ts";
import type { CategorizeEndpoints } from "../iptables/rules.ts";
import { LoadBalancer } from "./load-balancer.ts";
import { joinHostPort, type ProxySocket, type RelayStats, sumStats } from "./proxy-socket.ts";
import type { Collector, Registry, Sample } from "../../server/registry.ts";
import { PORTAL_JUMPS, type PortalTarget, portalRules } from "./portals.ts";
import { TcpRelayWorkers } from "./relay-workers.ts";
import { startTcpRelay } from "./tcp-relay.ts";
import { DEFAULT_UDP_IDLE_TIMEOUT_MS, startUdpRelay } from "./udp-relay.ts";

export interface RelayListenOptions {
  /** The balancing key this relay asks for endpoints; one per relay. */
  readonly key: string;
  readonly protocol: "TCP" | "UDP";
  readonly host: string;
  /** 0 lets the kernel choose. */
  readonly port: number;
  /** ClientIP affinity: every connection of a client must meet the same balancing state. */
  readonly clientIPAffinity: boolean;
}

/** What the backend needs from the relays: listeners, and the endpoints each one balances over. */
export interface RelayFactory {
  listen(options: RelayListenOptions): Promise<ProxySocket>;
  update(key: string, endpoints: readonly string[], affinity: SessionAffinity): void;
  remove(key: string): void;
  /** Forgets ClientIP affinity records past their timeout; called every sync. */
  cleanupStaleAffinity(): void;
  close(): Promise<void>;
}

export interface RelayPoolOptions {
  /** TCP relay threads; 0 relays on the main thread with Bun's sockets. */
  readonly threads: number;
  readonly udpIdleTimeoutMs?: number;
  readonly logger: Logger;
  /** The relay thread entry; the module next to relay-workers.ts by default. */
  readonly workerUrl?: string | URL;
}

/**
 * The real relays: TCP on worker threads sharing each port, UDP on the main thread. Even one core
 * gets a relay thread: its raw-socket relay makes fewer system calls than Bun's sockets (on one CPU:
 * 1.04–1.09 × HAProxy's request rates, against 0.86–0.92 × on the main thread). A relay thread that cannot start (say, a build without the worker entry) makes
 * the pool fall back to relaying TCP on the main thread, once, with a warning.
 */
export class RelayPool implements RelayFactory {
  private readonly balancer = new LoadBalancer();
  private workers: TcpRelayWorkers | undefined;
  /** Settles once the threads have proved they run (or the pool has fallen back to the main thread). */
  private readonly workersChecked: Promise<void>;

  constructor(private readonly options: RelayPoolOptions) {
    if (options.threads > 0) {
      this.workers = TcpRelayWorkers.start({ threads: options.threads, logger: options.logger, ...(options.workerUrl ? { workerUrl: options.workerUrl } : {}) });
    }
    this.workersChecked = this.checkWorkers();
  }

  /**
   * One listen and close on loopback before any real one: a thread whose entry cannot load fails at
   * once, and a request sent to it after that would never be answered, so a broken pool must be
   * found before the first service port depends on it.
   */
  private async checkWorkers(): Promise<void> {
    const workers = this.workers;
    if (!workers) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`relay threads did not answer within ${WORKER_CHECK_TIMEOUT_MS} ms`)), WORKER_CHECK_TIMEOUT_MS);
    });
    try {
      const probe = await Promise.race([workers.listen({ serviceKey: "relay-thread-check", host: "127.0.0.1", port: 0 }), timeout]);
      await Promise.race([probe.close({ closeActive: true }), timeout]);
    } catch (err) {
      this.options.logger.warn("Relay threads are unavailable; relaying TCP on the main thread", { err });
      this.workers = undefined;
      await workers.close();
    } finally {
      clearTimeout(timer);
    }
  }

  update(key: string, endpoints: readonly string[], affinity: SessionAffinity): void {
    this.balancer.update(key, endpoints, affinity);
    this.workers?.update(key, endpoints, affinity);
  }

  remove(key: string): void {
    this.balancer.remove(key);
    this.workers?.remove(key);
  }

  /** Relay threads keep their own affinity tables, so each is told to sweep its own. */
  cleanupStaleAffinity(): void {
    this.balancer.cleanupStaleAffinity();
    this.workers?.cleanupStaleAffinity();
  }

  /** Established connections the relay threads have handed from a saturated thread to an idle one. */
  connectionsMoved(): number {
    return this.workers?.connectionsMoved() ?? 0;
  }

  /** ClientIP affinity records held on the main thread and every relay thread. */
  async affinityRecords(): Promise<number> {
    await this.workersChecked;
    return this.balancer.affinityRecords() + ((await this.workers?.affinityRecords()) ?? 0);
  }

  async listen(o: RelayListenOptions): Promise<ProxySocket> {
    const { logger } = this.options;
    if (o.protocol === "UDP") {
      return startUdpRelay({
        serviceKey: o.key,
        host: o.host,
        port: o.port,
        chooser: this.balancer,
        idleTimeoutMs: this.options.udpIdleTimeoutMs ?? DEFAULT_UDP_IDLE_TIMEOUT_MS,
        logger,
      });
    }
    await this.workersChecked;
    if (this.workers) {
      try {
        return await this.workers.listen({ serviceKey: o.key, host: o.host, port: o.port, ...(o.clientIPAffinity ? { threads: 1 } : {}) });
      } catch (err) {
        if (!(err instanceof Error && /relay thread/.test(err.message))) throw err;
        logger.warn("Relay threads are unavailable; relaying TCP on the main thread", { err });
        await this.workers.close();
        this.workers = undefined;
      }
    }
    return startTcpRelay({ serviceKey: o.key, host: o.host, port: o.port, chooser: this.balancer, logger });
  }

  async close(): Promise<void> {
    await this.workersChecked;
    await this.workers?.close();
    this.workers = undefined;
  }
}

const WORKER_CHECK_TIMEOUT_MS = 5000;

/** What one relay of a service port serves. */
type Role = "internal" | "external" | "nodePort";

interface Listener {
  readonly role: Role;
  readonly key: string;
  socket: ProxySocket | undefined;
  /** The endpoints last handed to the balancer, joined, to skip unchanged updates. */
  pushed: string | undefined;
  /** The last open failure was logged; cleared when the relay opens. */
  failureLogged: boolean;
}

interface PortState {
  sp: ServicePort;
  readonly listeners: Listener[];
}

/** The listener set a service port needs; a change of any of these reopens its relays. */
function shapeOf(sp: ServicePort): string {
  return [sp.protocol, sp.family, sp.nodePort, sp.sessionAffinity.type, separateExternal(sp)].join("|");
}

/** External traffic selects different endpoints from internal traffic, so it needs its own relay. */
function separateExternal(sp: ServicePort): boolean {
  return externallyAccessible(sp) && sp.internalPolicyLocal !== sp.externalPolicyLocal;
}

function rolesOf(sp: ServicePort): Role[] {
  const roles: Role[] = ["internal"];
  if (separateExternal(sp)) roles.push("external");
  if (sp.nodePort !== 0) roles.push("nodePort");
  return roles;
}

function keyOf(sp: ServicePort, role: Role): string {
  return role === "internal" ? sp.key : `${sp.key}|${role}`;
}

/** The endpoints a relay of `role` balances over, by the model's selection rules. */
export function endpointsFor(
  sp: ServicePort,
  role: Role,
  endpoints: readonly Endpoint[],
  node: Snapshot["node"],
  categorize: CategorizeEndpoints = categorizeEndpoints,
): string[] {
  const { clusterEndpoints, localEndpoints } = categorize(sp, endpoints, node);
  const local = role === "internal" ? sp.internalPolicyLocal : sp.externalPolicyLocal;
  return (local ? localEndpoints : clusterEndpoints).map((ep) => joinHostPort(ep.ip, ep.port));
}

/** The address relays listen on for a family: the configured bindAddress, or "any" of that family. */
export function listenHostFor(bindAddress: string, family: IPFamily): string {
  const unspecified = bindAddress === "" || bindAddress === "0.0.0.0" || bindAddress === "::";
  if (!unspecified && ipFamilyOf(bindAddress) === family) return bindAddress;
  return family === "IPv6" ? "::" : "0.0.0.0";
}

/**
 * This host's address on its default route, as upstream picks the host IP: host traffic to a portal
 * is DNATed there. Falls back to any non-loopback address of the family.
 */
export function defaultHostIP(family: IPFamily): string | undefined {
  const interfaces = networkInterfaces();
  const addressOn = (name: string | undefined) =>
    (name === undefined ? [] : (interfaces[name] ?? [])).find((a) => !a.internal && (a.family === "IPv6") === (family === "IPv6") && !a.address.startsWith("fe80"))?.address;
  let routeInterface: string | undefined;
  try {
    if (family === "IPv4") {
      for (const line of readFileSync("/proc/net/route", "utf8").split("\n").slice(1)) {
        const [name, destination, , , , , , mask] = line.trim().split(/\s+/);
        if (destination === "00000000" && mask === "00000000") routeInterface = name;
        if (routeInterface) break;
      }
    } else {
      for (const line of readFileSync("/proc/net/ipv6_route", "utf8").split("\n")) {
        const fields = line.trim().split(/\s+/);
        if (fields[0] === "0".repeat(32) && fields[1] === "00" && fields[9] !== "lo") routeInterface = fields[9];
        if (routeInterface) break;
      }
    }
  } catch {
    // No /proc: take any address below.
  }
  const onRoute = addressOn(routeInterface);
  if (onRoute) return onRoute;
  for (const name of Object.keys(interfaces)) {
    const ip = addressOn(name);
    if (ip) return ip;
  }
  return undefined;
}

export interface UserspaceBackendOptions {
  readonly relays: RelayFactory;
  readonly logger: Logger;
  readonly exec: Exec;
  /** "off" never writes kernel rules (the demo); "auto" writes them when root and iptables allow. */
  readonly portals: "auto" | "off";
  /** config.bindAddress: where relays listen ("0.0.0.0" for every address). */
  readonly bindAddress: string;
  readonly portRange: PortRange;
  readonly flavour: IptablesFlavour | "auto";
  /** Why portals cannot be written here, or undefined when they can; defaults to root + a working iptables. */
  readonly portalsUnavailableReason?: (iptables: Iptables) => Promise<string | undefined>;
  readonly hostIP?: (family: IPFamily) => string | undefined;
  readonly categorize?: CategorizeEndpoints;
  /** Deletes UDP flows still redirected to a closed relay port; `conntrack` through `exec` by default. */
  readonly conntrack?: Conntrack;
  /** Health check node ports of externalTrafficPolicy: Local services, as in the other modes. */
  readonly serviceHealth?: ServiceHealthPorts;
}

/** The reason portals cannot be written: not root, or an iptables that does not answer. */
export async function portalsUnavailableReason(iptables: Iptables): Promise<string | undefined> {
  if (typeof process.getuid === "function" && process.getuid() !== 0) return "kproxy is not running as root";
  try {
    await iptables.save("nat");
    return undefined;
  } catch (err) {
    return `${iptables.commands.save} does not work here (${err instanceof Error ? err.message : String(err)})`;
  }
}

interface FamilyPortals {
  readonly iptables: Iptables;
  /** The jumps are known to be in place (ensured after the last restore). */
  jumpsReady: boolean;
  hostIPWarned: boolean;
}

export class UserspaceBackend implements Backend {
  readonly mode = "userspace" as const;
  private readonly ports = new Map<string, PortState>();
  private readonly guard: SnapshotGuard;
  private readonly categorize: CategorizeEndpoints;
  private readonly families = new Map<IPFamily, FamilyPortals>();
  /** Undefined until the first sync decides. */
  private portalsOn: boolean | undefined;
  private flavour: IptablesFlavour | undefined;
  private readonly usedPorts = new Set<number>();
  private nextPortOffset = 0;
  private sctpWarned = false;
  private readonly conntrack: Conntrack;
  /**
   * UDP service addresses whose flows may still be redirected to a relay port that is gone: a UDP
   * client keeping its source port would otherwise keep sending into nothing until its flow times
   * out. Cleared after the next successful portal write; every UDP service at start, since a new
   * run has new relay ports.
   */
  private staleUdp = new Map<string, { family: IPFamily; ip?: string; port?: number }>();
  private startFlowsQueued = false;
  /** Final counters of closed relays, so totals never go backwards. */
  private readonly closedStats: Record<"TCP" | "UDP", RelayStats[]> = { TCP: [], UDP: [] };

  constructor(private readonly options: UserspaceBackendOptions) {
    this.guard = new SnapshotGuard(options.logger);
    this.categorize = options.categorize ?? categorizeEndpoints;
    this.conntrack = options.conntrack ?? new Conntrack(options.exec);
    if (options.flavour !== "auto") this.flavour = options.flavour;
  }

  /** Whether portal rules are written; undefined before the first sync. */
  get portalsEnabled(): boolean | undefined {
    return this.portalsOn;
  }

  private async decidePortals(): Promise<boolean> {
    const { logger } = this.options;
    let reason: string | undefined;
    if (this.options.portals === "off") {
      reason = "portal rules are off for this run";
    } else {
      this.flavour ??= await detectIptablesFlavour(this.options.exec);
      const check = this.options.portalsUnavailableReason ?? portalsUnavailableReason;
      reason = await check(new Iptables(this.options.exec, "IPv4", this.flavour));
    }
    if (reason !== undefined) {
      logger.warn(
        "Userspace mode without portal rules: ClusterIPs, externalIPs and LoadBalancer IPs are not reachable through kproxy; NodePorts are served by listening on them directly",
        { reason },
      );
      return false;
    }
    logger.info("Userspace mode with portal rules", { flavour: this.flavour });
    return true;
  }

  private familyPortals(family: IPFamily): FamilyPortals {
    let state = this.families.get(family);
    if (!state) {
      state = { iptables: new Iptables(this.options.exec, family, this.flavour ?? "nft"), jumpsReady: false, hostIPWarned: false };
      this.families.set(family, state);
    }
    return state;
  }

  async sync(input: Snapshot, changes: ChangeSet): Promise<SyncResult> {
    this.portalsOn ??= await this.decidePortals();
    const snapshot = this.guard.apply(input);
    const wanted = new Map<string, ServicePort>();
    for (const sp of snapshot.services.values()) {
      if (sp.protocol === "SCTP") {
        if (!this.sctpWarned) this.options.logger.warn("The userspace mode relays TCP and UDP only; SCTP service ports are skipped", { servicePort: sp.servicePortName });
        this.sctpWarned = true;
        continue;
      }
      wanted.set(sp.key, sp);
    }
    if (this.portalsOn && !this.startFlowsQueued) {
      this.startFlowsQueued = true;
      for (const sp of wanted.values()) this.queueStaleUdp(sp);
    }

    for (const [key, state] of this.ports) {
      const sp = wanted.get(key);
      if (sp && shapeOf(sp) === shapeOf(state.sp)) continue;
      await this.closePort(state);
      this.ports.delete(key);
    }

    let endpointCount = 0;
    for (const sp of wanted.values()) {
      let state = this.ports.get(sp.key);
      // A partial sync touches only what changed, and relays still waiting for their port.
      if (state && !changes.full && !changes.changed.has(sp.key) && state.listeners.every((l) => l.socket)) {
        endpointCount += snapshot.endpoints.get(sp.key)?.length ?? 0;
        continue;
      }
      if (!state) {
        state = { sp, listeners: rolesOf(sp).map((role) => ({ role, key: keyOf(sp, role), socket: undefined, pushed: undefined, failureLogged: false })) };
        this.ports.set(sp.key, state);
        this.options.logger.debug(2, "Adding service port", { servicePort: sp.servicePortName, protocol: sp.protocol, family: sp.family });
      }
      state.sp = sp;
      const all = snapshot.endpoints.get(sp.key) ?? [];
      endpointCount += all.length;
      for (const listener of state.listeners) {
        // Endpoints first, so the first connection a new relay accepts has somewhere to go.
        const endpoints = endpointsFor(sp, listener.role, all, snapshot.node, this.categorize);
        const joined = `${sp.sessionAffinity.type === "ClientIP" ? sp.sessionAffinity.timeoutSeconds : "-"} ${endpoints.join(",")}`;
        if (joined !== listener.pushed) {
          this.options.relays.update(listener.key, endpoints, sp.sessionAffinity);
          listener.pushed = joined;
        }
        if (!listener.socket) await this.open(sp, listener);
      }
    }

    this.options.relays.cleanupStaleAffinity();
    const health = this.options.serviceHealth;
    if (health) {
      const { ports, localEndpoints } = healthCheckState(snapshot, this.categorize);
      await health.syncServices(ports);
      health.syncEndpoints(localEndpoints);
    }
    const result: { servicePorts: number; endpoints: number; rules?: Record<string, number> } = { servicePorts: this.ports.size, endpoints: endpointCount };
    if (this.portalsOn) result.rules = await this.writePortals(snapshot, changes);
    return result;
  }

  private async open(sp: ServicePort, listener: Listener): Promise<void> {
    const host = listenHostFor(this.options.bindAddress, sp.family);
    const clientIPAffinity = sp.sessionAffinity.type === "ClientIP";
    const base = { key: listener.key, protocol: sp.protocol as "TCP" | "UDP", host, clientIPAffinity };
    try {
      listener.socket =
        listener.role === "nodePort" ? await this.options.relays.listen({ ...base, port: sp.nodePort }) : await this.listenInRange(base);
      listener.failureLogged = false;
      this.options.logger.info("Relaying service port", {
        servicePort: sp.servicePortName,
        protocol: sp.protocol,
        role: listener.role,
        address: joinHostPort(host, listener.socket.port),
      });
    } catch (err) {
      // Retried on the next sync; logged once until it works.
      if (!listener.failureLogged) {
        this.options.logger.error("Cannot listen for a service port", {
          servicePort: sp.servicePortName,
          protocol: sp.protocol,
          role: listener.role,
          ...(listener.role === "nodePort" ? { port: sp.nodePort } : {}),
          err,
        });
      }
      listener.failureLogged = true;
    }
  }

  /** A relay port from portRange (the next free one, round the range), or the kernel's choice without one. */
  private async listenInRange(base: Omit<RelayListenOptions, "port">): Promise<ProxySocket> {
    const { portRange } = this.options;
    if (portRange.size === 0) return this.options.relays.listen({ ...base, port: 0 });
    let lastError: unknown;
    for (let i = 0; i < portRange.size; i++) {
      const port = portRange.base + ((this.nextPortOffset + i) % portRange.size);
      if (this.usedPorts.has(port)) continue;
      try {
        const socket = await this.options.relays.listen({ ...base, port });
        this.usedPorts.add(port);
        this.nextPortOffset = (port - portRange.base + 1) % portRange.size;
        return socket;
      } catch (err) {
        lastError = err;
      }
    }
    throw new Error(`no free port in portRange ${portRange.base}+${portRange.size - 1}${lastError ? ` (last: ${String(lastError)})` : ""}`);
  }

  private queueStaleUdp(sp: ServicePort): void {
    if (sp.protocol !== "UDP" || !this.portalsOn) return;
    for (const ip of [sp.clusterIP, ...sp.externalIPs, ...sp.loadBalancerIPs]) {
      if (ip !== "" && ip !== "None") this.staleUdp.set(`${sp.family} ip ${ip}`, { family: sp.family, ip });
    }
    if (sp.nodePort !== 0) this.staleUdp.set(`${sp.family} port ${sp.nodePort}`, { family: sp.family, port: sp.nodePort });
  }

  private async clearStaleUdp(): Promise<void> {
    const work = [...this.staleUdp.values()];
    this.staleUdp = new Map();
    for (const w of work) {
      try {
        if (w.ip !== undefined) await this.conntrack.clearServiceIP(w.family, "UDP", w.ip);
        else if (w.port !== undefined) await this.conntrack.clearPort(w.family, "UDP", w.port);
      } catch (err) {
        this.options.logger.debug(2, "Could not delete stale UDP flows", { ...w, err });
      }
    }
  }

  private async closePort(state: PortState): Promise<void> {
    this.queueStaleUdp(state.sp);
    this.options.logger.debug(2, "Removing service port", { servicePort: state.sp.servicePortName, protocol: state.sp.protocol, family: state.sp.family });
    for (const listener of state.listeners) {
      const socket = listener.socket;
      listener.socket = undefined;
      if (socket) {
        if (listener.role !== "nodePort") this.usedPorts.delete(socket.port);
        await socket.close();
        this.closedStats[socket.protocol].push(socket.stats());
      }
      this.options.relays.remove(listener.key);
    }
  }

  /** The portal targets of one family from the open relays. */
  private portalTargets(family: IPFamily): PortalTarget[] {
    const targets: PortalTarget[] = [];
    for (const { sp, listeners } of this.ports.values()) {
      if (sp.family !== family) continue;
      const internal = listeners.find((l) => l.role === "internal")?.socket;
      if (!internal) continue;
      const external = listeners.find((l) => l.role === "external");
      const externalPort = external ? external.socket?.port : internal.port;
      targets.push({
        servicePortName: sp.servicePortName,
        protocol: sp.protocol as "TCP" | "UDP",
        clusterIP: sp.clusterIP,
        port: sp.port,
        // Without an external relay there is nowhere to send external traffic yet.
        externalIPs: externalPort === undefined ? [] : sp.externalIPs,
        loadBalancerIPs: externalPort === undefined ? [] : sp.loadBalancerIPs,
        nodePort: externalPort === undefined ? 0 : sp.nodePort,
        proxyPort: internal.port,
        externalProxyPort: externalPort ?? internal.port,
      });
    }
    return targets;
  }

  private async writePortals(snapshot: Snapshot, changes: ChangeSet): Promise<Record<string, number>> {
    const families = new Set<IPFamily>(this.families.keys());
    families.add("IPv4");
    for (const sp of snapshot.services.values()) families.add(sp.family);
    let nat = 0;
    let filter = 0;
    const errors: string[] = [];
    for (const family of families) {
      const state = this.familyPortals(family);
      const hostIP = (this.options.hostIP ?? defaultHostIP)(family);
      const targets = this.portalTargets(family);
      if (hostIP === undefined) {
        if (!state.hostIPWarned && targets.length > 0) this.options.logger.warn("No host address to send host traffic to; no portals for this family", { family });
        state.hostIPWarned = true;
        continue;
      }
      const rules = portalRules(targets, { family, listenIP: listenHostFor(this.options.bindAddress, family), hostIP });
      try {
        await state.iptables.restore(rules.text);
        // The chains exist now; the jumps into them are checked at start, after a failure and on full syncs.
        if (!state.jumpsReady || changes.full) {
          for (const jump of PORTAL_JUMPS) await state.iptables.ensureRule(jump);
          state.jumpsReady = true;
        }
      } catch (err) {
        state.jumpsReady = false;
        errors.push(`${family}: ${err instanceof Error ? err.message : String(err)}`);
        continue;
      }
      nat += rules.natRules;
      filter += rules.filterRules;
    }
    if (errors.length > 0) throw new Error(`portal rules failed (${errors.join("; ")})`);
    if (this.staleUdp.size > 0) await this.clearStaleUdp();
    return { nat, filter };
  }

  /** Relay counters per protocol: every open relay now, plus the final counts of closed ones. */
  relayStats(): Record<"TCP" | "UDP", RelayStats> {
    const open: Record<"TCP" | "UDP", RelayStats[]> = { TCP: [], UDP: [] };
    for (const { listeners } of this.ports.values()) {
      for (const l of listeners) if (l.socket) open[l.socket.protocol].push(l.socket.stats());
    }
    const closed = (p: "TCP" | "UDP") => ({ ...sumStats(this.closedStats[p]), active: 0, bufferedBytes: 0 });
    // Fold closed relays into one entry now and then, so the list stays short.
    for (const p of ["TCP", "UDP"] as const) if (this.closedStats[p].length > 64) this.closedStats[p] = [sumStats(this.closedStats[p])];
    return { TCP: sumStats([...open.TCP, closed("TCP")]), UDP: sumStats([...open.UDP, closed("UDP")]) };
  }

  plan(snapshot: Snapshot): string {
    return planUserspaceText(this.guard.apply(snapshot), {
      bindAddress: this.options.bindAddress,
      portRange: this.options.portRange,
      portals: this.portalsOn ?? this.options.portals === "auto",
      hostIP: this.options.hostIP ?? defaultHostIP,
      categorize: this.categorize,
    });
  }

  async cleanup(): Promise<void> {
    await cleanupIptables({ exec: this.options.exec, logger: this.options.logger });
  }

  /** Stops every relay (cutting running connections), the relay threads and health check ports; portal rules stay. */
  async close(): Promise<void> {
    await this.options.serviceHealth?.close();
    for (const state of this.ports.values()) {
      for (const listener of state.listeners) {
        const socket = listener.socket;
        listener.socket = undefined;
        await socket?.close({ closeActive: true });
      }
    }
    this.ports.clear();
    await this.options.relays.close();
  }
}

export interface UserspacePlanOptions {
  readonly bindAddress: string;
  readonly portRange: PortRange;
  readonly portals: boolean;
  readonly hostIP: (family: IPFamily) => string | undefined;
  readonly categorize?: CategorizeEndpoints;
}

/**
 * What the userspace mode would set up, for --dry-run: each relay with its endpoints, then the portal
 * rules. Relay ports are known only once bound: from portRange they are shown in allocation order,
 * and as 0 when the kernel will choose them.
 */
export function planUserspaceText(snapshot: Snapshot, options: UserspacePlanOptions): string {
  const lines: string[] = ["# userspace relays (role, listen address, endpoints)"];
  const targets = new Map<IPFamily, PortalTarget[]>();
  let offset = 0;
  const nextPort = () => (options.portRange.size === 0 ? 0 : options.portRange.base + (offset++ % options.portRange.size));
  const sorted = [...snapshot.services.values()].filter((sp) => sp.protocol !== "SCTP").sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  for (const sp of sorted) {
    const host = listenHostFor(options.bindAddress, sp.family);
    const ports = new Map<Role, number>();
    for (const role of rolesOf(sp)) {
      const port = role === "nodePort" ? sp.nodePort : nextPort();
      ports.set(role, port);
      const endpoints = endpointsFor(sp, role, snapshot.endpoints.get(sp.key) ?? [], snapshot.node, options.categorize);
      lines.push(`# ${sp.servicePortName} ${sp.protocol} ${sp.family} ${role} ${joinHostPort(host, port)} -> ${endpoints.length > 0 ? endpoints.join(" ") : "(no endpoints)"}`);
    }
    const internal = ports.get("internal") ?? 0;
    const list = targets.get(sp.family) ?? [];
    targets.set(sp.family, list);
    list.push({
      servicePortName: sp.servicePortName,
      protocol: sp.protocol as "TCP" | "UDP",
      clusterIP: sp.clusterIP,
      port: sp.port,
      externalIPs: sp.externalIPs,
      loadBalancerIPs: sp.loadBalancerIPs,
      nodePort: sp.nodePort,
      proxyPort: internal,
      externalProxyPort: ports.get("external") ?? internal,
    });
  }
  if (!options.portals) {
    lines.push("# no portal rules: NodePorts are served by their relays directly", "");
    return lines.join("\n");
  }
  if (options.portRange.size === 0) lines.push("# relay ports chosen by the kernel are shown as 0");
  for (const family of ["IPv4", "IPv6"] as const) {
    const list = targets.get(family);
    if (family === "IPv6" && !list) continue;
    const hostIP = options.hostIP(family) ?? (family === "IPv6" ? "::1" : "127.0.0.1");
    lines.push(`# ${family}: input for ${family === "IPv6" ? "ip6tables-restore" : "iptables-restore"} --noflush`);
    lines.push(portalRules(list ?? [], { family, listenIP: listenHostFor(options.bindAddress, family), hostIP }).text);
  }
  return lines.join("\n");
}

/** Hand-overs between relay threads on /metrics (see epoll-tcp-relay.ts `Rebalancing`), read at scrape time. */
export function registerRelayThreadMetrics(registry: Registry, connectionsMoved: () => number): void {
  registry.register({
    name: "kproxy_userspace_connections_moved_total",
    help: "Established TCP connections a saturated relay thread handed to an idle one",
    type: "counter",
    collect: () => [{ value: connectionsMoved() }],
  });
}

/** The relays' counters on /metrics, by protocol, read at scrape time. */
export function registerRelayMetrics(registry: Registry, stats: () => Record<"TCP" | "UDP", RelayStats>): void {
  let current: Record<"TCP" | "UDP", RelayStats> | undefined;
  registry.beforeCollect(() => {
    current = stats();
  });
  const metric = (name: string, help: string, type: "counter" | "gauge", samples: (s: Record<"TCP" | "UDP", RelayStats>) => Sample[]): Collector => ({
    name,
    help,
    type,
    collect: () => (current ? samples(current) : []),
  });
  const byProtocol = (pick: (r: RelayStats) => number) => (s: Record<"TCP" | "UDP", RelayStats>) =>
    (["TCP", "UDP"] as const).map((protocol) => ({ labels: { protocol }, value: pick(s[protocol]) }));
  registry.register(metric("kproxy_userspace_active_connections", "Relayed TCP connections and UDP client sessions open now", "gauge", byProtocol((r) => r.active)));
  registry.register(metric("kproxy_userspace_connections_total", "TCP connections and UDP client sessions accepted by the relays", "counter", byProtocol((r) => r.total)));
  registry.register(
    metric("kproxy_userspace_bytes_total", "Payload bytes relayed, by direction", "counter", (s) =>
      (["TCP", "UDP"] as const).flatMap((protocol) => [
        { labels: { protocol, direction: "to_endpoints" }, value: s[protocol].bytesToEndpoints },
        { labels: { protocol, direction: "to_clients" }, value: s[protocol].bytesToClients },
      ]),
    ),
  );
  registry.register(metric("kproxy_userspace_dial_failures_total", "Endpoint dials that failed or timed out (each attempt)", "counter", byProtocol((r) => r.dialFailures)));
  registry.register(metric("kproxy_userspace_rejected_total", "Clients turned away because no endpoint could be reached", "counter", byProtocol((r) => r.rejected)));
  registry.register(metric("kproxy_userspace_buffered_bytes", "Bytes held by the relays waiting for a slow reader or a dial", "gauge", byProtocol((r) => r.bufferedBytes)));
}

export interface UserspaceBackendDeps {
  readonly logger: Logger;
  /** "off" for runs that must never write kernel rules. */
  readonly portals: "auto" | "off";
  /** TCP relay threads (0: the main thread); the number of CPUs by default. */
  readonly threads?: number;
  readonly exec?: Exec;
  /** Proxier health, for the health check node ports' answers; without it none are served. */
  readonly health?: ProxierHealthCheck;
  /** Where the relay counters are exposed. */
  readonly registry?: Registry;
}

/** The userspace backend a configuration asks for. */
export function userspaceBackendFromConfig(config: Config, deps: UserspaceBackendDeps): UserspaceBackend {
  const relays = new RelayPool({ threads: deps.threads ?? availableParallelism(), udpIdleTimeoutMs: config.udpIdleTimeout, logger: deps.logger });
  const backend = new UserspaceBackend({
    relays,
    logger: deps.logger,
    exec: deps.exec ?? bunExec,
    portals: deps.portals,
    bindAddress: config.bindAddress,
    portRange: parsePortRange(config.portRange) ?? { base: 0, size: 0 },
    flavour: config.iptables.flavour,
    ...(deps.health ? { serviceHealth: new ServiceHealthServer({ health: deps.health, logger: deps.logger }) } : {}),
  });
  if (deps.registry) {
    registerRelayMetrics(deps.registry, () => backend.relayStats());
    registerRelayThreadMetrics(deps.registry, () => relays.connectionsMoved());
  }
  return backend;
}
