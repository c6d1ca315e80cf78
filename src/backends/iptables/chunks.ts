/**
 * Splitting a full restore input into pieces for iptables-nft. `iptables-nft-restore --noflush`
 * takes time quadratic in the size of its input (10,000 services: 211 s in one piece, seconds in
 * pieces of a few thousand lines), while legacy is linear either way. Pieces are ordered bottom-up so that
 * every state between two of them is a consistent ruleset: KUBE-MARK-MASQ, then endpoint chains,
 * then service chains, then external and firewall chains, and last one piece with the filter table,
 * the top-level nat chains (the only ones the built-in chains reach) and the deletions. Until that
 * last piece lands, traffic still follows the previous top-level chains into chains that exist.
 */
import { KUBE_MARK_MASQ } from "./chains.ts";
import {
  ENDPOINT_CHAIN_PREFIX,
  SERVICE_CLUSTER_CHAIN_PREFIX,
  SERVICE_EXTERNAL_CHAIN_PREFIX,
  SERVICE_FIREWALL_CHAIN_PREFIX,
  SERVICE_LOCAL_CHAIN_PREFIX,
} from "./hash.ts";

/**
 * Lines per piece that keep nft restores near their linear floor. Measured at 10,000 services
 * (268,000 lines) into an empty table: 1,500 → 10.7 s, 3,000 → 8.9–9.1 s, 4,500 → 9.6 s, 6,000 →
 * 10.3–10.9 s, 12,000 → 32 s; over existing rules 3,000–6,000 are alike (13.6–14.2 s).
 */
export const DEFAULT_PIECE_LINES = 3000;

/** Restore order of a nat chain; undefined for chains that belong to the final piece. */
function tierOf(chain: string): number | undefined {
  if (chain === KUBE_MARK_MASQ) return 0;
  if (chain.startsWith(ENDPOINT_CHAIN_PREFIX)) return 1;
  if (chain.startsWith(SERVICE_CLUSTER_CHAIN_PREFIX) || chain.startsWith(SERVICE_LOCAL_CHAIN_PREFIX)) return 2;
  if (chain.startsWith(SERVICE_EXTERNAL_CHAIN_PREFIX)) return 3;
  if (chain.startsWith(SERVICE_FIREWALL_CHAIN_PREFIX)) return 4;
  return undefined;
}

const TIERS = 5;

/** The chain a `:CHAIN ...`, `-A CHAIN ...` or `-X CHAIN` line is about. */
function chainOf(line: string): string {
  const start = line.charCodeAt(0) === 58 /* ':' */ ? 1 : 3;
  const end = line.indexOf(" ", start);
  return end < 0 ? line.slice(start) : line.slice(start, end);
}

/**
 * Pieces of a full restore input (as `generateRules` writes it: `*filter … COMMIT` then `*nat …
 * COMMIT`), each a complete restore input of its own. Returns the input unchanged, as one piece,
 * when it is smaller than `pieceLines` or has no nat table.
 */
export function splitRestoreInput(text: string, pieceLines = DEFAULT_PIECE_LINES): string[] {
  const natStart = text.indexOf("*nat\n");
  if (natStart < 0) return [text];
  const lines = text.slice(natStart + 5).split("\n");
  if (lines.length < pieceLines) return [text];

  const deleted = new Set<string>();
  for (const line of lines) if (line.startsWith("-X ")) deleted.add(chainOf(line));

  // Per tier: chain → its lines (declaration first, then rules in order).
  const tiers: Map<string, string[]>[] = Array.from({ length: TIERS }, () => new Map());
  const finalLines: string[] = [];
  for (const line of lines) {
    if (line === "" || line === "COMMIT") continue;
    const chain = chainOf(line);
    const tier = deleted.has(chain) ? undefined : tierOf(chain);
    if (tier === undefined) {
      finalLines.push(line);
      continue;
    }
    const group = (tiers[tier] as Map<string, string[]>).get(chain);
    if (group) group.push(line);
    else (tiers[tier] as Map<string, string[]>).set(chain, [line]);
  }

  const pieces: string[] = [];
  let current: string[] = [];
  let size = 0;
  const flush = () => {
    if (current.length === 0) return;
    const declarations = current.filter((l) => l.startsWith(":"));
    const rules = current.filter((l) => !l.startsWith(":"));
    pieces.push(`*nat\n${declarations.join("\n")}\n${rules.join("\n")}\nCOMMIT\n`);
    current = [];
    size = 0;
  };
  for (const tier of tiers) {
    // Rules may only name chains that exist or are declared in the same input, so declarations go first.
    for (const group of tier.values()) {
      if (size + group.length > pieceLines) flush();
      current.push(...group);
      size += group.length;
    }
    // A tier ends its piece: the next tier's chains may refer to any chain of this one.
    flush();
  }
  const declarations = finalLines.filter((l) => l.startsWith(":"));
  const rest = finalLines.filter((l) => !l.startsWith(":"));
  pieces.push(`${text.slice(0, natStart)}*nat\n${[...declarations, ...rest].join("\n")}\nCOMMIT\n`);
  return pieces;
}

/** `table chain` → the chain's `-A` lines, for the chains `pick` selects, as a restore input lists them. */
export function chainContents(text: string, pick: (chain: string) => boolean): Map<string, string> {
  const lines = new Map<string, string[]>();
  let table = "";
  for (const line of text.split("\n")) {
    const first = line.charCodeAt(0);
    if (first === 42 /* '*' */) {
      table = line.slice(1);
    } else if (first === 58 /* ':' */ || line.startsWith("-A ")) {
      const chain = chainOf(line);
      if (!pick(chain)) continue;
      const key = `${table} ${chain}`;
      let list = lines.get(key);
      if (!list) lines.set(key, (list = []));
      if (first !== 58) list.push(line);
    }
  }
  const out = new Map<string, string>();
  for (const [key, list] of lines) out.set(key, list.join("\n"));
  return out;
}

/**
 * A partial restore input without the chains whose content (`contents`, by `table chain`, from
 * chainContents) equals what the kernel already holds (`previous`, from the last successful restore). Upstream rewrites every
 * top-level chain on every sync; when one endpoint changes, KUBE-SERVICES (one rule per service
 * port) is usually identical, and leaving it out shrinks a 10,000-service partial restore from
 * ~13,000 lines to a few. A chain left out references no deleted chain: its content is the new one.
 */
export function withoutUnchangedChains(
  text: string,
  contents: ReadonlyMap<string, string>,
  previous: ReadonlyMap<string, string>,
): { text: string; skipped: number } {
  const skip = new Set<string>();
  for (const [key, content] of contents) if (previous.get(key) === content) skip.add(key);
  if (skip.size === 0) return { text, skipped: 0 };
  const kept: string[] = [];
  let table = "";
  for (const line of text.split("\n")) {
    const first = line.charCodeAt(0);
    if (first === 42) table = line.slice(1);
    else if ((first === 58 || line.startsWith("-A ")) && skip.has(`${table} ${chainOf(line)}`)) continue;
    kept.push(line);
  }
  return { text: kept.join("\n"), skipped: skip.size };
}
