import type { ChangeSet, Snapshot } from "../model/types.ts";

export type ProxyMode = "iptables" | "ipvs" | "userspace";

/** Counts a backend reports after a sync; they feed the metrics. */
export interface SyncResult {
  readonly servicePorts: number;
  readonly endpoints: number;
  /** Rules written (per table), where the backend writes rules. */
  readonly rules?: Readonly<Record<string, number>>;
  /** Set when the sync changed only part of the state. */
  readonly partial?: boolean;
  /**
   * Set when the backend has already handed the sync's garbage back to the system (a full collection
   * around a large restore); the sync loop then skips the collection it runs after a full sync.
   */
  readonly memoryReleased?: boolean;
}

/**
 * One proxy mode. `sync` turns a snapshot into forwarding; it throws on failure and must then leave
 * whatever the kernel already has in place. `cleanup` removes everything this mode ever created.
 */
export interface Backend {
  readonly mode: ProxyMode;
  sync(snapshot: Snapshot, changes: ChangeSet): Promise<SyncResult>;
  /** A plan of what `sync` would apply, as text, touching nothing (for --dry-run). */
  plan(snapshot: Snapshot): string;
  cleanup(): Promise<void>;
  /** Stop sockets and timers; leaves kernel state in place. */
  close(): Promise<void>;
}
