import type { IPFamily } from "../model/types.ts";
import { type Exec, ExecError, type ExecResult, runChecked } from "./exec.ts";

/**
 * iptables comes in two flavours that keep separate rule sets: the legacy x_tables backend and the
 * nf_tables one. Rules written with the wrong one are invisible to the other tools on the node, so
 * kproxy uses whichever the node's other components already use.
 */
export type IptablesFlavour = "legacy" | "nft";
export type Table = "filter" | "nat" | "mangle" | "raw";

export interface IptablesCommands {
  readonly iptables: string;
  readonly save: string;
  readonly restore: string;
}

export function iptablesCommands(family: IPFamily, flavour: IptablesFlavour): IptablesCommands {
  const base = family === "IPv6" ? "ip6tables" : "iptables";
  return {
    iptables: `${base}-${flavour}`,
    save: `${base}-${flavour}-save`,
    restore: `${base}-${flavour}-restore`,
  };
}

/** Seconds to wait for the xtables lock, as upstream passes with `-w`. */
const LOCK_WAIT_SECONDS = "5";

/** Chains kubelet creates in mangle; their presence says which flavour the node's kubelet uses. */
const FLAVOUR_HINT = /^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY) /m;

async function saveOrEmpty(exec: Exec, argv: readonly string[]): Promise<string> {
  const result = await exec.run(argv, { timeoutMs: 30_000 });
  return result.code === 0 ? result.stdout : "";
}

function countRules(text: string): number {
  let n = 0;
  for (const line of text.split("\n")) if (line.startsWith("-")) n++;
  return n;
}

/**
 * Picks the flavour the way the iptables-wrapper used by upstream's images does: a kubelet hint
 * chain in mangle decides; otherwise the flavour holding more rules (IPv4 and IPv6 together) wins,
 * with nft on a tie because it is the default of current distributions.
 */
export async function detectIptablesFlavour(exec: Exec): Promise<IptablesFlavour> {
  for (const flavour of ["nft", "legacy"] as const) {
    for (const family of ["IPv4", "IPv6"] as const) {
      const text = await saveOrEmpty(exec, [iptablesCommands(family, flavour).save, "-t", "mangle"]);
      if (FLAVOUR_HINT.test(text)) return flavour;
    }
  }
  let legacy = 0;
  let nft = 0;
  for (const family of ["IPv4", "IPv6"] as const) {
    legacy += countRules(await saveOrEmpty(exec, [iptablesCommands(family, "legacy").save]));
    nft += countRules(await saveOrEmpty(exec, [iptablesCommands(family, "nft").save]));
  }
  return legacy > nft ? "legacy" : "nft";
}

export interface RestoreOptions {
  /** Keep chains not named in the input (default true: other components own rules in the same tables). */
  readonly noflush?: boolean;
  readonly counters?: boolean;
  readonly timeoutMs?: number;
}

/** A rule that kproxy keeps in a chain it does not own, such as the jump from PREROUTING. */
export interface RuleSpec {
  readonly table: Table;
  readonly chain: string;
  readonly args: readonly string[];
  /** Insert at the top of the chain (the default), or append. */
  readonly position?: "prepend" | "append";
}

/**
 * Whether `iptables --version` output names a release with `MASQUERADE --random-fully` (1.6.2 and
 * later), as upstream checks before using it: the flag keeps SNAT from reusing a source port that
 * another node's connection still holds in the destination's conntrack table.
 */
export function supportsRandomFully(versionOutput: string): boolean {
  const match = /\bv(\d+)\.(\d+)\.(\d+)/.exec(versionOutput);
  if (!match) return false;
  const [major, minor, patch] = [Number(match[1]), Number(match[2]), Number(match[3])];
  return major > 1 || (major === 1 && (minor > 6 || (minor === 6 && patch >= 2)));
}

/** iptables for one family and flavour, through an Exec. */
export class Iptables {
  readonly commands: IptablesCommands;

  constructor(
    private readonly exec: Exec,
    readonly family: IPFamily,
    readonly flavour: IptablesFlavour,
  ) {
    this.commands = iptablesCommands(family, flavour);
  }

  async restore(text: string, options: RestoreOptions = {}): Promise<void> {
    const argv = [this.commands.restore, "-w", LOCK_WAIT_SECONDS];
    if (options.noflush ?? true) argv.push("--noflush");
    if (options.counters) argv.push("--counters");
    await runChecked(this.exec, argv, { stdin: text, timeoutMs: options.timeoutMs ?? 300_000 });
  }

  async save(table?: Table): Promise<string> {
    const argv = [this.commands.save];
    if (table) argv.push("-t", table);
    return (await runChecked(this.exec, argv, { timeoutMs: 60_000 })).stdout;
  }

  /** Names of the chains a table holds (from `-save`'s `:NAME POLICY [p:b]` lines). */
  async chains(table: Table): Promise<Set<string>> {
    return chainsIn(await this.save(table));
  }

  private run(args: readonly string[]): Promise<ExecResult> {
    return this.exec.run([this.commands.iptables, "-w", LOCK_WAIT_SECONDS, ...args], { timeoutMs: 30_000 });
  }

  /** `iptables --version` output, or "" when the binary does not answer. */
  async version(): Promise<string> {
    const result = await this.exec.run([this.commands.iptables, "--version"], { timeoutMs: 30_000 });
    return result.code === 0 ? result.stdout : "";
  }

  async chainExists(table: Table, chain: string): Promise<boolean> {
    const result = await this.run(["-t", table, "-S", chain, "1"]);
    return result.code === 0;
  }

  /** Creates a chain unless it exists. */
  async ensureChain(table: Table, chain: string): Promise<void> {
    if (await this.chainExists(table, chain)) return;
    const result = await this.run(["-t", table, "-N", chain]);
    if (result.code !== 0 && !(await this.chainExists(table, chain))) {
      throw new ExecError([this.commands.iptables, "-t", table, "-N", chain], result);
    }
  }

  /** Adds a rule unless an identical one is already there, so restarts never duplicate it. */
  async ensureRule(rule: RuleSpec): Promise<boolean> {
    const check = await this.run(["-t", rule.table, "-C", rule.chain, ...rule.args]);
    if (check.code === 0) return false;
    const verb = rule.position === "append" ? "-A" : "-I";
    const argv = ["-t", rule.table, verb, rule.chain, ...rule.args];
    const result = await this.run(argv);
    if (result.code !== 0) throw new ExecError([this.commands.iptables, ...argv], result);
    return true;
  }

  /** Deletes every copy of a rule; a missing rule or chain is not an error. */
  async deleteRule(rule: RuleSpec): Promise<void> {
    for (let i = 0; i < 100; i++) {
      const result = await this.run(["-t", rule.table, "-D", rule.chain, ...rule.args]);
      if (result.code !== 0) return;
    }
  }

  /** Flushes and deletes chains; missing ones are skipped. */
  async deleteChains(table: Table, chains: readonly string[]): Promise<void> {
    if (chains.length === 0) return;
    const existing = await this.chains(table);
    const present = chains.filter((c) => existing.has(c));
    if (present.length === 0) return;
    const lines = [`*${table}`];
    for (const chain of present) lines.push(`:${chain} - [0:0]`);
    for (const chain of present) lines.push(`-X ${chain}`);
    lines.push("COMMIT", "");
    await this.restore(lines.join("\n"));
  }
}

export function chainsIn(saveOutput: string): Set<string> {
  const chains = new Set<string>();
  for (const line of saveOutput.split("\n")) {
    if (line.startsWith(":")) {
      const end = line.indexOf(" ");
      chains.add(end > 0 ? line.slice(1, end) : line.slice(1));
    }
  }
  return chains;
}
