/**
 * Proxier health as upstream kube-proxy defines it: healthy while starting up and while every queued
 * update gets applied within the health timeout (2 × syncPeriod); unhealthy once the oldest update
 * still pending is older than that. Node eligibility (the Node is not being deleted and not tainted
 * for deletion by the cluster autoscaler) counts for /healthz only, not for /livez.
 */
import type { Clock } from "../system/clock.ts";

/** The taint the cluster autoscaler puts on a node it is about to delete. */
export const TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler";

export interface HealthStatus {
  /** The proxier's own health (ignores node eligibility), as /livez reports it. */
  readonly healthy: boolean;
  /** Whether this node should receive traffic; /healthz also requires it. */
  readonly nodeEligible: boolean;
  /** Last successful sync (ms since epoch), or undefined before the first. */
  readonly lastUpdated: number | undefined;
  /** The oldest update queued and not yet applied (ms since epoch), or undefined when none is pending. */
  readonly oldestPendingQueued: number | undefined;
  readonly currentTime: number;
  /** Why the last sync failed, when it did and no sync has succeeded since. */
  readonly lastFailure: string | undefined;
}

export interface ProxierHealthOptions {
  /** How long a queued update may wait before the proxier counts as unhealthy: 2 × syncPeriod upstream. */
  readonly healthTimeoutMs: number;
  readonly clock: Clock;
}

export class ProxierHealth {
  private readonly healthTimeoutMs: number;
  private readonly clock: Clock;
  private lastUpdated: number | undefined;
  private oldestPendingQueued: number | undefined;
  private lastFailure: string | undefined;
  // Eligible while starting up, until a Node event says otherwise.
  private nodeEligible = true;

  constructor(options: ProxierHealthOptions) {
    if (!(options.healthTimeoutMs > 0)) throw new Error(`healthTimeoutMs must be positive, got ${options.healthTimeoutMs}`);
    this.healthTimeoutMs = options.healthTimeoutMs;
    this.clock = options.clock;
  }

  /** Something changed that needs a sync; only the oldest pending request counts. */
  queued(): void {
    this.oldestPendingQueued ??= this.clock.now();
  }

  /** A sync applied everything that was pending. */
  updated(): void {
    this.oldestPendingQueued = undefined;
    this.lastUpdated = this.clock.now();
    this.lastFailure = undefined;
  }

  /** A sync failed; kept for logs and status only, health still follows the timeout rule. */
  failed(reason: string): void {
    this.lastFailure = reason;
  }

  setNodeEligible(eligible: boolean): void {
    this.nodeEligible = eligible;
  }

  /** Node eligibility from a Node object's deletion timestamp and taints. */
  syncNode(node: { readonly deletionTimestamp?: string | null | undefined; readonly taints?: readonly { readonly key: string }[] | undefined }): void {
    this.nodeEligible = !node.deletionTimestamp && !(node.taints ?? []).some((t) => t.key === TO_BE_DELETED_TAINT);
  }

  /** The proxier's health, ignoring the node (what service health checks and /livez use). */
  isHealthy(): boolean {
    return this.status().healthy;
  }

  status(): HealthStatus {
    const currentTime = this.clock.now();
    const healthy = this.oldestPendingQueued === undefined || currentTime - this.oldestPendingQueued < this.healthTimeoutMs;
    return {
      healthy,
      nodeEligible: this.nodeEligible,
      lastUpdated: this.lastUpdated,
      oldestPendingQueued: this.oldestPendingQueued,
      currentTime,
      lastFailure: this.lastFailure,
    };
  }
}
