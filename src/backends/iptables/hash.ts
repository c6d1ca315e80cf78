/**
 * Chain names of per-service and per-endpoint chains. They must be byte-for-byte the names upstream
 * kube-proxy uses, so that kproxy can take over (and clean up) a node's existing rules: the name is a
 * prefix plus the first 16 characters of base32(sha256(input)), which keeps every name within
 * iptables' 28-character limit.
 */
import type { Protocol } from "../../model/types.ts";
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

/** First 16 base32 characters of sha256(input): exactly the first 10 digest bytes, so only those are encoded. */
export function hash16(input: string): string {
  Bun.SHA256.hash(input, digest);
  return base32Encode(digest.subarray(0, 10));
}

/**
 * Hashes are pure functions of their input and a sync asks for the same ones again and again, so they
 * are remembered. The cache is dropped wholesale when it grows past a bound, which keeps memory flat
 * under churn without bookkeeping on every lookup.
 */
const MAX_CACHED = 500_000;
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

/** The hash shared by a service port's KUBE-SVC/SVL/EXT/FW chains. */
export function portProtoHash(servicePortName: string, protocol: Protocol): string {
  return cachedHash16(servicePortName + protocol.toLowerCase());
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
  return ENDPOINT_CHAIN_PREFIX + cachedHash16(servicePortName + protocol.toLowerCase() + endpoint);
}

export function endpointChainNameFor(
  servicePortName: string,
  protocol: Protocol,
  ip: string,
  port: number,
): string {
  return endpointChainName(servicePortName, protocol, joinHostPort(ip, port));
}

/** Forget remembered hashes (tests, or after a mass deletion of services). */
export function clearChainNameCache(): void {
  cache.clear();
}
