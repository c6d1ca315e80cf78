/**
 * The few IP facts rule generation needs: family of an address, `ip:port` joining, loopback, and
 * CIDR membership, on the one parser in config/net.ts. Addresses arrive already validated by the
 * model, so these answer "no" rather than throw on anything they cannot read.
 */
import { cidrContains as contains, parseIP } from "../../config/net.ts";
import type { IPFamily } from "../../model/types.ts";

/** As Go's net.JoinHostPort: IPv6 literals are bracketed. */
export { joinHostPort } from "../../config/net.ts";

export function familyOf(ip: string): IPFamily {
  return ip.includes(":") ? "IPv6" : "IPv4";
}

/** 127.0.0.0/8, ::1, and IPv4-mapped 127.0.0.0/8 (::ffff:127.x.y.z). */
export function isLoopback(ip: string): boolean {
  if (!ip.includes(":")) return ip.startsWith("127.");
  const address = parseIP(ip);
  if (address === null) return false;
  const b = address.bytes;
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  if (b[10] === 0xff && b[11] === 0xff) return b[12] === 127;
  for (let i = 10; i < 15; i++) if (b[i] !== 0) return false;
  return b[15] === 1;
}

/** Whether `ip` lies in `cidr` (both of the same family; a bare address counts as a host route). */
export function cidrContains(cidr: string, ip: string): boolean {
  const trimmed = cidr.trim();
  if (trimmed.includes("/")) return contains(trimmed, ip);
  const network = parseIP(trimmed);
  const address = parseIP(ip);
  return network !== null && address !== null && network.bytes.length === address.bytes.length && network.bytes.every((b, i) => b === address.bytes[i]);
}
