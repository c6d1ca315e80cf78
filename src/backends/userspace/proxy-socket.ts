/**
 * What the userspace backend sees of one service port's relay, TCP or UDP alike: where it listens,
 * its counters, and how to stop it.
 */
export type RelayProtocol = "TCP" | "UDP";

/** Counters for metrics; bytes count payload relayed, not headers. */
export interface RelayStats {
  /** TCP: client connections open now. UDP: clients with a live backend socket. */
  readonly active: number;
  /** Connections (TCP) or client sessions (UDP) accepted since start. */
  readonly total: number;
  readonly bytesToEndpoints: number;
  readonly bytesToClients: number;
  /** Dials that failed or timed out (each attempt counts). */
  readonly dialFailures: number;
  /** Clients turned away because no endpoint could be reached. */
  readonly rejected: number;
  /** Bytes held by the relay right now, waiting for a slow reader or a dial (bounded by backpressure). */
  readonly bufferedBytes: number;
}

/**
 * Slots of a relay's counter array. A relay keeps its counters in a Float64Array so that one living in
 * a worker thread can write them straight into shared memory the owning thread reads.
 */
export const Stat = {
  active: 0,
  total: 1,
  bytesToEndpoints: 2,
  bytesToClients: 3,
  dialFailures: 4,
  rejected: 5,
  bufferedBytes: 6,
} as const;
export const STAT_SLOTS = 7;

export function statsFrom(c: Float64Array, offset = 0): RelayStats {
  return {
    active: c[offset + Stat.active] ?? 0,
    total: c[offset + Stat.total] ?? 0,
    bytesToEndpoints: c[offset + Stat.bytesToEndpoints] ?? 0,
    bytesToClients: c[offset + Stat.bytesToClients] ?? 0,
    dialFailures: c[offset + Stat.dialFailures] ?? 0,
    rejected: c[offset + Stat.rejected] ?? 0,
    bufferedBytes: c[offset + Stat.bufferedBytes] ?? 0,
  };
}

/** Adds counters of several relays (the threads sharing one port). */
export function sumStats(all: readonly RelayStats[]): RelayStats {
  const out = { active: 0, total: 0, bytesToEndpoints: 0, bytesToClients: 0, dialFailures: 0, rejected: 0, bufferedBytes: 0 };
  for (const s of all) for (const k of Object.keys(out) as (keyof RelayStats)[]) out[k] += s[k];
  return out;
}

export interface CloseOptions {
  /** Also cut the relayed connections (TCP) / backend sockets (UDP); otherwise they run to their end. */
  readonly closeActive?: boolean;
}

export interface ProxySocket {
  readonly protocol: RelayProtocol;
  readonly serviceKey: string;
  readonly host: string;
  /** The bound port (the kernel's choice when 0 was asked for). */
  readonly port: number;
  stats(): RelayStats;
  close(options?: CloseOptions): Promise<void>;
}

/**
 * How long each successive dial may take; after a failure the next endpoint is tried with the next
 * timeout, and the client's affinity is reset. Four attempts in all, as upstream's userspace proxy.
 */
export const ENDPOINT_DIAL_TIMEOUTS_MS: readonly number[] = [250, 500, 1000, 2000];

/** Splits "ip:port" or "[v6]:port". */
export function splitHostPort(endpoint: string): { host: string; port: number } {
  const colon = endpoint.lastIndexOf(":");
  if (colon <= 0) throw new Error(`endpoint ${JSON.stringify(endpoint)} is not host:port`);
  let host = endpoint.slice(0, colon);
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  const port = Number(endpoint.slice(colon + 1));
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`endpoint ${JSON.stringify(endpoint)} has a bad port`);
  return { host, port };
}

/** Joins an IP and port the way endpoints are keyed ("[v6]:port" for IPv6). */
export function joinHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A client's IP without an IPv4-mapped IPv6 prefix, so affinity keys match across socket families. */
export function clientIPOf(remoteAddress: string): string {
  return remoteAddress.startsWith("::ffff:") && remoteAddress.includes(".") ? remoteAddress.slice(7) : remoteAddress;
}
