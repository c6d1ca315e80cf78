/**
 * The model's view of IP text (families as the API names them), on the one parser in config/net.ts.
 */
import { formatIP, ipFamily, parseIP } from "../config/net.ts";
import type { IPFamily } from "./types.ts";

/** The family of a textual IP, or undefined when it is not an IP (a zone such as `%eth0` is not). */
export function ipFamilyOf(ip: string): IPFamily | undefined {
  const family = ipFamily(ip);
  return family === 4 ? "IPv4" : family === 6 ? "IPv6" : undefined;
}

/**
 * The canonical text of an IP (lower-case, zero runs compressed for IPv6, as RFC 5952 describes),
 * so the same address written two ways is one endpoint and one rule. Text that is no IP comes back
 * as it is.
 */
export function canonicalIP(ip: string): string {
  if (!ip.includes(":")) return ip;
  const parsed = parseIP(ip);
  return parsed ? formatIP(parsed) : ip;
}

/** The family of a CIDR such as `10.0.0.0/8` or `fd00::/64`, or undefined when it is not one. */
export function cidrFamilyOf(cidr: string): IPFamily | undefined {
  const slash = cidr.indexOf("/");
  if (slash < 0) return undefined;
  const family = ipFamilyOf(cidr.slice(0, slash));
  if (!family) return undefined;
  const bits = cidr.slice(slash + 1);
  if (!/^\d{1,3}$/.test(bits)) return undefined;
  const n = Number(bits);
  return n <= (family === "IPv4" ? 32 : 128) ? family : undefined;
}

/** A CIDR with its address part canonical (`FD00:0::/64` → `fd00::/64`). */
export function canonicalCIDR(cidr: string): string {
  const slash = cidr.indexOf("/");
  return slash < 0 ? canonicalIP(cidr) : `${canonicalIP(cidr.slice(0, slash))}${cidr.slice(slash)}`;
}
