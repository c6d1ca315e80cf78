/**
 * From clientConnection settings and flags to a ready KubeClient: the one call main.ts needs.
 */
import type { Logger } from "../log.ts";
import { silentLogger } from "../log.ts";
import type { Clock } from "../system/clock.ts";
import { contentTypeNote, KubeClient, type FetchLike } from "./client.ts";
import type { HostEnv, HostFiles } from "./host.ts";
import { loadRestConfig, type InClusterPaths } from "./kubeconfig.ts";

export interface ConnectOptions {
  /** `--kubeconfig` / clientConnection.kubeconfig. */
  readonly kubeconfigPath?: string | undefined;
  /** `--master`. */
  readonly masterUrl?: string | undefined;
  /** clientConnection.qps / burst. */
  readonly qps?: number | undefined;
  readonly burst?: number | undefined;
  /** clientConnection.contentType; only JSON is spoken, anything else is noted and ignored. */
  readonly contentType?: string | undefined;
  readonly requestTimeoutMs?: number;
  readonly logger?: Logger;
  readonly clock?: Clock;
  readonly fetch?: FetchLike;
  readonly files?: HostFiles;
  readonly env?: HostEnv;
  readonly inClusterPaths?: InClusterPaths;
}

export async function connect(options: ConnectOptions): Promise<KubeClient> {
  const logger = options.logger ?? silentLogger;
  if (!options.kubeconfigPath && !options.masterUrl) {
    logger.info("Neither kubeconfig file nor master URL was specified, using in-cluster configuration");
  }
  const config = await loadRestConfig({
    kubeconfigPath: options.kubeconfigPath,
    masterUrl: options.masterUrl,
    logger,
    ...(options.clock ? { clock: options.clock } : {}),
    ...(options.files ? { files: options.files } : {}),
    ...(options.env ? { env: options.env } : {}),
    ...(options.inClusterPaths ? { inClusterPaths: options.inClusterPaths } : {}),
  });
  const contentType = options.contentType ?? "";
  if (contentType !== "" && !contentType.startsWith("application/json")) {
    logger.info(contentTypeNote, { contentType });
  }
  logger.info("Using API server", { server: config.server, credentials: config.origin, auth: config.auth.kind });
  return new KubeClient({
    config,
    logger,
    ...(options.qps !== undefined ? { qps: options.qps } : {}),
    ...(options.burst !== undefined ? { burst: options.burst } : {}),
    ...(options.requestTimeoutMs !== undefined ? { requestTimeoutMs: options.requestTimeoutMs } : {}),
    ...(options.clock ? { clock: options.clock } : {}),
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });
}
