/**
 * Small IP, CIDR, host:port and port-range helpers with Go's `net` package rules (what upstream's
 * validation accepts): dotted-quad IPv4 without leading zeros, IPv6 with `::` and an optional
 * dotted-quad tail, no zones; CIDRs may have host bits set (`10.0.0.1/8` means `10.0.0.0/8`).
 */

export type IPFamily = 4 | 6;

export interface IPAddress {
  readonly family: IPFamily;
  /** 4 bytes for IPv4, 16 for IPv6. */
  readonly bytes: Uint8Array;
}

export interface CIDR {
  readonly family: IPFamily;
  /** The network address: host bits cleared. */
  readonly bytes: Uint8Array;
  readonly prefix: number;
}

function parseIPv4Bytes(text: string): number[] | null {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  const bytes: number[] = [];
  for (const part of parts) {
    if (!/^(0|[1-9]\d{0,2})$/.test(part)) return null;
    const value = Number(part);
    if (value > 255) return null;
    bytes.push(value);
  }
  return bytes;
}

function parseIPv6Bytes(text: string): number[] | null {
  if (text.includes("%")) return null;
  const halves = text.split("::");
  if (halves.length > 2) return null;

  const groupsOf = (part: string): number[] | null => {
    if (part === "") return [];
    const bytes: number[] = [];
    const pieces = part.split(":");
    for (let i = 0; i < pieces.length; i++) {
      const piece = pieces[i] ?? "";
      if (i === pieces.length - 1 && piece.includes(".")) {
        const v4 = parseIPv4Bytes(piece);
        if (!v4) return null;
        bytes.push(...v4);
        continue;
      }
      if (!/^[0-9a-fA-F]{1,4}$/.test(piece)) return null;
      const value = parseInt(piece, 16);
      bytes.push(value >> 8, value & 0xff);
    }
    return bytes;
  };

  const head = groupsOf(halves[0] ?? "");
  if (!head) return null;
  if (halves.length === 1) return head.length === 16 ? head : null;
  const tail = groupsOf(halves[1] ?? "");
  if (!tail) return null;
  const missing = 16 - head.length - tail.length;
  // "::" stands for at least one zero group.
  if (missing < 2) return null;
  return [...head, ...new Array<number>(missing).fill(0), ...tail];
}

export function parseIP(text: string): IPAddress | null {
  if (text.includes(":")) {
    const bytes = parseIPv6Bytes(text);
    return bytes ? { family: 6, bytes: Uint8Array.from(bytes) } : null;
  }
  const bytes = parseIPv4Bytes(text);
  return bytes ? { family: 4, bytes: Uint8Array.from(bytes) } : null;
}

export function isIP(text: string): boolean {
  return parseIP(text) !== null;
}

export function ipFamily(text: string): IPFamily | null {
  return parseIP(text)?.family ?? null;
}

export function isIPv4(text: string): boolean {
  return ipFamily(text) === 4;
}

export function isIPv6(text: string): boolean {
  return ipFamily(text) === 6;
}

/** Canonical text: dotted quad, or RFC 5952 IPv6 (lower case, longest zero run as `::`). */
export function formatIP(ip: IPAddress): string {
  if (ip.family === 4) return Array.from(ip.bytes).join(".");
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((ip.bytes[i] ?? 0) << 8) | (ip.bytes[i + 1] ?? 0));
  let bestStart = -1;
  let bestLength = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength && j - i >= 2) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`;
}

function maskBytes(bytes: Uint8Array, prefix: number): Uint8Array {
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) {
    const bits = Math.max(0, Math.min(8, prefix - i * 8));
    out[i] = (bytes[i] ?? 0) & ((0xff << (8 - bits)) & 0xff);
  }
  return out;
}

export function parseCIDR(text: string): CIDR | null {
  const slash = text.indexOf("/");
  if (slash < 0) return null;
  const ip = parseIP(text.slice(0, slash));
  const prefixText = text.slice(slash + 1);
  if (!ip || !/^(0|[1-9]\d*)$/.test(prefixText)) return null;
  const prefix = Number(prefixText);
  if (prefix > ip.bytes.length * 8) return null;
  return { family: ip.family, bytes: maskBytes(ip.bytes, prefix), prefix };
}

export function isCIDR(text: string): boolean {
  return parseCIDR(text) !== null;
}

export function formatCIDR(cidr: CIDR): string {
  return `${formatIP(cidr)}/${cidr.prefix}`;
}

/** Whether `ip` lies inside `cidr` (always false across families). */
export function cidrContains(cidr: CIDR | string, ip: IPAddress | string): boolean {
  const net = typeof cidr === "string" ? parseCIDR(cidr) : cidr;
  const addr = typeof ip === "string" ? parseIP(ip) : ip;
  if (!net || !addr || net.family !== addr.family) return false;
  const masked = maskBytes(addr.bytes, net.prefix);
  return masked.every((b, i) => b === net.bytes[i]);
}

/**
 * Splits a comma-separated CIDR list (clusterCIDR's dual-stack form). Returns null unless it is one
 * CIDR, or two of different families.
 */
export function parseDualStackCIDRs(text: string): CIDR[] | null {
  const parts = text.split(",").map((p) => p.trim());
  if (parts.length < 1 || parts.length > 2) return null;
  const cidrs: CIDR[] = [];
  for (const part of parts) {
    const cidr = parseCIDR(part);
    if (!cidr) return null;
    cidrs.push(cidr);
  }
  if (cidrs.length === 2 && cidrs[0]?.family === cidrs[1]?.family) return null;
  return cidrs;
}

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/**
 * Go's `net.SplitHostPort` plus a numeric port: `1.2.3.4:80`, `[::1]:80`, `name:80`. The host
 * keeps no brackets. Returns null when the text is not host:port or the port is not 0–65535.
 */
export function splitHostPort(text: string): HostPort | null {
  let host: string;
  let portText: string;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0 || text[close + 1] !== ":") return null;
    host = text.slice(1, close);
    portText = text.slice(close + 2);
  } else {
    const colon = text.lastIndexOf(":");
    if (colon < 0) return null;
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(":")) return null;
  }
  if (!/^\d{1,5}$/.test(portText)) return null;
  const port = Number(portText);
  if (port > 65535) return null;
  return { host, port };
}

/** `host:port`, bracketing IPv6 literals. */
export function joinHostPort(host: string, port: number | string): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

export interface PortRange {
  readonly base: number;
  /** Number of ports; 0 for the empty range. */
  readonly size: number;
}

/**
 * Upstream's port range syntax: `""` (none), `300-2000`, `300+1700` (base plus extra ports) or a
 * single port. Returns null when malformed or outside 0–65535.
 */
export function parsePortRange(text: string): PortRange | null {
  const value = text.trim();
  if (value === "") return { base: 0, size: 0 };
  const match = /^(\d{1,5})(?:([-+])(\d{1,5}))?$/.exec(value);
  if (!match) return null;
  const low = Number(match[1]);
  let high = low;
  if (match[2] === "-") high = Number(match[3]);
  else if (match[2] === "+") high = low + Number(match[3]);
  if (low > 65535 || high > 65535 || high < low) return null;
  return { base: low, size: high - low + 1 };
}
