import type { Backend } from "../backends/backend.ts";
import type { Logger } from "../log.ts";
import { type KproxyMetrics, recordChanges, recordSyncFailure, recordSyncQueued, recordSyncSuccess } from "../metrics.ts";
import type { ProxyModel } from "../model/tracker.ts";
import type { ProxierHealth } from "../server/health.ts";
import type { Clock } from "../system/clock.ts";
import { BoundedFrequencyRunner } from "./runner.ts";

export interface SyncLoopOptions {
  readonly model: ProxyModel;
  readonly backend: Backend;
  readonly health: ProxierHealth;
  readonly metrics: KproxyMetrics;
  readonly clock: Clock;
  readonly logger: Logger;
  /** minSyncPeriod: least time between syncs (a burst of two is allowed). */
  readonly minSyncPeriodMs: number;
  /** syncPeriod: a full sync happens at least this often, changes or not. */
  readonly syncPeriodMs: number;
  /** First retry delay after a failed sync; doubles per consecutive failure up to syncPeriod. */
  readonly retryBaseMs?: number;
  /**
   * Collects garbage after a successful full sync (default: a full collection, `Bun.gc(true)`).
   * A full sync leaves its rules text behind (tens of MB at 10,000 services); the engine collects
   * when allocation goes on, and an idle node allocates next to nothing, so without this that
   * memory stays resident until some later sync. About 50 ms per full sync at 10,000 services.
   * Skipped when the backend says it has released the sync's memory itself (`memoryReleased`).
   */
  readonly collectGarbage?: () => void;
  /** Called after every sync attempt (tests and --dry-run use it). */
  readonly onSynced?: (outcome: { ok: boolean; full: boolean; error?: unknown }) => void;
}

const collectAll = () => Bun.gc(true);

/**
 * Drives the backend from the model: every model change queues a sync on a bounded-frequency
 * runner; a sync takes the changed service ports and an immutable snapshot and hands them to the
 * backend. Health and metrics are recorded here, so every mode reports the same way.
 *
 * A failed sync loses its change set, so the next one is full; it is retried with backoff (upstream
 * waits a whole syncPeriod, too long on an edge node where one failed restore may mean a lost
 * service for 30 s).
 */
export class SyncLoop {
  private readonly runner: BoundedFrequencyRunner;
  private needFull = true;
  private lastFullSyncAt = Number.NEGATIVE_INFINITY;
  private consecutiveFailures = 0;
  private lastCounts = { services: 0, endpoints: 0 };

  constructor(private readonly options: SyncLoopOptions) {
    this.runner = new BoundedFrequencyRunner((signal) => this.syncOnce(signal), {
      name: `${options.backend.mode}-sync`,
      minIntervalMs: options.minSyncPeriodMs,
      maxIntervalMs: options.syncPeriodMs,
      clock: options.clock,
      logger: options.logger,
      onError: (error) => this.failed(error),
    });
  }

  /** Runs until `signal` aborts; resolves once the sync in flight, if any, has finished. */
  async start(signal: AbortSignal): Promise<void> {
    const { model } = this.options;
    const unsubscribe = model.onChange(() => this.changed());
    try {
      if (model.isSynced()) this.changed();
      await this.runner.start(signal);
    } finally {
      unsubscribe();
    }
  }

  private changed(): void {
    const { model, health, metrics, clock } = this.options;
    const counts = model.counts();
    recordChanges(
      metrics,
      {
        services: counts.serviceChangesTotal - this.lastCounts.services,
        endpoints: counts.endpointChangesTotal - this.lastCounts.endpoints,
      },
      { services: counts.serviceChangesPending, endpoints: counts.endpointChangesPending },
    );
    this.lastCounts = { services: counts.serviceChangesTotal, endpoints: counts.endpointChangesTotal };
    // Until the initial lists are in, a sync would remove rules for services not yet seen.
    if (!model.isSynced()) return;
    health.queued();
    recordSyncQueued(metrics, clock.now());
    this.runner.run();
  }

  private async syncOnce(_signal: AbortSignal): Promise<void> {
    const { model, backend, health, metrics, clock, logger } = this.options;
    if (!model.isSynced()) return;
    const startedMs = clock.now();
    const changes = model.takeChanges();
    const full = this.needFull || changes.full || startedMs - this.lastFullSyncAt >= this.options.syncPeriodMs;
    const snapshot = model.snapshot();
    health.setNodeEligible(snapshot.node.eligible);
    // A failure below loses this change set; the next sync must rewrite everything.
    this.needFull = true;
    const result = await backend.sync(snapshot, { ...changes, full });
    const endedMs = clock.now();
    this.needFull = false;
    if (full) this.lastFullSyncAt = startedMs;
    this.consecutiveFailures = 0;
    health.updated();
    const counts = model.counts();
    recordChanges(metrics, {}, { services: counts.serviceChangesPending, endpoints: counts.endpointChangesPending });
    recordSyncSuccess(metrics, { startedMs, endedMs, full: full || !result.partial, result, triggerTimes: changes.triggerTimes });
    logger.debug(2, "Synced proxy rules", {
      mode: backend.mode,
      full,
      changed: changes.changed.size,
      servicePorts: result.servicePorts,
      endpoints: result.endpoints,
      elapsed: `${endedMs - startedMs}ms`,
    });
    if (full && !result.memoryReleased) (this.options.collectGarbage ?? collectAll)();
    this.options.onSynced?.({ ok: true, full });
  }

  private failed(error: unknown): void {
    const { health, metrics, logger, syncPeriodMs } = this.options;
    this.consecutiveFailures++;
    const base = this.options.retryBaseMs ?? 1000;
    const delay = Math.min(syncPeriodMs, base * 2 ** Math.min(this.consecutiveFailures - 1, 20));
    const message = error instanceof Error ? error.message : String(error);
    health.failed(message);
    recordSyncFailure(metrics);
    logger.error("Sync failed; the rules already in place are kept", {
      mode: this.options.backend.mode,
      err: message,
      retryIn: `${delay}ms`,
      failures: this.consecutiveFailures,
    });
    this.runner.retryAfter(delay);
    this.options.onSynced?.({ ok: false, full: true, error });
  }
}
