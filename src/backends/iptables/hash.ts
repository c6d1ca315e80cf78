/**
 * Chain names of per-service and per-endpoint chains. They must be byte-for-byte the names upstream
 * kube-proxy uses, so that kproxy can take over (and clean up) a node's existing rules: the name is a
 * prefix plus the first 16 characters of base32(sha256(input)), which keeps every name within
 * iptables' 28-character limit.
 */
import type { Protocol, ServicePort } from "../../model/types.ts";
import { joinHostPort } from "./ip.ts";

export const SERVICE_CLUSTER_CHAIN_PREFIX = "KUBE-SVC-";
export const SERVICE_LOCAL_CHAIN_PREFIX = "KUBE-SVL-";
export const SERVICE_EXTERNAL_CHAIN_PREFIX = "KUBE-EXT-";
export const SERVICE_FIREWALL_CHAIN_PREFIX = "KUBE-FW-";
export const ENDPOINT_CHAIN_PREFIX = "KUBE-SEP-";

const SERVICE_CHAIN_PREFIXES = [
  SERVICE_CLUSTER_CHAIN_PREFIX,
  SERVICE_LOCAL_CHAIN_PREFIX,
  ENDPOINT_CHAIN_PREFIX,
  SERVICE_FIREWALL_CHAIN_PREFIX,
  SERVICE_EXTERNAL_CHAIN_PREFIX,
] as const;

/** True for chains kproxy (and upstream) create per service port or endpoint; only those are ever deleted as stale. */
export function isServiceChainName(chain: string): boolean {
  for (const prefix of SERVICE_CHAIN_PREFIXES) if (chain.startsWith(prefix)) return true;
  return false;
}

const BASE32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/** RFC 4648 base32 with the standard alphabet and `=` padding. */
export function base32Encode(bytes: Uint8Array): string {
  let out = "";
  let buffer = 0;
  let bits = 0;
  for (const byte of bytes) {
    buffer = ((buffer << 8) | byte) & 0xffff;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += BASE32_ALPHABET[(buffer >>> bits) & 31];
    }
  }
  if (bits > 0) out += BASE32_ALPHABET[(buffer << (5 - bits)) & 31];
  while (out.length % 8 !== 0) out += "=";
  return out;
}

const digest = new Uint8Array(32);
const ALPHABET_CODES = Array.from(BASE32_ALPHABET, (c) => c.charCodeAt(0));

function code(index: number): number {
  return ALPHABET_CODES[index & 31] ?? 0;
}

/**
 * First 16 base32 characters of sha256(input). Those are exactly the first 10 digest bytes (80 bits),
 * encoded here as two 40-bit groups straight into one flat string: this runs for every endpoint of
 * every service on a cold sync, so it avoids building the string a character at a time.
 */
export function hash16(input: string): string {
  Bun.SHA256.hash(input, digest);
  return encodeDigest16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
}

const SEP_CODES = Array.from(ENDPOINT_CHAIN_PREFIX, (c) => c.charCodeAt(0));

/**
 * `KUBE-SEP-` + hash16(input) as one flat string. Written out in one `fromCharCode` rather than
 * prefix + hash, which would be a rope that every later use of the name has to flatten first.
 */
export function endpointChainHash(input: string): string {
  Bun.SHA256.hash(input, digest);
  const p = SEP_CODES;
  return encodeDigest16(9, p[0] ?? 0, p[1] ?? 0, p[2] ?? 0, p[3] ?? 0, p[4] ?? 0, p[5] ?? 0, p[6] ?? 0, p[7] ?? 0, p[8] ?? 0);
}

/** `digest`'s first 10 bytes in base32, after `prefixLength` (0 or 9) given character codes. */
function encodeDigest16(
  prefixLength: number,
  c0: number,
  c1: number,
  c2: number,
  c3: number,
  c4: number,
  c5: number,
  c6: number,
  c7: number,
  c8: number,
): string {
  const d = digest;
  // 40 bits do not fit a 32-bit int: split each group as 8 high bits + 32 low bits.
  const hi0 = d[0] ?? 0;
  const lo0 = (((d[1] ?? 0) << 24) | ((d[2] ?? 0) << 16) | ((d[3] ?? 0) << 8) | (d[4] ?? 0)) >>> 0;
  const hi1 = d[5] ?? 0;
  const lo1 = (((d[6] ?? 0) << 24) | ((d[7] ?? 0) << 16) | ((d[8] ?? 0) << 8) | (d[9] ?? 0)) >>> 0;
  const h0 = code(hi0 >>> 3);
  const h1 = code(((hi0 & 7) << 2) | (lo0 >>> 30));
  const h2 = code(lo0 >>> 25);
  const h3 = code(lo0 >>> 20);
  const h4 = code(lo0 >>> 15);
  const h5 = code(lo0 >>> 10);
  const h6 = code(lo0 >>> 5);
  const h7 = code(lo0);
  const h8 = code(hi1 >>> 3);
  const h9 = code(((hi1 & 7) << 2) | (lo1 >>> 30));
  const h10 = code(lo1 >>> 25);
  const h11 = code(lo1 >>> 20);
  const h12 = code(lo1 >>> 15);
  const h13 = code(lo1 >>> 10);
  const h14 = code(lo1 >>> 5);
  const h15 = code(lo1);
  if (prefixLength === 0) {
    return String.fromCharCode(h0, h1, h2, h3, h4, h5, h6, h7, h8, h9, h10, h11, h12, h13, h14, h15);
  }
  return String.fromCharCode(c0, c1, c2, c3, c4, c5, c6, c7, c8, h0, h1, h2, h3, h4, h5, h6, h7, h8, h9, h10, h11, h12, h13, h14, h15);
}

/**
 * Hashes are pure functions of their input and a sync asks for the same ones again and again, so they
 * are remembered. The cache is dropped wholesale when it grows past a bound, which keeps memory flat
 * under churn without bookkeeping on every lookup.
 */
const MAX_CACHED = 100_000;
const cache = new Map<string, string>();

function cachedHash16(input: string): string {
  let hashed = cache.get(input);
  if (hashed === undefined) {
    if (cache.size >= MAX_CACHED) cache.clear();
    hashed = hash16(input);
    cache.set(input, hashed);
  }
  return hashed;
}

const LOWER_PROTOCOL: Readonly<Record<Protocol, string>> = { TCP: "tcp", UDP: "udp", SCTP: "sctp" };

/** The hash shared by a service port's KUBE-SVC/SVL/EXT/FW chains. */
export function portProtoHash(servicePortName: string, protocol: Protocol): string {
  return cachedHash16(servicePortName + LOWER_PROTOCOL[protocol]);
}

export interface ServicePortChains {
  readonly cluster: string;
  readonly local: string;
  readonly external: string;
  readonly firewall: string;
}

export function servicePortChains(servicePortName: string, protocol: Protocol): ServicePortChains {
  const hash = portProtoHash(servicePortName, protocol);
  return {
    cluster: SERVICE_CLUSTER_CHAIN_PREFIX + hash,
    local: SERVICE_LOCAL_CHAIN_PREFIX + hash,
    external: SERVICE_EXTERNAL_CHAIN_PREFIX + hash,
    firewall: SERVICE_FIREWALL_CHAIN_PREFIX + hash,
  };
}

/** KUBE-SEP chain of one endpoint; `endpoint` is `ip:port` (`[ip]:port` for IPv6). */
export function endpointChainName(servicePortName: string, protocol: Protocol, endpoint: string): string {
  return ENDPOINT_CHAIN_PREFIX + cachedHash16(servicePortName + LOWER_PROTOCOL[protocol] + endpoint);
}

export function endpointChainNameFor(
  servicePortName: string,
  protocol: Protocol,
  ip: string,
  port: number,
): string {
  return endpointChainName(servicePortName, protocol, joinHostPort(ip, port));
}

/**
 * Names of a service port's chains, remembered per ServicePort object: snapshots share unchanged
 * objects, so steady-state syncs skip even the string cache.
 */
const servicePortChainsMemo = new WeakMap<ServicePort, ServicePortChains>();

export function chainsOfServicePort(sp: ServicePort): ServicePortChains {
  let chains = servicePortChainsMemo.get(sp);
  if (chains === undefined) {
    chains = servicePortChains(sp.servicePortName, sp.protocol);
    servicePortChainsMemo.set(sp, chains);
  }
  return chains;
}

/** Forget remembered hashes (tests, or after a mass deletion of services). */
export function clearChainNameCache(): void {
  cache.clear();
}
