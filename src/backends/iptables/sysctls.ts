/**
 * Kernel settings the iptables mode depends on, applied once at start as upstream kube-proxy does
 * (its conntrack.go and the iptables proxier's route_localnet). Every failure is a warning: in a
 * container /proc/sys is often read-only, and a node that is already set up right works anyway.
 */
import type { Logger } from "../../log.ts";
import { ensureSysctl, type Sysctl } from "../../system/sysctl.ts";

export interface ConntrackSettings {
  /** Entries per CPU core; 0 leaves nf_conntrack_max alone. */
  readonly maxPerCore: number;
  /** Lower bound of nf_conntrack_max. */
  readonly min: number;
  /** Milliseconds; 0 leaves the kernel's value. */
  readonly tcpEstablishedTimeout: number;
  readonly tcpCloseWaitTimeout: number;
  readonly tcpBeLiberal: boolean;
  readonly udpTimeout: number;
  readonly udpStreamTimeout: number;
}

export interface SysctlPlanInput {
  readonly conntrack: ConntrackSettings;
  /** NodePorts answer on 127.0.0.1 (needs route_localnet). */
  readonly localhostNodePorts: boolean;
  readonly cores: number;
}

export interface SysctlSetting {
  readonly name: string;
  readonly value: number;
  /** Only raise the value, never lower it (hashsize: shrinking it would rehash the table for nothing). */
  readonly raiseOnly?: boolean;
}

/** Upstream's nf_conntrack_max: maxPerCore × cores, at least min; 0 when maxPerCore is 0 (leave it). */
export function conntrackMax(settings: Pick<ConntrackSettings, "maxPerCore" | "min">, cores: number): number {
  if (settings.maxPerCore <= 0) return 0;
  return Math.max(settings.maxPerCore * cores, settings.min);
}

/** The /proc/sys settings to apply, as dotted names. */
export function plannedSysctls(input: SysctlPlanInput): SysctlSetting[] {
  const out: SysctlSetting[] = [];
  if (input.localhostNodePorts) out.push({ name: "net.ipv4.conf.all.route_localnet", value: 1 });
  const max = conntrackMax(input.conntrack, input.cores);
  if (max > 0) out.push({ name: "net.netfilter.nf_conntrack_max", value: max });
  const seconds = (ms: number) => Math.floor(ms / 1000);
  const ct = input.conntrack;
  if (ct.tcpEstablishedTimeout > 0) {
    out.push({ name: "net.netfilter.nf_conntrack_tcp_timeout_established", value: seconds(ct.tcpEstablishedTimeout) });
  }
  if (ct.tcpCloseWaitTimeout > 0) {
    out.push({ name: "net.netfilter.nf_conntrack_tcp_timeout_close_wait", value: seconds(ct.tcpCloseWaitTimeout) });
  }
  if (ct.tcpBeLiberal) out.push({ name: "net.netfilter.nf_conntrack_tcp_be_liberal", value: 1 });
  if (ct.udpTimeout > 0) out.push({ name: "net.netfilter.nf_conntrack_udp_timeout", value: seconds(ct.udpTimeout) });
  if (ct.udpStreamTimeout > 0) {
    out.push({ name: "net.netfilter.nf_conntrack_udp_timeout_stream", value: seconds(ct.udpStreamTimeout) });
  }
  return out;
}

export interface ApplySysctlsOptions extends SysctlPlanInput {
  /** /proc/sys. */
  readonly sysctl: Sysctl;
  /** /sys/module/nf_conntrack/parameters (a Sysctl rooted there: `hashsize`). */
  readonly conntrackParameters: Sysctl;
  readonly logger: Logger;
}

/** Applies the settings; returns the names that could not be set (each already logged as a warning). */
export async function applySysctls(options: ApplySysctlsOptions): Promise<string[]> {
  const { sysctl, logger } = options;
  const failed: string[] = [];
  for (const setting of plannedSysctls(options)) {
    try {
      if (await ensureSysctl(sysctl, setting.name, setting.value)) {
        logger.info("Set sysctl", { name: setting.name, value: setting.value });
      }
    } catch (err) {
      failed.push(setting.name);
      logger.warn("Could not set sysctl", { name: setting.name, value: setting.value, err });
    }
  }

  // The hash table should hold max/4 buckets; it is a module parameter, not a sysctl, and only the
  // initial network namespace may write it.
  const max = conntrackMax(options.conntrack, options.cores);
  if (max > 0) {
    const wanted = Math.floor(max / 4);
    const current = Number(await options.conntrackParameters.get("hashsize"));
    if (!(Number.isFinite(current) && current >= wanted)) {
      try {
        await options.conntrackParameters.set("hashsize", wanted);
        logger.info("Set conntrack hashsize", { value: wanted });
      } catch (err) {
        failed.push("hashsize");
        logger.warn("Could not set conntrack hashsize", { value: wanted, err });
      }
    }
  }

  const bridged = await sysctl.get("net.bridge.bridge-nf-call-iptables");
  if (bridged === undefined) {
    logger.warn(
      "br_netfilter is not loaded: traffic between pods on the same bridge bypasses iptables, so a pod reaching a service whose endpoint shares its bridge gets no reply (run 'modprobe br_netfilter')",
    );
  } else if (bridged !== "1") {
    logger.warn("net.bridge.bridge-nf-call-iptables is 0: bridged pod traffic bypasses iptables NAT");
  }
  return failed;
}
