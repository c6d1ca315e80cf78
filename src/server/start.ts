/**
 * The two long-running servers main.ts starts, wired to kproxy's metrics: health on
 * healthzBindAddress and metrics on metricsBindAddress. An empty address disables a server, as upstream.
 */
import type { Logger } from "../log.ts";
import type { KproxyMetrics } from "../metrics.ts";
import type { Clock } from "../system/clock.ts";
import { createHealthApp } from "./health-app.ts";
import type { ProxierHealth } from "./health.ts";
import { createMetricsApp } from "./metrics-server.ts";
import { serve, type ServerHandle } from "./serve.ts";

export interface CommonServerOptions {
  /** "host:port"; "" disables the server. */
  readonly address: string;
  readonly logger: Logger;
  readonly clock?: Clock;
  /** bindAddressHardFail: a failed bind rejects with BindError instead of being retried. */
  readonly hardFail?: boolean;
  readonly retryDelayMs?: number;
}

export interface HealthServerOptions extends CommonServerOptions {
  readonly health: ProxierHealth;
  readonly metrics?: KproxyMetrics;
}

export interface MetricsServerOptions extends CommonServerOptions {
  readonly metrics: KproxyMetrics;
  readonly mode: string;
  readonly configz?: () => unknown;
}

function common(name: string, o: CommonServerOptions) {
  return {
    name,
    address: o.address,
    logger: o.logger,
    ...(o.clock ? { clock: o.clock } : {}),
    ...(o.hardFail !== undefined ? { hardFail: o.hardFail } : {}),
    ...(o.retryDelayMs !== undefined ? { retryDelayMs: o.retryDelayMs } : {}),
  };
}

export async function startHealthServer(options: HealthServerOptions): Promise<ServerHandle | undefined> {
  if (options.address === "") return undefined;
  const app = createHealthApp({
    health: options.health,
    ...(options.metrics ? { healthzTotal: options.metrics.proxyHealthzTotal, livezTotal: options.metrics.proxyLivezTotal } : {}),
  });
  return serve({ ...common("healthz", options), app });
}

export async function startMetricsServer(options: MetricsServerOptions): Promise<ServerHandle | undefined> {
  if (options.address === "") return undefined;
  const app = createMetricsApp({
    registry: options.metrics.registry,
    mode: options.mode,
    ...(options.configz ? { configz: options.configz } : {}),
  });
  return serve({ ...common("metrics", options), app });
}
