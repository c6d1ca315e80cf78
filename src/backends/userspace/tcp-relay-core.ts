import type { Logger } from "../../log.ts";
import type { EndpointChooser } from "./load-balancer.ts";
import type { RelayStats } from "./proxy-socket.ts";
import { ENDPOINT_DIAL_TIMEOUTS_MS, Stat, STAT_SLOTS, statsFrom } from "./proxy-socket.ts";

/** The options both TCP relay engines take (tcp-relay.ts on Bun's sockets, epoll-tcp-relay.ts on raw ones). */
export interface TcpRelayCoreOptions {
  readonly serviceKey: string;
  /** Address to listen on; "0.0.0.0" / "::" for all. */
  readonly host: string;
  readonly chooser: EndpointChooser;
  readonly logger?: Logger;
  readonly dialTimeoutsMs?: readonly number[];
  /** Bytes a client may send while its endpoint is still being dialled before it is paused. */
  readonly connectBufferBytes?: number;
  /** Where to keep the counters (STAT_SLOTS long, see `Stat`); a view into shared memory for workers. */
  readonly counters?: Float64Array;
}

/** Endpoints remembered per relay before the cache starts afresh (endpoints come and go over a long run). */
const MAX_TARGETS = 1024;

/**
 * What a TCP relay is apart from how it moves bytes: the service port it serves, the counters, and the
 * choice of an endpoint for each dial attempt with upstream's timeouts and the accounting of failed
 * dials and turned-away clients. `Target` is an endpoint in the form the engine dials (host and port,
 * or a sockaddr), parsed once per endpoint rather than once per connection.
 */
export abstract class TcpRelayCore<Target> {
  readonly protocol = "TCP" as const;
  readonly serviceKey: string;
  readonly host: string;
  port = 0;
  readonly chooser: EndpointChooser;
  readonly logger: Logger | undefined;
  readonly dialTimeoutsMs: readonly number[];
  readonly connectBufferBytes: number;
  readonly counters: Float64Array;
  private readonly targets = new Map<string, Target | undefined>();

  constructor(options: TcpRelayCoreOptions) {
    this.serviceKey = options.serviceKey;
    this.host = options.host;
    this.chooser = options.chooser;
    this.logger = options.logger;
    this.dialTimeoutsMs = options.dialTimeoutsMs ?? ENDPOINT_DIAL_TIMEOUTS_MS;
    this.connectBufferBytes = options.connectBufferBytes ?? 256 * 1024;
    this.counters = options.counters ?? new Float64Array(STAT_SLOTS);
  }

  /** An endpoint (`ip:port`) as the engine dials it; undefined when it is not one. */
  protected abstract parseTarget(endpoint: string): Target | undefined;

  /**
   * The endpoint for attempt `attempt` (0-based) of a client's connection, whose dial may take
   * `dialTimeoutsMs[attempt]`; undefined once the endpoints or the attempts have run out, the client
   * then counted as rejected (the caller cuts it with a reset).
   */
  protected chooseEndpoint(clientIP: string, attempt: number, affinityReset: boolean): string | undefined {
    const endpoint = this.chooser.nextEndpoint(this.serviceKey, clientIP, affinityReset);
    if (endpoint !== undefined && attempt < this.dialTimeoutsMs.length) return endpoint;
    this.counters[Stat.rejected]!++;
    this.logger?.debug(2, "connection rejected", {
      service: this.serviceKey,
      client: clientIP,
      reason: endpoint === undefined ? "no endpoints" : "no endpoint reachable",
    });
    return undefined;
  }

  protected target(endpoint: string): Target | undefined {
    let t = this.targets.get(endpoint);
    if (t !== undefined || this.targets.has(endpoint)) return t;
    t = this.parseTarget(endpoint);
    if (this.targets.size >= MAX_TARGETS) this.targets.clear();
    this.targets.set(endpoint, t);
    return t;
  }

  /** Counts and logs a dial attempt that failed or timed out; the caller then tries the next endpoint. */
  countDialFailure(clientIP: string, error: Error): void {
    this.counters[Stat.dialFailures]!++;
    this.logger?.debug(2, "dial failed", { service: this.serviceKey, client: clientIP, err: error });
  }

  countOut(toClient: boolean, n: number): void {
    if (toClient) this.counters[Stat.bytesToClients]! += n;
    else this.counters[Stat.bytesToEndpoints]! += n;
  }

  stats(): RelayStats {
    return statsFrom(this.counters);
  }
}
