import { type Exec, ExecError, runChecked } from "./exec.ts";

/**
 * ipsets through the `ipset` tool: read them all with `ipset save`, write changes as one
 * `ipset restore` input. Like ipvsadm, `ipset restore` stops at the first failing line, so every
 * create, add and del line carries `-exist` and a batch stays valid even if it runs twice.
 */
export type IpsetFamily = "inet" | "inet6";

export interface Ipset {
  readonly name: string;
  /** e.g. hash:ip,port, hash:ip,port,ip, hash:ip,port,net, hash:net, bitmap:port. */
  readonly type: string;
  /** Absent for bitmap types, which have no family. */
  readonly family?: IpsetFamily;
  /**
   * Creation options other than family, as ipset prints them (`hashsize 1024`, `maxelem 65536`,
   * `range 0-65535`, `comment`, `timeout 0`), in order. bucketsize and initval are the kernel's
   * choice and are left out.
   */
  readonly options: readonly string[];
  /** Members as ipset prints them (`10.96.0.1,tcp:443`), without per-entry comments. */
  readonly entries: readonly string[];
}

/** Options the kernel picks or reports on its own; never part of what kproxy wants. */
const KERNEL_OPTIONS = new Set(["bucketsize", "initval"]);
/** Options followed by a value; everything else is a lone flag (comment, counters, skbinfo…). */
const VALUED_OPTIONS = new Set(["hashsize", "maxelem", "range", "timeout", "netmask", "markmask", "size", "bucketsize", "initval", "family"]);

/** Splits a line into words, keeping a double-quoted string (a comment) as one word. */
function words(line: string): string[] {
  return [...line.matchAll(/"((?:[^"\\]|\\.)*)"|(\S+)/g)].map((m) => m[2] ?? m[1] ?? "");
}

interface MutableIpset {
  name: string;
  type: string;
  family?: IpsetFamily;
  options: string[];
  entries: string[];
}

/** Parses `ipset save` / `ipset list -o save`. */
export function parseIpsetSave(text: string): Ipset[] {
  const sets = new Map<string, MutableIpset>();
  for (const line of text.split("\n")) {
    const w = words(line.trim());
    if (w[0] === "create" && w[1] !== undefined && w[2] !== undefined) {
      const set: MutableIpset = { name: w[1], type: w[2], options: [], entries: [] };
      for (let i = 3; i < w.length; i++) {
        const option = w[i] as string;
        const valued = VALUED_OPTIONS.has(option);
        const value = valued ? w[i + 1] : undefined;
        if (valued) i++;
        if (option === "family") {
          if (value === "inet" || value === "inet6") set.family = value;
        } else if (!KERNEL_OPTIONS.has(option)) {
          set.options.push(value === undefined ? option : `${option} ${value}`);
        }
      }
      sets.set(set.name, set);
    } else if (w[0] === "add" && w[1] !== undefined && w[2] !== undefined) {
      sets.get(w[1])?.entries.push(w[2]);
    }
  }
  return [...sets.values()];
}

/** `ipset restore` lines, one concept each. */
export const ipsetLine = {
  create: (set: Omit<Ipset, "entries">): string =>
    ["create", set.name, set.type, ...(set.family ? ["family", set.family] : []), ...set.options, "-exist"].join(" "),
  add: (name: string, entry: string): string => `add ${name} ${entry} -exist`,
  del: (name: string, entry: string): string => `del ${name} ${entry} -exist`,
  flush: (name: string): string => `flush ${name}`,
  destroy: (name: string): string => `destroy ${name}`,
};

/** Upstream's default creation options for hash sets. */
export const DEFAULT_HASH_OPTIONS: readonly string[] = ["hashsize 1024", "maxelem 65536"];

function sameDefinition(a: Ipset, b: Ipset): boolean {
  return a.type === b.type && (a.family ?? "") === (b.family ?? "");
}

/** Members compare case-insensitively (IPv6 hex digits, protocol names). */
function entryKey(entry: string): string {
  return entry.toLowerCase();
}

export interface IpsetDiffOptions {
  /** Which existing sets this caller owns; sets not owned are never flushed or destroyed. Default: all. */
  readonly owned?: (name: string) => boolean;
}

/**
 * The `ipset restore` input that turns `current` into `wanted`: creates and adds first, then
 * deletions, then destroys of owned sets no longer wanted (destroy fails while an iptables rule
 * still references a set, so remove those rules before applying). A set whose type or family
 * changed is destroyed and created again. Changes of hashsize or maxelem need the same and are
 * not made: the set keeps working with the old sizes until it is recreated.
 */
export function diffIpsets(current: readonly Ipset[], wanted: readonly Ipset[], options: IpsetDiffOptions = {}): string {
  const owned = options.owned ?? (() => true);
  const have = new Map(current.map((s) => [s.name, s]));
  const lines: string[] = [];
  const deletes: string[] = [];
  const destroys: string[] = [];
  for (const set of wanted) {
    let existing = have.get(set.name);
    if (existing && !sameDefinition(existing, set)) {
      lines.push(ipsetLine.flush(set.name), ipsetLine.destroy(set.name));
      existing = undefined;
    }
    if (!existing) {
      lines.push(ipsetLine.create(set));
      const seen = new Set<string>();
      for (const entry of set.entries) {
        if (seen.has(entryKey(entry))) continue;
        seen.add(entryKey(entry));
        lines.push(ipsetLine.add(set.name, entry));
      }
      continue;
    }
    const haveEntries = new Set(existing.entries.map(entryKey));
    const wantEntries = new Set<string>();
    for (const entry of set.entries) {
      const key = entryKey(entry);
      if (wantEntries.has(key)) continue;
      wantEntries.add(key);
      if (!haveEntries.has(key)) lines.push(ipsetLine.add(set.name, entry));
    }
    for (const entry of existing.entries) {
      if (!wantEntries.has(entryKey(entry))) deletes.push(ipsetLine.del(set.name, entry));
    }
  }
  const wantedNames = new Set(wanted.map((s) => s.name));
  for (const set of current) {
    if (!wantedNames.has(set.name) && owned(set.name)) destroys.push(ipsetLine.flush(set.name), ipsetLine.destroy(set.name));
  }
  const all = [...lines, ...deletes, ...destroys];
  return all.length === 0 ? "" : `${all.join("\n")}\n`;
}

/** The ipset tool through an Exec. */
export class IpsetTool {
  constructor(
    private readonly exec: Exec,
    private readonly binary = "ipset",
  ) {}

  /** Whether the kernel has ip_set; `reason` carries ipset's own words when it has not. */
  async available(): Promise<{ ok: true } | { ok: false; reason: string }> {
    const result = await this.exec.run([this.binary, "list", "-n"], { timeoutMs: 10_000 });
    if (result.code === 0) return { ok: true };
    return { ok: false, reason: result.stderr.trim() || `${this.binary} exited ${result.code}` };
  }

  /** Every set with its members, from `ipset save`. */
  async save(): Promise<Ipset[]> {
    return parseIpsetSave((await runChecked(this.exec, [this.binary, "save"], { timeoutMs: 60_000 })).stdout);
  }

  /** One set, or undefined when it does not exist. */
  async get(name: string): Promise<Ipset | undefined> {
    const argv = [this.binary, "save", name];
    const result = await this.exec.run(argv, { timeoutMs: 60_000 });
    if (result.code !== 0) {
      if (/does not exist/.test(result.stderr)) return undefined;
      throw new ExecError(argv, result);
    }
    return parseIpsetSave(result.stdout)[0];
  }

  /** Runs one `ipset restore` input. Throws ExecError naming the failing line. */
  async restore(text: string): Promise<void> {
    if (text.trim() === "") return;
    await runChecked(this.exec, [this.binary, "restore"], { stdin: text.endsWith("\n") ? text : `${text}\n`, timeoutMs: 300_000 });
  }
}
