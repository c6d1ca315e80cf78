import { isIPv4, isIPv6 } from "node:net";
import type { IPFamily } from "./types.ts";

/** The family of a textual IP, or undefined when it is not an IP. */
export function ipFamilyOf(ip: string): IPFamily | undefined {
  if (isIPv4(ip)) return "IPv4";
  if (isIPv6(ip) && !ip.includes("%")) return "IPv6";
  return undefined;
}

/**
 * The canonical text of an IP (lower-case, zero runs compressed for IPv6), so the same address
 * written two ways is one endpoint and one rule.
 */
export function canonicalIP(ip: string): string {
  if (!ip.includes(":")) return ip;
  // The URL parser canonicalizes IPv6 hosts as RFC 5952 describes.
  return new URL(`http://[${ip}]/`).hostname.slice(1, -1);
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
