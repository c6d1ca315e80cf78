import type { Logger } from "../../log.ts";
import type { SessionAffinity } from "../../model/types.ts";
import type { CloseOptions, RelayStats } from "./proxy-socket.ts";
import { ENDPOINT_DIAL_TIMEOUTS_MS, Stat, STAT_SLOTS, statsFrom, sumStats } from "./proxy-socket.ts";
import type { RelayEngine, WorkerReply, WorkerRequest } from "./relay-protocol.ts";
import type { TcpRelay } from "./tcp-relay.ts";
import { EFD_NONBLOCK_CLOEXEC, openLibc, pinned } from "./libc.ts";
import { connectionsMoved, createHandoverShared, DEFAULT_HANDOVER_LIMITS } from "./handover.ts";
import type { HandoverLimits, HandoverShared } from "./handover.ts";
import type { Libc } from "./libc.ts";
import type { Pointer } from "bun:ffi";

export interface RelayWorkersOptions {
  /** Relay threads; defaults to the number of CPUs. */
  readonly threads?: number;
  /** The worker entry; defaults to relay-worker.ts next to this module. */
  readonly workerUrl?: string | URL;
  readonly dialTimeoutsMs?: readonly number[];
  readonly logger?: Logger;
  /** How the threads move bytes; "epoll" (where it runs) by default. */
  readonly engine?: RelayEngine;
  /**
   * How the threads of one port take connections: "shared", one listening socket in every thread's
   * epoll set, each connection waking one thread that is idle (epoll engine only; else "reuseport");
   * "reuseport", a socket per thread, the kernel choosing one by hashing the connection's addresses.
   */
  readonly accept?: AcceptMode;
  /**
   * New connections are passed on to the thread with the fewest, and a saturated thread hands part of
   * its busy ones to an idle one (see epoll-tcp-relay.ts `Rebalancing`); on by default where the
   * threads run the epoll relay. Limits other than the defaults are for tests.
   */
  readonly rebalance?: boolean | Partial<HandoverLimits>;
}

export type AcceptMode = "shared" | "reuseport";

/** A port relayed by several threads; `activeByThread` gives each thread's open connections. */
export interface ThreadedTcpRelay extends TcpRelay {
  activeByThread(): number[];
}

export interface WorkerListenOptions {
  readonly serviceKey: string;
  readonly host: string;
  /** 0 lets the kernel choose. */
  readonly port: number;
  /**
   * How many threads accept on this port; all by default. Give 1 for ClientIP affinity: one client's
   * connections would otherwise meet different threads (whichever is idle, or by 4-tuple hash), each
   * with its own affinity table.
   */
  readonly threads?: number;
}

/**
 * TCP relays spread over worker threads so the relay uses every core. Each thread balances with its
 * own copy of the endpoints (round robin per thread, which sums to an even spread); `update` and
 * `remove` go to all threads at once, so a change applies to the next connection on every thread.
 */
export class TcpRelayWorkers {
  private readonly workers: Worker[] = [];
  /** Threads that have failed, with why: nothing sent to them is ever answered, so requests fail at once. */
  private readonly failed = new Map<Worker, string>();
  private readonly pending = new Map<number, { readonly worker: Worker; readonly resolve: (reply: WorkerReply) => void }>();
  private nextId = 1;
  private readonly dialTimeoutsMs: readonly number[];
  private readonly logger: Logger | undefined;
  private readonly engine: RelayEngine;
  private readonly accept: AcceptMode;
  private closed = false;
  /**
   * Each epoll thread's wake fd: a thread blocks in epoll_wait for up to 20 ms between looks at its
   * messages, so every message is followed by a write here to end that wait at once.
   */
  private readonly wakeFds = new Map<Worker, number>();
  private wakeLibc: { readonly c: Libc; readonly one: { readonly at: Pointer } } | undefined;
  /** Shared with the threads for moving connections between them; undefined when they do not. */
  private readonly handover: HandoverShared | undefined;
  private readonly handoverLimits: HandoverLimits;
  private nextListenId = 1;

  private constructor(options: RelayWorkersOptions) {
    this.dialTimeoutsMs = options.dialTimeoutsMs ?? ENDPOINT_DIAL_TIMEOUTS_MS;
    this.logger = options.logger;
    this.engine = options.engine ?? "epoll";
    this.accept = options.accept ?? "shared";
    const threads = Math.max(1, options.threads ?? navigator.hardwareConcurrency);
    const url = options.workerUrl ?? defaultWorkerUrl();
    const rebalance = options.rebalance ?? true;
    this.handover = threads > 1 && this.engine === "epoll" && rebalance !== false ? handoverFor(threads) : undefined;
    this.handoverLimits = { ...DEFAULT_HANDOVER_LIMITS, ...(typeof rebalance === "object" ? rebalance : {}) };
    for (let i = 0; i < threads; i++) {
      const w = new Worker(url);
      w.onmessage = (ev: MessageEvent<WorkerReply>) => {
        if (ev.data.wakeFd !== undefined && !this.wakeFds.has(w)) this.learnWakeFd(w, ev.data.wakeFd);
        const p = this.pending.get(ev.data.id);
        this.pending.delete(ev.data.id);
        p?.resolve(ev.data);
      };
      w.onerror = (ev) => {
        this.logger?.error("relay thread failed", { thread: i, err: ev.message });
        const why = `relay thread ${i} failed: ${ev.message}`;
        this.failed.set(w, why);
        // Whatever this thread was asked is never answered now; fail it instead of hanging.
        for (const [id, p] of this.pending) {
          if (p.worker !== w) continue;
          this.pending.delete(id);
          p.resolve({ id, error: why });
        }
      };
      this.workers.push(w);
    }
  }

  static start(options: RelayWorkersOptions = {}): TcpRelayWorkers {
    return new TcpRelayWorkers(options);
  }

  get threads(): number {
    return this.workers.length;
  }

  update(serviceKey: string, endpoints: readonly string[], affinity: SessionAffinity = { type: "None" }): void {
    this.broadcast({ op: "update", serviceKey, endpoints: [...endpoints], affinity });
  }

  remove(serviceKey: string): void {
    this.broadcast({ op: "remove", serviceKey });
  }

  /** Every thread forgets its ClientIP affinity records past their timeout. */
  cleanupStaleAffinity(): void {
    this.broadcast({ op: "sweepAffinity" });
  }

  /** ClientIP affinity records held over all threads (a failed thread counts none). */
  async affinityRecords(): Promise<number> {
    const replies = await Promise.all(this.workers.map((w) => this.request(w, (id) => ({ op: "affinityRecords", id }))));
    return replies.reduce((sum, r) => sum + (r.count ?? 0), 0);
  }

  /** Opens the service port on `threads` threads; resolves once every one of them listens. */
  async listen(options: WorkerListenOptions): Promise<ThreadedTcpRelay> {
    // A thread that has died takes its listeners with it; new ports go to the threads still running.
    const healthy = this.workers.filter((w) => !this.failed.has(w));
    if (healthy.length === 0) throw new Error(`listen ${options.host}:${options.port}: every relay thread has failed`);
    const threads = Math.min(healthy.length, Math.max(1, options.threads ?? healthy.length));
    const counters = new SharedArrayBuffer(threads * STAT_SLOTS * 8);
    const used = healthy.slice(0, threads);
    const reusePort = threads > 1;
    const group = used.map((w) => this.workers.indexOf(w));
    const listenId = this.nextListenId++;
    const rebalancing = (slot: number) =>
      this.handover && threads > 1 ? { rebalancing: { shared: this.handover, threadIndex: group[slot] as number, group, listenId, limits: this.handoverLimits } } : {};
    const share = reusePort && this.engine === "epoll" && this.accept === "shared";
    // The first thread binds (and learns the port when 0 was asked for); the others join its socket
    // when it could share it, else open their own on that port.
    const first = await this.request(used[0] as Worker, (id) => ({
      op: "listen",
      id,
      serviceKey: options.serviceKey,
      host: options.host,
      port: options.port,
      reusePort,
      share,
      engine: this.engine,
      dialTimeoutsMs: this.dialTimeoutsMs,
      counters,
      slot: 0,
      ...rebalancing(0),
    }));
    if (first.error !== undefined || first.port === undefined) throw new Error(`listen ${options.host}:${options.port}: ${first.error}`);
    const port = first.port;
    const joinFd = first.fd;
    const rest = await Promise.all(
      used.slice(1).map((w, i) =>
        this.request(w, (id) => ({
          op: "listen",
          id,
          serviceKey: options.serviceKey,
          host: options.host,
          port,
          reusePort,
          ...(joinFd !== undefined ? { joinFd } : {}),
          engine: this.engine,
          dialTimeoutsMs: this.dialTimeoutsMs,
          counters,
          slot: i + 1,
          ...rebalancing(i + 1),
        })),
      ),
    );
    const failed = rest.find((r) => r.error !== undefined);
    const closeAll = (closeActive: boolean) =>
      Promise.all(used.map((w) => this.request(w, (id) => ({ op: "close", id, serviceKey: options.serviceKey, closeActive })))).then(() => {});
    if (failed) {
      await closeAll(true);
      throw new Error(`listen ${options.host}:${port} on all threads: ${failed.error}`);
    }
    const view = new Float64Array(counters);
    return {
      protocol: "TCP",
      serviceKey: options.serviceKey,
      host: options.host,
      port,
      stats: (): RelayStats => sumStats(used.map((_, i) => statsFrom(view, i * STAT_SLOTS))),
      activeByThread: () => used.map((_, i) => view[i * STAT_SLOTS + Stat.active] ?? 0),
      close: (opts: CloseOptions = {}) => closeAll(opts.closeActive ?? false),
    };
  }

  /** Stops every thread (and with them their listeners and connections). */
  async close(): Promise<void> {
    if (this.closed) return;
    // The epoll relay's sockets are the process's, not the thread's: a stopped thread would leave its
    // listeners open (and taking their share of new connections). Each thread closes its own first.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.all(this.workers.map((w) => this.request(w, (id) => ({ op: "closeAll", id })))),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, CLOSE_ALL_TIMEOUT_MS);
      }),
    ]);
    clearTimeout(timer);
    this.closed = true;
    for (const w of this.workers) w.terminate();
    if (this.handover) {
      const c = openLibc();
      for (const fd of this.handover.inboxFds) if (fd >= 0) c?.fn.close(fd);
    }
    for (const p of this.pending.values()) p.resolve({ id: 0, error: "relay threads stopped" });
    this.pending.clear();
  }

  /** Established connections the threads have handed to one another so far; undefined when they do not rebalance. */
  connectionsMoved(): number | undefined {
    return this.handover ? connectionsMoved(this.handover) : undefined;
  }

  private broadcast(m: WorkerRequest): void {
    for (const w of this.workers) if (!this.failed.has(w)) this.post(w, m);
  }

  /** Posts `m`, then wakes the thread if it may be blocked in its epoll wait. */
  private post(w: Worker, m: WorkerRequest): void {
    const fd = this.closed ? undefined : this.wakeFds.get(w);
    const lib = this.wakeLibc;
    if (fd === undefined || lib === undefined) {
      w.postMessage(m);
      return;
    }
    w.postMessage({ ...m, woke: true });
    lib.c.fn.write(fd, lib.one.at, 8);
  }

  private learnWakeFd(w: Worker, fd: number): void {
    if (this.wakeLibc === undefined) {
      const c = openLibc();
      if (c === undefined) return;
      const one = pinned(8);
      one.view.setBigUint64(0, 1n, true);
      this.wakeLibc = { c, one };
    }
    this.wakeFds.set(w, fd);
  }

  private request(w: Worker, make: (id: number) => WorkerRequest): Promise<WorkerReply> {
    if (this.closed) return Promise.resolve({ id: 0, error: "relay threads stopped" });
    const failed = this.failed.get(w);
    if (failed !== undefined) return Promise.resolve({ id: 0, error: failed });
    const id = this.nextId++;
    return new Promise<WorkerReply>((resolve) => {
      this.pending.set(id, { worker: w, resolve });
      this.post(w, make(id));
    });
  }
}

/** The shared part of rebalancing, with one eventfd per thread; undefined without libc. */
function handoverFor(threads: number): HandoverShared | undefined {
  const c = openLibc();
  if (!c) return undefined;
  const fds: number[] = [];
  for (let i = 0; i < threads; i++) {
    const fd = c.fn.eventfd(0, EFD_NONBLOCK_CLOEXEC);
    if (fd < 0) {
      for (const f of fds) c.fn.close(f);
      return undefined;
    }
    fds.push(fd);
  }
  return createHandoverShared(threads, fds);
}

/** How long stopping waits for the threads to close their sockets before stopping them anyway. */
const CLOSE_ALL_TIMEOUT_MS = 2000;

/**
 * Where the worker entry lives. In the compiled binary every entry point sits under Bun's virtual
 * root, at its path relative to src/ (build.ts must list relay-worker.ts as an entry point); from
 * source it is the file next to this one.
 */
function defaultWorkerUrl(): string {
  if (import.meta.url.startsWith("file:///$bunfs/")) return "/$bunfs/root/backends/userspace/relay-worker.ts";
  return new URL("./relay-worker.ts", import.meta.url).href;
}
