import type { IPFamily, Protocol } from "../model/types.ts";
import type { Exec } from "./exec.ts";

/** One group of flows to delete, in one `conntrack -D` or as one line of a batch. */
export type ConntrackFilter =
  /** Every entry to a service IP (say, the service had no endpoints before). */
  | { readonly kind: "serviceIP"; readonly family: IPFamily; readonly protocol: Protocol; readonly ip: string }
  /** Every entry to a NodePort. */
  | { readonly kind: "port"; readonly family: IPFamily; readonly protocol: Protocol; readonly port: number }
  /** Entries to a service IP NATed to one endpoint (one that went away). */
  | { readonly kind: "serviceNAT"; readonly family: IPFamily; readonly protocol: Protocol; readonly serviceIP: string; readonly endpointIP: string }
  /** Entries to a NodePort NATed to one endpoint. */
  | { readonly kind: "portNAT"; readonly family: IPFamily; readonly protocol: Protocol; readonly port: number; readonly endpointIP: string };

/** The `conntrack` arguments after `-D` that select a filter's flows. */
export function conntrackFilterArgs(filter: ConntrackFilter): string[] {
  const protocol = ["-p", filter.protocol.toLowerCase()];
  const family = filter.family === "IPv6" ? ["-f", "ipv6"] : [];
  switch (filter.kind) {
    case "serviceIP":
      return [...family, "--orig-dst", filter.ip, ...protocol];
    case "port":
      return [...family, ...protocol, "--dport", String(filter.port)];
    case "serviceNAT":
      return [...family, "--orig-dst", filter.serviceIP, "--dst-nat", filter.endpointIP, ...protocol];
    case "portNAT":
      return [...family, ...protocol, "--dport", String(filter.port), "--dst-nat", filter.endpointIP];
  }
}

/**
 * Deletes conntrack entries so that UDP (and SCTP) clients stop being sent to endpoints that are
 * gone. `conntrack -D` exits 1 when nothing matched; that is success for us.
 */
export class Conntrack {
  constructor(
    private readonly exec: Exec,
    private readonly binary = "conntrack",
  ) {}

  /** Deletes one filter's flows with a `conntrack -D` of its own. */
  async deleteOne(filter: ConntrackFilter): Promise<void> {
    const args = conntrackFilterArgs(filter);
    const result = await this.exec.run([this.binary, "-D", ...args], { timeoutMs: 30_000 });
    if (result.code !== 0 && !/0 flow entries have been deleted/.test(result.stderr)) {
      throw new Error(`conntrack ${args.join(" ")}: ${result.stderr.trim() || `exit ${result.code}`}`);
    }
  }

  /**
   * Deletes the flows of many filters with one `conntrack -R -` (one `-D` line each) instead of a
   * process per filter: a large first sync asks for hundreds. A line that matches nothing is no
   * error (exit 0); conntrack stops at a line it cannot parse, so a failure means the input or the
   * tool is wrong, not that flows were missing.
   */
  async deleteAll(filters: readonly ConntrackFilter[]): Promise<void> {
    if (filters.length === 0) return;
    const lines = filters.map((f) => `-D ${conntrackFilterArgs(f).join(" ")}`);
    const result = await this.exec.run([this.binary, "-R", "-"], { stdin: `${lines.join("\n")}\n`, timeoutMs: 60_000 });
    if (result.code !== 0) throw new Error(`conntrack -R (${filters.length} deletions): ${result.stderr.trim() || `exit ${result.code}`}`);
  }

  /** Entries whose original destination is a service IP (ClusterIP, external or LB IP). */
  clearServiceIP(family: IPFamily, protocol: Protocol, ip: string): Promise<void> {
    return this.deleteOne({ kind: "serviceIP", family, protocol, ip });
  }

  /** Entries for a NodePort. */
  clearPort(family: IPFamily, protocol: Protocol, port: number): Promise<void> {
    return this.deleteOne({ kind: "port", family, protocol, port });
  }

  /** Entries from a service IP that were NATed to one endpoint that went away. */
  clearServiceNAT(family: IPFamily, protocol: Protocol, serviceIP: string, endpointIP: string): Promise<void> {
    return this.deleteOne({ kind: "serviceNAT", family, protocol, serviceIP, endpointIP });
  }

  /** Entries for a NodePort that were NATed to one endpoint that went away. */
  clearPortNAT(family: IPFamily, protocol: Protocol, port: number, endpointIP: string): Promise<void> {
    return this.deleteOne({ kind: "portNAT", family, protocol, port, endpointIP });
  }
}
