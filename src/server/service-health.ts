/**
 * Health check node ports for Services with externalTrafficPolicy Local (spec.healthCheckNodePort):
 * one small HTTP server per service that tells an external load balancer whether this node has local
 * endpoints for it. 200 when it has some and the proxier is healthy, 503 otherwise, with upstream
 * kube-proxy's body and headers so cloud load balancers read it unchanged.
 */
import type { Logger } from "../log.ts";

/** What the answers depend on besides the endpoint count. */
export interface ProxierHealthCheck {
  isHealthy(): boolean;
}

export interface ServiceHealthOptions {
  readonly health: ProxierHealthCheck;
  readonly logger: Logger;
  /** Addresses to listen on; all IPv4 addresses by default (nodePortAddresses narrows them). */
  readonly nodeIPs?: readonly string[];
}

interface Instance {
  readonly namespace: string;
  readonly name: string;
  readonly port: number;
  readonly servers: ReturnType<typeof Bun.serve>[];
  localEndpoints: number;
}

/** Splits "namespace/name". */
function splitName(nsName: string): { namespace: string; name: string } {
  const slash = nsName.indexOf("/");
  return slash < 0 ? { namespace: "", name: nsName } : { namespace: nsName.slice(0, slash), name: nsName.slice(slash + 1) };
}

/** Upstream's body: a tab-indented JSON document without a trailing newline. */
export function serviceHealthBody(namespace: string, name: string, localEndpoints: number, proxyHealthy: boolean): string {
  return [
    "{",
    `\t"service": {`,
    `\t\t"namespace": ${JSON.stringify(namespace)},`,
    `\t\t"name": ${JSON.stringify(name)}`,
    "\t},",
    `\t"localEndpoints": ${localEndpoints},`,
    `\t"serviceProxyHealthy": ${proxyHealthy}`,
    "}",
  ].join("\n");
}

export class ServiceHealthServer {
  private readonly services = new Map<string, Instance>();
  private readonly nodeIPs: readonly string[];

  constructor(private readonly options: ServiceHealthOptions) {
    this.nodeIPs = options.nodeIPs?.length ? options.nodeIPs : ["0.0.0.0"];
  }

  /**
   * Makes exactly these services ("namespace/name" → healthCheckNodePort) served: closes the ones gone
   * or moved to another port, opens new ones, leaves the rest alone. A port that cannot be opened is
   * logged and tried again on the next call.
   */
  async syncServices(desired: ReadonlyMap<string, number>): Promise<void> {
    const closing: Promise<void>[] = [];
    for (const [nsName, instance] of this.services) {
      if (desired.get(nsName) !== instance.port) {
        this.options.logger.debug(2, "Closing healthcheck", { service: nsName, port: instance.port });
        closing.push(closeAll(instance.servers));
        this.services.delete(nsName);
      }
    }
    await Promise.all(closing);

    for (const [nsName, port] of desired) {
      if (this.services.has(nsName)) continue;
      this.options.logger.debug(2, "Opening healthcheck", { service: nsName, port });
      const { namespace, name } = splitName(nsName);
      const instance: Instance = { namespace, name, port, servers: [], localEndpoints: 0 };
      try {
        for (const hostname of this.nodeIPs) {
          instance.servers.push(Bun.serve({ hostname, port, development: false, fetch: () => this.answer(nsName) }));
        }
      } catch (err) {
        // Whatever did open is closed again so a later attempt (or another owner) can take the port.
        await closeAll(instance.servers);
        this.options.logger.error("Failed to start healthcheck", { service: nsName, port, err });
        continue;
      }
      this.services.set(nsName, instance);
    }
  }

  /** Local endpoint counts by "namespace/name"; services not listed have none. */
  syncEndpoints(localEndpoints: ReadonlyMap<string, number>): void {
    for (const [nsName, instance] of this.services) instance.localEndpoints = localEndpoints.get(nsName) ?? 0;
  }

  /** The port actually bound for a service (differs from the requested one only when that was 0). */
  portOf(nsName: string): number | undefined {
    return this.services.get(nsName)?.servers[0]?.port;
  }

  /** Services currently served. */
  served(): string[] {
    return [...this.services.keys()].sort();
  }

  async close(): Promise<void> {
    const all = [...this.services.values()];
    this.services.clear();
    await Promise.all(all.map((i) => closeAll(i.servers)));
  }

  private answer(nsName: string): Response {
    const instance = this.services.get(nsName);
    if (!instance) {
      // A request that raced the closing of this service's listener.
      return new Response(null, { status: 503 });
    }
    const proxyHealthy = this.options.health.isHealthy();
    const count = instance.localEndpoints;
    return new Response(serviceHealthBody(instance.namespace, instance.name, count, proxyHealthy), {
      status: count !== 0 && proxyHealthy ? 200 : 503,
      headers: {
        "Content-Type": "application/json",
        "X-Content-Type-Options": "nosniff",
        "X-Load-Balancing-Endpoint-Weight": String(count),
      },
    });
  }
}

async function closeAll(servers: readonly ReturnType<typeof Bun.serve>[]): Promise<void> {
  await Promise.all(servers.map((s) => s.stop(true)));
}
