/**
 * `--cleanup`: removes every chain and rule any kproxy (or kube-proxy) mode creates, in both IP
 * families and both iptables flavours: the iptables mode's KUBE-* chains and canaries, the ipvs
 * mode's companion chains, and the userspace mode's KUBE-PORTALS-* / KUBE-NODEPORT-* chains, found by
 * name, plus every rule elsewhere that jumps into one of them. Per table this is one
 * iptables-restore (`-D` the jumps, flush, `-X`), so the table never holds a jump to a missing chain.
 * Running it twice, or on a node that never ran kproxy, does nothing and succeeds.
 *
 * Left alone on purpose: chains kubelet owns (KUBE-FIREWALL, whose rule also keeps 127.0.0.0/8
 * closed while route_localnet stays on; KUBE-KUBELET-CANARY; KUBE-IPTABLES-HINT; KUBE-MARK-DROP).
 */
import type { Logger } from "../../log.ts";
import type { IPFamily } from "../../model/types.ts";
import type { Exec } from "../../system/exec.ts";
import { iptablesCommands, type IptablesFlavour, type Table } from "../../system/iptables.ts";

export const CLEANUP_TABLES: readonly Table[] = ["nat", "filter", "mangle"];

/** Chains named KUBE-* that belong to kubelet, not to any proxy mode. */
export const KUBELET_CHAINS: ReadonlySet<string> = new Set([
  "KUBE-FIREWALL",
  "KUBE-KUBELET-CANARY",
  "KUBE-IPTABLES-HINT",
  "KUBE-MARK-DROP",
]);

export function isProxyChain(chain: string): boolean {
  return chain.startsWith("KUBE-") && !KUBELET_CHAINS.has(chain);
}

/** The `-j`/`-g` target of an `-A` line, if any. */
function targetOf(rule: string): string | undefined {
  const m = / -[jg] (\S+)/.exec(rule);
  return m?.[1];
}

/**
 * The restore input that removes our chains from one table, given its `iptables-save -t <table>`
 * output; undefined when there is nothing to remove.
 */
export function cleanupInput(table: Table, saveOutput: string): string | undefined {
  const ours: string[] = [];
  const rules: string[] = [];
  for (const line of saveOutput.split("\n")) {
    if (line.startsWith(":")) {
      const name = line.slice(1, line.indexOf(" ") > 0 ? line.indexOf(" ") : undefined);
      if (isProxyChain(name)) ours.push(name);
    } else if (line.startsWith("-A ")) rules.push(line);
  }
  if (ours.length === 0) return undefined;
  const owned = new Set(ours);
  const lines = [`*${table}`];
  for (const rule of rules) {
    const chain = rule.slice(3, rule.indexOf(" ", 3));
    const target = targetOf(rule);
    // Rules inside our chains go with the flush; jumps from anyone else's chain into ours are deleted one by one.
    if (!owned.has(chain) && target !== undefined && owned.has(target)) lines.push(`-D ${rule.slice(3)}`);
  }
  for (const chain of ours) lines.push(`:${chain} - [0:0]`);
  for (const chain of ours) lines.push(`-X ${chain}`);
  lines.push("COMMIT", "");
  return lines.join("\n");
}

export interface CleanupOptions {
  readonly exec: Exec;
  readonly logger: Logger;
  readonly flavours?: readonly IptablesFlavour[];
  readonly families?: readonly IPFamily[];
}

/** Returns the number of chains removed; throws when some table could not be cleaned. */
export async function cleanupIptables(options: CleanupOptions): Promise<number> {
  const { exec, logger } = options;
  let removed = 0;
  const errors: string[] = [];
  for (const flavour of options.flavours ?? (["legacy", "nft"] as const)) {
    for (const family of options.families ?? (["IPv4", "IPv6"] as const)) {
      const commands = iptablesCommands(family, flavour);
      for (const table of CLEANUP_TABLES) {
        const saved = await exec.run([commands.save, "-t", table], { timeoutMs: 60_000 });
        // A missing binary, or a table this kernel or flavour does not have, holds nothing of ours.
        if (saved.code !== 0) continue;
        const input = cleanupInput(table, saved.stdout);
        if (input === undefined) continue;
        const result = await exec.run([commands.restore, "-w", "5", "--noflush"], { stdin: input, timeoutMs: 300_000 });
        if (result.code !== 0) {
          errors.push(`${commands.restore} (${table}): ${result.stderr.trim() || `exit ${result.code}`}`);
          continue;
        }
        const count = input.split("\n").filter((l) => l.startsWith("-X ")).length;
        removed += count;
        logger.info("Removed proxy rules", { flavour, family, table, chains: count });
      }
    }
  }
  if (errors.length > 0) throw new Error(`cleanup incomplete: ${errors.join("; ")}`);
  return removed;
}
