/**
 * `--cleanup` for the ipvs mode: the virtual servers kproxy owns (on kube-ipvs0's addresses, or
 * listed in its sets: ClusterIPs, external and LB IPs, NodePorts), then every KUBE-* chain (shared
 * with the iptables mode's cleanup), then the sets (a set still referenced by a rule cannot be
 * destroyed), then kube-ipvs0. Tools or kernel parts that are missing hold nothing of ours, so
 * their absence is not an error; running it twice does nothing the second time.
 */
import type { Logger } from "../../log.ts";
import { ipFamilyOf } from "../../model/ip.ts";
import type { Exec } from "../../system/exec.ts";
import { ipsetLine, parseIpsetSave } from "../../system/ipset.ts";
import { ipvsLine, parseIpvsSave, type VirtualServer } from "../../system/ipvs.ts";
import { cleanupIptables } from "../iptables/cleanup.ts";
import { deleteDummyInterface, parseIpAddr } from "./addresses.ts";
import { isOwnedSet, SET, setName } from "./sets.ts";

export interface IpvsCleanupOptions {
  readonly exec: Exec;
  readonly logger: Logger;
  /** Also remove the iptables chains (default true; false when the caller does that itself). */
  readonly iptables?: boolean;
}

export interface IpvsCleanupResult {
  readonly virtualServers: number;
  readonly ipsets: number;
  readonly dummyInterface: boolean;
}

/** The virtual servers of `save` that the sets and dummy addresses mark as kproxy's. */
export function ownedForCleanup(servers: readonly VirtualServer[], sets: ReturnType<typeof parseIpsetSave>, dummy: readonly string[]): VirtualServer[] {
  const members = new Map(sets.filter((s) => isOwnedSet(s.name)).map((s) => [s.name, new Set(s.entries.map((e) => e.toLowerCase()))]));
  const has = (id: keyof typeof SET, family: "IPv4" | "IPv6", member: string) => members.get(setName(id, family))?.has(member.toLowerCase()) ?? false;
  const onDummy = new Set(dummy);
  return servers.filter((vs) => {
    if (onDummy.has(vs.address)) return true;
    const family = ipFamilyOf(vs.address) ?? "IPv4";
    const ipPort = `${vs.address},${vs.protocol}:${vs.port}`;
    for (const id of ["clusterIP", "externalIP", "externalIPLocal", "loadBalancer"] as const) if (has(id, family, ipPort)) return true;
    if (vs.protocol === "sctp") return has("nodePortSCTP", family, ipPort);
    return has(vs.protocol === "tcp" ? "nodePortTCP" : "nodePortUDP", family, String(vs.port));
  });
}

export async function cleanupIpvs(options: IpvsCleanupOptions): Promise<IpvsCleanupResult> {
  const { exec, logger } = options;
  const errors: string[] = [];
  const savedSets = await exec.run(["ipset", "save"], { timeoutMs: 60_000 });
  const sets = savedSets.code === 0 ? parseIpsetSave(savedSets.stdout) : [];
  const addr = await exec.run(["ip", "-j", "addr", "show"], { timeoutMs: 60_000 });
  const links = addr.code === 0 ? parseIpAddr(addr.stdout) : { dummyExists: false, dummy: [], others: [] };

  let virtualServers = 0;
  const savedIpvs = await exec.run(["ipvsadm", "-S", "-n"], { timeoutMs: 60_000 });
  if (savedIpvs.code === 0) {
    const owned = ownedForCleanup(parseIpvsSave(savedIpvs.stdout), sets, links.dummy);
    if (owned.length > 0) {
      const result = await exec.run(["ipvsadm", "-R"], { stdin: `${owned.map((vs) => ipvsLine.deleteVirtualServer(vs)).join("\n")}\n`, timeoutMs: 300_000 });
      if (result.code === 0) virtualServers = owned.length;
      else errors.push(`ipvsadm -R: ${result.stderr.trim()}`);
    }
  }

  if (options.iptables ?? true) {
    try {
      await cleanupIptables({ exec, logger });
    } catch (err) {
      errors.push(err instanceof Error ? err.message : String(err));
    }
  }

  const ours = sets.filter((s) => isOwnedSet(s.name));
  let ipsets = 0;
  if (ours.length > 0) {
    const text = ours.flatMap((s) => [ipsetLine.flush(s.name), ipsetLine.destroy(s.name)]).join("\n");
    const result = await exec.run(["ipset", "restore"], { stdin: `${text}\n`, timeoutMs: 60_000 });
    if (result.code === 0) ipsets = ours.length;
    else errors.push(`ipset restore: ${result.stderr.trim()}`);
  }

  const dummyInterface = links.dummyExists ? await deleteDummyInterface(exec) : false;
  if (links.dummyExists && !dummyInterface) errors.push("cannot delete kube-ipvs0");
  logger.info("Removed ipvs state", { virtualServers, ipsets, dummyInterface });
  if (errors.length > 0) throw new Error(`ipvs cleanup incomplete: ${errors.join("; ")}`);
  return { virtualServers, ipsets, dummyInterface };
}
