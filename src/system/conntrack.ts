import type { IPFamily, Protocol } from "../model/types.ts";
import type { Exec } from "./exec.ts";

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
