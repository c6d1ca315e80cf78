import type { SessionAffinity } from "../../model/types.ts";
import type { Rebalancing } from "./epoll-tcp-relay.ts";

/**
 * How a relay thread moves bytes: "epoll" on raw sockets through libc (fewer system calls; Linux),
 * "bun" on Bun's sockets. A thread that cannot run "epoll" uses "bun".
 */
export type RelayEngine = "epoll" | "bun";

/**
 * Messages from the owning thread to a relay thread; `woke` when the owner also wrote to the thread's
 * wake fd for it (so the thread knows a message is on its way and does not block before it arrives).
 */
export type WorkerRequest = WorkerMessage & { readonly woke?: boolean };

type WorkerMessage =
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
      /** Open the listener for the other threads to join (epoll engine): the reply carries its fd. */
      readonly share?: boolean;
      /** Accept on this listener fd, opened by another thread with `share`, instead of binding. */
      readonly joinFd?: number;
      readonly engine: RelayEngine;
      readonly dialTimeoutsMs: readonly number[];
      /**
       * Where this port's threads place connections (epoll engine; see `Rebalancing`), but for the
       * thread's slot and the port's counters, which the thread takes from `slot` and `counters`.
       */
      readonly rebalancing?: Omit<Rebalancing, "slot" | "portCounters">;
      /** Shared counters of this listener; this thread writes slot `slot`. */
      readonly counters: SharedArrayBuffer;
      readonly slot: number;
    }
  | { readonly op: "close"; readonly id: number; readonly serviceKey: string; readonly closeActive: boolean }
  /** Close every listener and connection of the thread (before it is stopped: raw sockets outlive it). */
  | { readonly op: "closeAll"; readonly id: number };

/** Answers to `listen`, `close` and `affinityRecords`. */
export type WorkerReply = {
  readonly id: number;
  readonly port?: number;
  /** The shared listener's fd, when `listen` asked to `share` and the thread runs the epoll relay. */
  readonly fd?: number;
  /** Answer to `listen` from a thread running the epoll relay: write 8 bytes here to end its wait. */
  readonly wakeFd?: number;
  readonly count?: number;
  readonly error?: string;
};
