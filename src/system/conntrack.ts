import type { IPFamily, Protocol } from "../model/types.ts";
import type { Exec } from "./exec.ts";

/** One group of flows to delete (the same shapes as the single-call methods below). */
export type ConntrackFilter =
  | { readonly kind: "serviceIP"; readonly family: IPFamily; readonly protocol: Protocol; readonly ip: string }
  | { readonly kind: "port"; readonly family: IPFamily; readonly protocol: Protocol; readonly port: number }
  | { readonly kind: "serviceNAT"; readonly family: IPFamily; readonly protocol: Protocol; readonly serviceIP: string; readonly endpointIP: string }
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

  private async delete(family: IPFamily, args: readonly string[]): Promise<void> {
    const argv = [this.binary, "-D", ...args];
    if (family === "IPv6") argv.push("-f", "ipv6");
    const result = await this.exec.run(argv, { timeoutMs: 30_000 });
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
    return this.delete(family, ["--orig-dst", ip, "-p", protocol.toLowerCase()]);
  }

  /** Entries for a NodePort. */
  clearPort(family: IPFamily, protocol: Protocol, port: number): Promise<void> {
    return this.delete(family, ["-p", protocol.toLowerCase(), "--dport", String(port)]);
  }

  /** Entries from a service IP that were NATed to one endpoint that went away. */
  clearServiceNAT(family: IPFamily, protocol: Protocol, serviceIP: string, endpointIP: string): Promise<void> {
    return this.delete(family, ["--orig-dst", serviceIP, "--dst-nat", endpointIP, "-p", protocol.toLowerCase()]);
  }

  /** Entries for a NodePort that were NATed to one endpoint that went away. */
  clearPortNAT(family: IPFamily, protocol: Protocol, port: number, endpointIP: string): Promise<void> {
    return this.delete(family, ["-p", protocol.toLowerCase(), "--dport", String(port), "--dst-nat", endpointIP]);
  }
}
