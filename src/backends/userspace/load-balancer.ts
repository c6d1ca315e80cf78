import type { SessionAffinity } from "../../model/types.ts";
import type { Clock } from "../../system/clock.ts";
import { realClock } from "../../system/clock.ts";

/** Upstream's default ClientIP affinity timeout (3 hours), used when a service gives 0. */
export const DEFAULT_AFFINITY_TIMEOUT_SECONDS = 10_800;

/**
 * Chooses the endpoint for each new connection (TCP) or new client (UDP). The relays only see this
 * narrow view, so a relay in another thread can be handed a different implementation.
 */
export interface EndpointChooser {
  /**
   * The next endpoint ("ip:port", "[v6]:port") for a client of `serviceKey`, or undefined when the
   * service is unknown or has no endpoints. `sessionAffinityReset` is set after a failed dial: the
   * client's sticky endpoint is ignored and replaced.
   */
  nextEndpoint(serviceKey: string, clientIP: string, sessionAffinityReset: boolean): string | undefined;
  /**
   * Whether choices for this service depend on the client IP. When not, relays pass "" and save the
   * getpeername(2) per connection that reading the address costs.
   */
  usesClientIP(serviceKey: string): boolean;
}

interface Sticky {
  endpoint: string;
  lastUsedMs: number;
}

interface ServiceState {
  /** Shuffled once per change of the set, then walked in order. */
  endpoints: string[];
  index: number;
  affinity: SessionAffinity;
  /** client IP → sticky endpoint; only used when affinity is ClientIP. */
  readonly sticky: Map<string, Sticky>;
}

export interface LoadBalancerOptions {
  readonly clock?: Clock;
  /** [0, 1) source for the reshuffle; injectable so tests can pin an order. */
  readonly random?: () => number;
}

/**
 * Round robin per service port with optional ClientIP affinity, the userspace mode's balancing rules:
 * the endpoint list is reshuffled only when its set changes (so every kproxy does not start on the same
 * pod), a sticky client keeps its endpoint while it keeps coming back within timeoutSeconds, and
 * affinity to an endpoint that left the set is dropped.
 */
export class LoadBalancer implements EndpointChooser {
  private readonly services = new Map<string, ServiceState>();
  private readonly clock: Clock;
  private readonly random: () => number;

  constructor(options: LoadBalancerOptions = {}) {
    this.clock = options.clock ?? realClock;
    this.random = options.random ?? Math.random;
  }

  /** Sets a service port's endpoints and affinity. An unchanged set keeps its order and position. */
  update(serviceKey: string, endpoints: readonly string[], affinity: SessionAffinity = { type: "None" }): void {
    const state = this.services.get(serviceKey);
    if (!state) {
      this.services.set(serviceKey, {
        endpoints: this.shuffle(endpoints),
        index: 0,
        affinity,
        sticky: new Map(),
      });
      return;
    }
    if (affinity.type === "None") state.sticky.clear();
    state.affinity = affinity;
    if (sameSet(state.endpoints, endpoints)) return;
    const next = new Set(endpoints);
    for (const [ip, s] of state.sticky) if (!next.has(s.endpoint)) state.sticky.delete(ip);
    state.endpoints = this.shuffle(endpoints);
    state.index = 0;
  }

  remove(serviceKey: string): void {
    this.services.delete(serviceKey);
  }

  has(serviceKey: string): boolean {
    return this.services.has(serviceKey);
  }

  /** The current endpoints of a service port in balancing order (a copy). */
  endpoints(serviceKey: string): string[] {
    return [...(this.services.get(serviceKey)?.endpoints ?? [])];
  }

  usesClientIP(serviceKey: string): boolean {
    return this.services.get(serviceKey)?.affinity.type === "ClientIP";
  }

  nextEndpoint(serviceKey: string, clientIP: string, sessionAffinityReset: boolean): string | undefined {
    const state = this.services.get(serviceKey);
    if (!state || state.endpoints.length === 0) return undefined;
    const ttlMs = affinityTtlMs(state.affinity);
    // The clock is read only with affinity: without it this runs once per connection for nothing.
    const now = ttlMs === undefined ? 0 : this.clock.now();
    if (ttlMs !== undefined && !sessionAffinityReset) {
      const sticky = state.sticky.get(clientIP);
      // Whole seconds, as upstream compares them: a client is sticky while floor(idle s) < timeout.
      if (sticky && Math.floor((now - sticky.lastUsedMs) / 1000) * 1000 < ttlMs) {
        sticky.lastUsedMs = now;
        return sticky.endpoint;
      }
    }
    const endpoint = state.endpoints[state.index] as string;
    state.index = (state.index + 1) % state.endpoints.length;
    if (ttlMs !== undefined) state.sticky.set(clientIP, { endpoint, lastUsedMs: now });
    return endpoint;
  }

  /** How many ClientIP affinity records are held, over all services. */
  affinityRecords(): number {
    let n = 0;
    for (const state of this.services.values()) n += state.sticky.size;
    return n;
  }

  /** Drops affinity records idle for timeoutSeconds or more; call it now and then (each sync will do). */
  cleanupStaleAffinity(): void {
    const now = this.clock.now();
    for (const state of this.services.values()) {
      const ttlMs = affinityTtlMs(state.affinity);
      if (ttlMs === undefined) continue;
      for (const [ip, s] of state.sticky) {
        if (Math.floor((now - s.lastUsedMs) / 1000) * 1000 >= ttlMs) state.sticky.delete(ip);
      }
    }
  }

  private shuffle(endpoints: readonly string[]): string[] {
    const out = [...endpoints];
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(this.random() * (i + 1));
      const t = out[i] as string;
      out[i] = out[j] as string;
      out[j] = t;
    }
    return out;
  }
}

function affinityTtlMs(affinity: SessionAffinity): number | undefined {
  if (affinity.type !== "ClientIP") return undefined;
  const seconds = affinity.timeoutSeconds > 0 ? affinity.timeoutSeconds : DEFAULT_AFFINITY_TIMEOUT_SECONDS;
  return seconds * 1000;
}

function sameSet(current: readonly string[], next: readonly string[]): boolean {
  if (current.length !== next.length) return false;
  const have = new Set(current);
  if (have.size !== new Set(next).size) return false;
  for (const e of next) if (!have.has(e)) return false;
  return true;
}
