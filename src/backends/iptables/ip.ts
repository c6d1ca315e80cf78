/**
 * The few IP facts rule generation needs: family of an address, `ip:port` joining, loopback, and
 * CIDR membership. Addresses arrive already validated by the model, so parsing here is lenient and
 * answers "no" rather than throwing on anything it cannot read.
 */
import type { IPFamily } from "../../model/types.ts";

export function familyOf(ip: string): IPFamily {
  return ip.includes(":") ? "IPv6" : "IPv4";
}

/** As Go's net.JoinHostPort: IPv6 literals are bracketed. */
export function joinHostPort(ip: string, port: number): string {
  return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;
}

export function isLoopback(ip: string): boolean {
  if (ip.includes(":")) {
    const bytes = parseIPv6(ip);
    if (bytes === undefined) return false;
    for (let i = 0; i < 15; i++) if (bytes[i] !== 0) return isMappedLoopback(bytes);
    return bytes[15] === 1;
  }
  return ip.startsWith("127.");
}

function isMappedLoopback(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff && bytes[12] === 127;
}

function parseIPv4(ip: string): Uint8Array | undefined {
  const parts = ip.split(".");
  if (parts.length !== 4) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const part = parts[i] ?? "";
    if (!/^\d{1,3}$/.test(part)) return undefined;
    const n = Number(part);
    if (n > 255) return undefined;
    out[i] = n;
  }
  return out;
}

function parseIPv6(ip: string): Uint8Array | undefined {
  const zone = ip.indexOf("%");
  const text = zone >= 0 ? ip.slice(0, zone) : ip;
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const groups = (half: string): number[] | undefined => {
    if (half === "") return [];
    const out: number[] = [];
    const parts = half.split(":");
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i] ?? "";
      if (i === parts.length - 1 && part.includes(".")) {
        const v4 = parseIPv4(part);
        if (v4 === undefined) return undefined;
        out.push(((v4[0] ?? 0) << 8) | (v4[1] ?? 0), ((v4[2] ?? 0) << 8) | (v4[3] ?? 0));
        continue;
      }
      if (!/^[0-9a-fA-F]{1,4}$/.test(part)) return undefined;
      out.push(parseInt(part, 16));
    }
    return out;
  };
  const head = groups(halves[0] ?? "");
  const tail = halves.length === 2 ? groups(halves[1] ?? "") : [];
  if (head === undefined || tail === undefined) return undefined;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return undefined;
  const all = [...head, ...new Array<number>(halves.length === 2 ? missing : 0).fill(0), ...tail];
  const out = new Uint8Array(16);
  all.forEach((group, i) => {
    out[i * 2] = group >> 8;
    out[i * 2 + 1] = group & 0xff;
  });
  return out;
}

function parseIP(ip: string): Uint8Array | undefined {
  return ip.includes(":") ? parseIPv6(ip) : parseIPv4(ip);
}

/** Whether `ip` lies in `cidr` (both of the same family; a bare address counts as a host route). */
export function cidrContains(cidr: string, ip: string): boolean {
  const slash = cidr.indexOf("/");
  const network = parseIP(slash >= 0 ? cidr.slice(0, slash).trim() : cidr.trim());
  const address = parseIP(ip);
  if (network === undefined || address === undefined || network.length !== address.length) return false;
  const maxBits = network.length * 8;
  const prefix = slash >= 0 ? Number(cidr.slice(slash + 1)) : maxBits;
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > maxBits) return false;
  const fullBytes = Math.floor(prefix / 8);
  for (let i = 0; i < fullBytes; i++) if (network[i] !== address[i]) return false;
  const rest = prefix % 8;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return ((network[fullBytes] ?? 0) & mask) === ((address[fullBytes] ?? 0) & mask);
}
