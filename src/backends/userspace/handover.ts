/**
 * What the relay threads share to move established connections between them: each thread's recent
 * load, and per thread an inbox of connections handed to it. A connection is handed over as its
 * two socket fds (fds belong to the process, so any thread can take them up) plus its half-close
 * state; nothing else of an established, idle connection needs to travel.
 */

/** One handed-over connection. */
export interface Handover {
  /** Which listen (service port) the connection belongs to; every thread of that port knows it by this id. */
  readonly listenId: number;
  readonly clientFd: number;
  /** -1 for a connection just accepted, not yet dialled: the receiving thread dials it. */
  readonly backendFd: number;
  /** `HandoverFlag` bits: FINs already received or sent on either socket. */
  readonly flags: number;
}

export const HandoverFlag = {
  clientFinIn: 1,
  clientFinOut: 2,
  backendFinIn: 4,
  backendFinOut: 8,
} as const;

const LOCK = 0;
const COUNT = 1;
const HEADER_WORDS = 2;
const RECORD_WORDS = 4;
/** Handovers one inbox holds until its thread takes them (a thread takes them within one wait). */
export const INBOX_CAPACITY = 256;
const INBOX_WORDS = HEADER_WORDS + INBOX_CAPACITY * RECORD_WORDS;

/**
 * A thread's inbox in shared memory: any thread may put, only the owner takes. A spin lock guards it;
 * a put or a take holds it for a few word copies.
 */
export class HandoverInbox {
  constructor(private readonly words: Int32Array) {}

  /** Adds a handover; false when the inbox is full (the caller keeps the connection). */
  put(h: Handover): boolean {
    const w = this.words;
    this.lock();
    try {
      const n = w[COUNT] as number;
      if (n >= INBOX_CAPACITY) return false;
      const at = HEADER_WORDS + n * RECORD_WORDS;
      w[at] = h.listenId;
      w[at + 1] = h.clientFd;
      w[at + 2] = h.backendFd;
      w[at + 3] = h.flags;
      w[COUNT] = n + 1;
      return true;
    } finally {
      this.unlock();
    }
  }

  /** Takes every handover, oldest first. */
  takeAll(): Handover[] {
    const w = this.words;
    const out: Handover[] = [];
    this.lock();
    try {
      const n = w[COUNT] as number;
      for (let i = 0; i < n; i++) {
        const at = HEADER_WORDS + i * RECORD_WORDS;
        out.push({ listenId: w[at] as number, clientFd: w[at + 1] as number, backendFd: w[at + 2] as number, flags: w[at + 3] as number });
      }
      w[COUNT] = 0;
    } finally {
      this.unlock();
    }
    return out;
  }

  private lock(): void {
    // Held by another thread for a few word copies at most.
    while (Atomics.compareExchange(this.words, LOCK, 0, 1) !== 0);
  }

  private unlock(): void {
    Atomics.store(this.words, LOCK, 0);
  }
}

/**
 * The shared part, created by the owner of the threads and sent to each: `loads[i]` is thread i's
 * load (0–1: the share of its last balancing interval it spent with work rather than waiting) and
 * `loads[i + 1]` how many connections it has handed to others; `inFlight[i]` how many new connections
 * are on their way to thread i and not yet taken up; and thread i's inbox, with the eventfd that
 * announces a put to it.
 */
export interface HandoverShared {
  readonly loads: SharedArrayBuffer;
  readonly inFlight: SharedArrayBuffer;
  readonly inboxes: SharedArrayBuffer;
  readonly inboxFds: readonly number[];
}

export function createHandoverShared(threads: number, inboxFds: readonly number[]): HandoverShared {
  return {
    // Two Float64 per thread: load, connections handed over.
    loads: new SharedArrayBuffer(threads * 16),
    inFlight: new SharedArrayBuffer(threads * 4),
    inboxes: new SharedArrayBuffer(threads * INBOX_WORDS * 4),
    inboxFds,
  };
}

/** Thread `index`'s inbox within `shared`. */
export function inboxOf(shared: HandoverShared, index: number): HandoverInbox {
  return new HandoverInbox(new Int32Array(shared.inboxes, index * INBOX_WORDS * 4, INBOX_WORDS));
}

export function loadsView(shared: HandoverShared): Float64Array {
  return new Float64Array(shared.loads);
}

/** Established connections all threads have handed to one another so far. */
export function connectionsMoved(shared: HandoverShared): number {
  const loads = loadsView(shared);
  let moved = 0;
  for (let i = 1; i < loads.length; i += 2) moved += loads[i] ?? 0;
  return moved;
}

export function inFlightView(shared: HandoverShared): Int32Array {
  return new Int32Array(shared.inFlight);
}

/**
 * Which slot of a port's threads should relay a connection just accepted by slot `self`: the slot
 * with the fewest connections (those it relays plus those on their way to it), when that is fewer
 * than `self` has; else `self`. Connections so spread evenly as they come, as HAProxy's multi-queue
 * accept does, and two long-lived streams do not start out on one core.
 */
export function acceptTarget(self: number, slots: number, connectionsOf: (slot: number) => number): number {
  let best = self;
  let fewest = connectionsOf(self);
  for (let i = 0; i < slots; i++) {
    const n = connectionsOf(i);
    if (n < fewest) {
      fewest = n;
      best = i;
    }
  }
  return best;
}

/** When a thread hands connections over (see `handoverTarget`). */
export interface HandoverLimits {
  /** A thread's load (the share of time it had work, not waiting for events) past which it is saturated. */
  readonly saturatedLoad: number;
  /** The load below which another thread of the port can take connections. */
  readonly spareLoad: number;
}

export const DEFAULT_HANDOVER_LIMITS: HandoverLimits = { saturatedLoad: 0.9, spareLoad: 0.5 };

/**
 * The thread to which thread `self`, one of `group` (the threads serving a port), should hand part of
 * its connections: the least loaded other thread with spare room, when `self` is saturated; undefined
 * to keep them. New connections go to whichever thread is idle when they come, and a long-lived busy
 * one stays where it landed, so two busy streams can end up sharing one core while another idles.
 */
export function handoverTarget(
  self: number,
  group: readonly number[],
  loadOf: (thread: number) => number,
  limits: HandoverLimits = DEFAULT_HANDOVER_LIMITS,
): number | undefined {
  if (group.length < 2 || loadOf(self) <= limits.saturatedLoad) return undefined;
  let target: number | undefined;
  let least = limits.spareLoad;
  for (const j of group) {
    const l = loadOf(j);
    if (j !== self && l < least) {
      least = l;
      target = j;
    }
  }
  return target;
}
