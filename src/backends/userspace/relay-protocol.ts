import type { SessionAffinity } from "../../model/types.ts";

/**
 * How a relay thread moves bytes: "epoll" on raw sockets through libc (fewer system calls; Linux),
 * "bun" on Bun's sockets. A thread that cannot run "epoll" uses "bun".
 */
export type RelayEngine = "epoll" | "bun";

/** Messages from the owning thread to a relay thread. */
export type WorkerRequest =
  | { readonly op: "update"; readonly serviceKey: string; readonly endpoints: readonly string[]; readonly affinity: SessionAffinity }
  | { readonly op: "remove"; readonly serviceKey: string }
  /** Forget ClientIP affinity records past their timeout (sent with every sync). */
  | { readonly op: "sweepAffinity" }
  /** Answer with how many ClientIP affinity records this thread holds. */
  | { readonly op: "affinityRecords"; readonly id: number }
  | {
      readonly op: "listen";
      readonly id: number;
      readonly serviceKey: string;
      readonly host: string;
      readonly port: number;
      readonly reusePort: boolean;
      readonly engine: RelayEngine;
      readonly dialTimeoutsMs: readonly number[];
      /** Shared counters of this listener; this thread writes slot `slot`. */
      readonly counters: SharedArrayBuffer;
      readonly slot: number;
    }
  | { readonly op: "close"; readonly id: number; readonly serviceKey: string; readonly closeActive: boolean }
  /** Close every listener and connection of the thread (before it is stopped: raw sockets outlive it). */
  | { readonly op: "closeAll"; readonly id: number };

/** Answers to `listen`, `close` and `affinityRecords`. */
export type WorkerReply = { readonly id: number; readonly port?: number; readonly count?: number; readonly error?: string };
