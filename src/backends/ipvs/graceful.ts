/**
 * Graceful termination of real servers, as upstream's ipvs proxier does it: a real server whose
 * endpoint went away first gets weight 0 (IPVS sends it no new connections, existing ones carry on)
 * and is deleted once IPVS counts no active or inactive connections to it. UDP and SCTP real servers
 * are deleted at once (their "connections" are only timers). An endpoint that comes back while its
 * real server drains is simply given weight 1 again.
 */
import { type Exec, runChecked } from "../../system/exec.ts";
import {
  canonicalAddress,
  formatHostPort,
  Ipvsadm,
  ipvsLine,
  type RealServer,
  type RealServerConnections,
  type VirtualServer,
  virtualServerKey,
} from "../../system/ipvs.ts";

export function realServerId(rs: Pick<RealServer, "address" | "port">): string {
  return formatHostPort(canonicalAddress(rs.address), rs.port);
}

export interface DrainResult {
  /** What to write: the wanted servers plus the draining ones at weight 0. */
  readonly virtualServer: VirtualServer;
  /** Real servers that start draining with this change. */
  readonly drained: readonly RealServer[];
}

/**
 * The virtual server to write when the kernel holds `current` and the plan wants `wanted`: real
 * servers no longer wanted stay at weight 0 (TCP) instead of being deleted.
 */
export function withDraining(current: VirtualServer | undefined, wanted: VirtualServer): DrainResult {
  if (!current || wanted.protocol !== "tcp") return { virtualServer: wanted, drained: [] };
  const wantedIds = new Set(wanted.realServers.map(realServerId));
  const drained: RealServer[] = [];
  for (const rs of current.realServers) {
    if (!wantedIds.has(realServerId(rs))) drained.push({ ...rs, weight: 0 });
  }
  if (drained.length === 0) return { virtualServer: wanted, drained };
  return { virtualServer: { ...wanted, realServers: [...wanted.realServers, ...drained] }, drained };
}

/**
 * Above this many virtual servers to look at, one read of /proc/net/ip_vs (the whole table: about
 * 4 MB at 13,000 virtual servers) is cheaper than one `ipvsadm -L -n <service>` each.
 */
const PER_SERVICE_QUERY_LIMIT = 8;

/** The real servers draining, by virtual server key and real server id. */
export class DrainingServers {
  private readonly byService = new Map<string, { vs: Pick<VirtualServer, "protocol" | "address" | "port">; reals: Set<string> }>();

  private readonly ipvs: Ipvsadm;

  constructor(private readonly exec: Exec) {
    this.ipvs = new Ipvsadm(exec);
  }

  get size(): number {
    let n = 0;
    for (const entry of this.byService.values()) n += entry.reals.size;
    return n;
  }

  add(vs: Pick<VirtualServer, "protocol" | "address" | "port">, rs: Pick<RealServer, "address" | "port">): void {
    const key = virtualServerKey(vs);
    let entry = this.byService.get(key);
    if (!entry) this.byService.set(key, (entry = { vs: { protocol: vs.protocol, address: vs.address, port: vs.port }, reals: new Set() }));
    entry.reals.add(realServerId(rs));
  }

  has(vsKey: string, rsId: string): boolean {
    return this.byService.get(vsKey)?.reals.has(rsId) ?? false;
  }

  /** Forgets one real server (its endpoint came back) or, without `rsId`, a whole virtual server. */
  forget(vsKey: string, rsId?: string): void {
    if (rsId === undefined) {
      this.byService.delete(vsKey);
      return;
    }
    const entry = this.byService.get(vsKey);
    entry?.reals.delete(rsId);
    if (entry && entry.reals.size === 0) this.byService.delete(vsKey);
  }

  clear(): void {
    this.byService.clear();
  }

  /** Keeps only what `keep` accepts (after a full sync re-read the kernel). */
  retain(keep: (vsKey: string, rsId: string) => boolean): void {
    for (const [key, entry] of this.byService) {
      for (const id of entry.reals) if (!keep(key, id)) entry.reals.delete(id);
      if (entry.reals.size === 0) this.byService.delete(key);
    }
  }

  /** Connection counts of the draining servers' virtual servers: one call each when few, else one read of the whole table. */
  private async connections(): Promise<Map<string, RealServerConnections[]>> {
    const result = this.byService.size > PER_SERVICE_QUERY_LIMIT ? await this.ipvs.connections() : new Map<string, RealServerConnections[]>();
    // Also asked one by one: those the proc file left out (it can, when other namespaces have
    // virtual servers), so a server that still drains is never taken for gone.
    for (const [key, { vs }] of this.byService) {
      if (!result.has(key)) for (const [k, v] of await this.ipvs.connections(vs)) result.set(k, v);
    }
    return result;
  }

  /**
   * Deletes the draining real servers that have no connections left, in one `ipvsadm -R` batch;
   * returns them as [virtual server key, real server id]. Servers the kernel no longer holds are
   * forgotten.
   */
  async deleteIdle(): Promise<[string, string][]> {
    if (this.byService.size === 0) return [];
    const conns = await this.connections();
    const lines: string[] = [];
    const deleted: [string, string][] = [];
    for (const [key, entry] of this.byService) {
      const reals = new Map((conns.get(key) ?? []).map((c) => [realServerId(c), c]));
      for (const id of entry.reals) {
        const c = reals.get(id);
        if (!c) {
          entry.reals.delete(id);
          continue;
        }
        if (c.activeConnections + c.inactiveConnections > 0) continue;
        lines.push(ipvsLine.deleteRealServer(entry.vs, c));
        deleted.push([key, id]);
      }
    }
    if (lines.length > 0) await runChecked(this.exec, ["ipvsadm", "-R"], { stdin: `${lines.join("\n")}\n`, timeoutMs: 60_000 });
    for (const [key, id] of deleted) this.forget(key, id);
    for (const [key, entry] of this.byService) if (entry.reals.size === 0) this.byService.delete(key);
    return deleted;
  }
}
