/**
 * The TCP relay on raw sockets and one edge-triggered epoll set per thread, through libc (see
 * libc.ts). It does what tcp-relay.ts does with Bun's sockets (same options, same counters, same
 * half-close, reset, backpressure and dial-retry behaviour) in fewer system calls and with no
 * allocation per chunk: each socket is registered once for reading and writing with EPOLLET and
 * never modified, data moves through one fixed buffer, and only bytes a slow reader leaves behind are
 * copied. Per new connection that is about 15 calls (Bun's sockets make 26, HAProxy 20).
 *
 * The loop blocks in epoll_wait, so it suits a relay worker thread, where nothing else runs; between
 * turns the thread's own event loop runs (messages from the owner). The owner writes to the loop's
 * eventfd (`wakeFdOfThisThread`) after posting a message, which ends the turn at once, so an endpoint
 * change applies to the next connection rather than after up to `blockMs`. On a thread that serves
 * other sockets too, give `blockMs: 0`.
 */
import { ptr } from "bun:ffi";
import type { Pointer } from "bun:ffi";
import type { CloseOptions } from "./proxy-socket.ts";
import { splitHostPort, Stat, STAT_SLOTS } from "./proxy-socket.ts";
import type { TcpRelay, TcpRelayOptions } from "./tcp-relay.ts";
import { TcpRelayCore } from "./tcp-relay-core.ts";
import type { Handover, HandoverInbox, HandoverLimits, HandoverShared } from "./handover.ts";
import { acceptTarget, DEFAULT_HANDOVER_LIMITS, HandoverFlag, handoverTarget, inboxOf, inFlightView, loadsView } from "./handover.ts";
import type { Libc } from "./libc.ts";
import {
  ACCEPT_FLAGS,
  AF_INET,
  AF_INET6,
  EAGAIN,
  EFD_NONBLOCK_CLOEXEC,
  EINPROGRESS,
  EINTR,
  EPOLL_CLOEXEC,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLLERR,
  EPOLLET,
  EPOLLEXCLUSIVE,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  EPOLLRDHUP,
  IPPROTO_IPV6,
  IPPROTO_TCP,
  IPV6_V6ONLY,
  MSG_NOSIGNAL,
  openLibc,
  pinned,
  SHUT_WR,
  SO_LINGER,
  SO_REUSEADDR,
  SO_REUSEPORT,
  SOCK_STREAM_NONBLOCK_CLOEXEC,
  sockaddr,
  sockaddrIP,
  sockaddrPort,
  SOL_SOCKET,
  TCP_NODELAY,
} from "./libc.ts";

/** The Bun relay's options, but for `connect`: this relay dials on its own raw sockets. */
export interface EpollTcpRelayOptions extends Omit<TcpRelayOptions, "connect"> {
  /** How long one epoll_wait may block (ms); 0 polls (for a thread with other work). Default 20. */
  readonly blockMs?: number;
  /**
   * Accept on this listening socket (opened by another thread's relay with `shared`) instead of
   * opening one: the threads share one accept queue and the kernel wakes one waiting thread per
   * connection. That thread's relay owns the fd; this one never closes it.
   */
  readonly joinFd?: number;
  /** Open the listener for other threads to join (see `joinFd`): woken exclusively. */
  readonly shared?: boolean;
  /**
   * Moving established connections between the relay threads of this port (see `Rebalancing`):
   * what the threads share, this thread's index in it, the threads of this port (the opener first)
   * and the id all of them know this port by.
   */
  readonly rebalancing?: Rebalancing;
}

/**
 * Where a port's relay threads place connections. The kernel wakes whichever thread is idle for a new
 * connection, so a burst lands mostly on one; the accepting thread therefore passes a new connection
 * on to the port's thread with the fewest (handover.ts `acceptTarget`), undialled, through that
 * thread's inbox. And a connection stays where it landed for its whole life, so a saturated thread
 * (one that had work for nearly all of the last 100 ms, `handoverTarget`) hands every other one of
 * its busiest established connections to the least loaded thread of the port.
 */
export interface Rebalancing {
  readonly shared: HandoverShared;
  readonly threadIndex: number;
  readonly group: readonly number[];
  readonly listenId: number;
  readonly limits?: HandoverLimits;
  /** This thread's slot in `group`, and the counters of every slot of the port (STAT_SLOTS each). */
  readonly slot: number;
  readonly portCounters: Float64Array;
}

/** A relay on this thread's epoll loop; `listenerFd` is what other threads pass as `joinFd`. */
export interface EpollTcpRelay extends TcpRelay {
  readonly listenerFd: number;
}

/** Bytes read per recv: one buffer for every connection of the thread. */
const CHUNK = 256 * 1024;
const MAX_EVENTS = 512;
/** Connections taken per report of a listener (level-triggered, so the rest come with the next wait). */
const ACCEPTS_PER_EVENT = 1;
const READ_EVENTS = EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP;
/** Each socket of a connection is registered once, for both directions, edge-triggered. */
const SIDE_EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;

/** One socket of a relayed connection; `peer` is the other. */
class Side {
  peer!: Side;
  fd = -1;
  /** epoll registration token: events carrying another token belong to an earlier use of the fd. */
  token = 0;
  /** Bytes for this socket that it could not take yet; the peer does not read while any are here. */
  pending: Uint8Array | undefined;
  pendingParts: Uint8Array[] | undefined;
  queued = 0;
  /** This socket has data to read but its peer's queue is full. */
  stalled = false;
  connecting = false;
  finIn = false;
  finOut = false;
  closed = false;
  endpoint = "";
  constructor(
    readonly conn: Conn,
    readonly toClient: boolean,
  ) {}
}

class Conn {
  readonly client: Side;
  backend: Side;
  attempt = 0;
  dialDeadline = 0;
  done = false;
  /** When the connection came to this thread (the loop's coarse clock), to leave young ones in place. */
  since = 0;
  /** Bytes relayed (both ways) since it came to this thread: with `since`, how busy it is. */
  bytes = 0;
  /** Neighbours in the relay's list of live connections. */
  prev: Conn | undefined;
  next: Conn | undefined;
  constructor(
    readonly relay: EpollRelay,
    readonly clientIP: string,
  ) {
    this.client = new Side(this, true);
    this.backend = new Side(this, false);
    this.client.peer = this.backend;
    this.backend.peer = this.client;
  }
}

interface ListenerEntry {
  readonly relay: EpollRelay;
  readonly fd: number;
  token: number;
  /** Opened by another thread's relay, which closes it; this thread only stops listening to it. */
  readonly joined: boolean;
}

/** One per thread: the epoll set, the shared buffers, and the turn that drives every relay on it. */
class EpollLoop {
  readonly c: Libc;
  readonly ep: number;
  private readonly events;
  private readonly ctl;
  readonly chunk;
  readonly addr;
  readonly addrLen;
  readonly linger;
  readonly one;
  /** What each fd is now: a listener or a side of a connection. */
  private readonly owners: (Side | ListenerEntry | undefined)[] = [];
  private nextToken = 1;
  private readonly relays = new Set<EpollRelay>();
  private running = false;
  blockMs = 20;
  /** Connections whose dial is in progress, oldest deadline first per attempt number. */
  private readonly dialQueues: Conn[][] = [];
  /** The owner writes here after posting a message; -1 when eventfd failed (turns then just end on time). */
  readonly wakeFd: number;
  private readonly wakeCount;
  private readonly wakeCountOne;
  /** Messages announced through the eventfd and not yet seen: until they are, turns do not block. */
  private wakesOwed = 0;
  /** When turns stop waiting for owed messages anyway (a wake-up whose message came before it). */
  private owedUntil = 0;
  /**
   * Events of the last wait after a wake-up, left for after the owner's messages: a connection that
   * came after an endpoint change must see it. Dispatched before the next wait (which would overwrite them).
   */
  private resumeFrom = 0;
  private resumeTo = 0;
  /** performance.now() at the start of the current turn: a clock for what needs no precision. */
  clockMs = performance.now();
  private readonly relaysById = new Map<number, EpollRelay>();
  private handover: ThreadHandover | undefined;

  get handoverState(): ThreadHandover | undefined {
    return this.handover;
  }
  /** The handover inbox's eventfd once rebalancing is on, else -1. */
  private inboxFd = -1;

  constructor(c: Libc) {
    this.c = c;
    this.ep = c.fn.epoll_create1(EPOLL_CLOEXEC);
    if (this.ep < 0) throw new Error(`epoll_create1 failed (errno ${c.errno()})`);
    this.events = pinned(c.epollEventSize * MAX_EVENTS);
    this.ctl = pinned(c.epollEventSize);
    this.chunk = pinned(CHUNK);
    this.addr = pinned(28);
    this.addrLen = pinned(4);
    this.linger = pinned(8);
    this.linger.view.setInt32(0, 1, true);
    this.linger.view.setInt32(4, 0, true);
    this.one = pinned(4);
    this.one.view.setInt32(0, 1, true);
    this.wakeCount = pinned(8);
    this.wakeCountOne = pinned(8);
    this.wakeCountOne.view.setBigUint64(0, 1n, true);
    this.wakeFd = c.fn.eventfd(0, EFD_NONBLOCK_CLOEXEC);
    if (this.wakeFd >= 0 && !this.watchReadable(this.wakeFd)) {
      c.fn.close(this.wakeFd);
      this.wakeFd = -1;
    }
  }

  /**
   * Adds an eventfd of the loop's own (the wake fd, the handover inbox's) to the epoll set,
   * level-triggered and with token 0: the pass tells them apart by fd. False when epoll_ctl fails.
   */
  private watchReadable(fd: number): boolean {
    const o = this.c.epollDataOffset;
    this.ctl.view.setUint32(0, EPOLLIN, true);
    this.ctl.view.setUint32(o, fd, true);
    this.ctl.view.setUint32(o + 4, 0, true);
    return this.c.fn.epoll_ctl(this.ep, EPOLL_CTL_ADD, fd, this.ctl.at) >= 0;
  }

  /** A message announced by a wake-up has been handled. */
  messageSeen(): void {
    if (this.wakesOwed > 0) this.wakesOwed--;
  }

  private drainWake(): void {
    if (this.c.fn.read(this.wakeFd, this.wakeCount.at, 8) !== 8) return;
    // The counter sums every write since the last read: one per message posted.
    this.wakesOwed += Number(this.wakeCount.view.getBigUint64(0, true));
    this.owedUntil = performance.now() + OWED_WAIT_MS;
  }

  /** Takes part in rebalancing (once per thread; later calls only confirm it). */
  joinRebalancing(r: Rebalancing): void {
    if (this.handover) return;
    const fd = r.shared.inboxFds[r.threadIndex];
    if (fd === undefined || fd < 0 || !this.watchReadable(fd)) return;
    const inboxes: HandoverInbox[] = [];
    for (let i = 0; i < r.shared.inboxFds.length; i++) inboxes.push(inboxOf(r.shared, i));
    this.inboxFd = fd;
    this.handover = {
      index: r.threadIndex,
      inboxFds: r.shared.inboxFds,
      inboxes,
      loads: loadsView(r.shared),
      inFlight: inFlightView(r.shared),
      lastAt: 0,
      waitedMs: 0,
      quietUntil: 0,
      limits: r.limits ?? DEFAULT_HANDOVER_LIMITS,
    };
  }

  /** Stops watching an fd that stays open (handed to another thread). */
  detach(fd: number): void {
    this.owners[fd] = undefined;
    this.c.fn.epoll_ctl(this.ep, EPOLL_CTL_DEL, fd, null);
  }

  register(fd: number, owner: Side | ListenerEntry, events: number): number {
    const token = this.nextToken++ >>> 0 || this.nextToken++;
    const o = this.c.epollDataOffset;
    this.ctl.view.setUint32(0, events >>> 0, true);
    this.ctl.view.setUint32(o, fd, true);
    this.ctl.view.setUint32(o + 4, token, true);
    if (this.c.fn.epoll_ctl(this.ep, EPOLL_CTL_ADD, fd, this.ctl.at) < 0) throw new Error(`epoll_ctl add failed (errno ${this.c.errno()})`);
    this.owners[fd] = owner;
    return token;
  }

  /**
   * Stops dispatching a joined listener. No epoll_ctl DEL: the owner's close drops the registration
   * from every thread's set, and until then events for it find no owner here and are skipped.
   */
  forget(fd: number): void {
    this.owners[fd] = undefined;
  }

  /** Closes an fd this loop owns; the kernel drops it from the epoll set with it. */
  release(fd: number): void {
    this.owners[fd] = undefined;
    this.c.fn.close(fd);
  }

  /** Closes with a reset (SO_LINGER 0): how a reset from one side is passed to the other. */
  reset(fd: number): void {
    this.c.fn.setsockopt(fd, SOL_SOCKET, SO_LINGER, this.linger.at, 8);
    this.release(fd);
  }

  noDelay(fd: number): void {
    this.c.fn.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, this.one.at, 4);
  }

  add(relay: EpollRelay): void {
    this.relays.add(relay);
    if (relay.listenId !== undefined) this.relaysById.set(relay.listenId, relay);
    if (!this.running) {
      this.running = true;
      setImmediate(this.turn);
    }
  }

  remove(relay: EpollRelay): void {
    this.relays.delete(relay);
    if (relay.listenId !== undefined && this.relaysById.get(relay.listenId) === relay) this.relaysById.delete(relay.listenId);
  }

  watchDial(conn: Conn, attempt: number): void {
    let q = this.dialQueues[attempt];
    if (!q) this.dialQueues[attempt] = q = [];
    q.push(conn);
  }

  /**
   * One turn: waits and dispatches for up to `blockMs` (a single non-blocking pass when 0), then
   * yields to the thread's own event loop so messages from the owner get in.
   */
  private readonly turn = (): void => {
    if (this.relays.size === 0) {
      this.running = false;
      return;
    }
    const now = performance.now();
    this.clockMs = now;
    const h = this.handover;
    if (h && now - h.lastAt >= REBALANCE_INTERVAL_MS) this.rebalance(h, now);
    if (this.wakesOwed > 0 && now > this.owedUntil) this.wakesOwed = 0;
    if (this.wakesOwed > 0) {
      // Messages on their way: no events until they are in, unless none are held back.
      if (this.resumeTo === 0) this.pass(0);
    } else if (this.blockMs <= 0) this.pass(0);
    else {
      const end = now + this.blockMs;
      for (let left = this.blockMs; left > 0 && this.relays.size > 0 && this.wakesOwed === 0; left = Math.ceil(end - performance.now())) this.pass(left);
    }
    setImmediate(this.turn);
  };

  /** Dispatches one epoll_wait's events; a wake-up from the owner ends the turn after them. */
  private pass(timeoutMs: number): void {
    const c = this.c;
    let from = 0;
    let n: number;
    if (this.resumeTo > 0) {
      from = this.resumeFrom;
      n = this.resumeTo;
      this.resumeTo = 0;
    } else if (timeoutMs > 0 && this.handover) {
      const t0 = performance.now();
      n = c.fn.epoll_wait(this.ep, this.events.at, MAX_EVENTS, timeoutMs);
      this.handover.waitedMs += performance.now() - t0;
    } else n = c.fn.epoll_wait(this.ep, this.events.at, MAX_EVENTS, timeoutMs);
    const view = this.events.view;
    const size = c.epollEventSize;
    const o = c.epollDataOffset;
    for (let i = from; i < n; i++) {
      const base = i * size;
      const ev = view.getUint32(base, true);
      const fd = view.getUint32(base + o, true);
      if (fd === this.inboxFd) {
        this.takeHandovers(this.handover as ThreadHandover);
        continue;
      }
      if (fd === this.wakeFd) {
        this.drainWake();
        if (this.wakesOwed > 0 && i + 1 < n) {
          this.resumeFrom = i + 1;
          this.resumeTo = n;
          break;
        }
        continue;
      }
      const token = view.getUint32(base + o + 4, true);
      const owner = this.owners[fd];
      if (owner === undefined || owner.token !== token) continue;
      try {
        if (owner instanceof Side) onEvent(owner, ev);
        else owner.relay.acceptSome(owner.fd);
      } catch (err) {
        // A fault in one connection's handling cuts that connection, not the thread and all it relays.
        const relay = owner instanceof Side ? owner.conn.relay : owner.relay;
        relay.logger?.error("relay event failed", { service: relay.serviceKey, err });
        if (owner instanceof Side) closeConn(owner.conn, true);
      }
    }
    if (this.dialQueues.length > 0) this.expireDials();
  }

  /** Publishes this thread's load and moves connections where the loads say (see `Rebalancing`). */
  private rebalance(h: ThreadHandover, now: number): void {
    // The share of the interval not spent waiting for events: 1 when the thread never ran out of
    // work, whether it ran all the time or waited for a core (which its CPU time would not show).
    const load = h.lastAt > 0 ? Math.max(0, 1 - h.waitedMs / (now - h.lastAt)) : 0;
    h.lastAt = now;
    h.waitedMs = 0;
    const loads = h.loads;
    loads[h.index * 2] = load;
    if (now < h.quietUntil) return;
    const loadOf = (thread: number) => loads[thread * 2] ?? 1;
    for (const relay of this.relays) {
      const target = handoverTarget(h.index, relay.group, loadOf, h.limits);
      if (target === undefined) continue;
      if (relay.handOverBusiest(target, h, now) > 0) {
        // Let the loads show the move before judging again.
        h.quietUntil = now + 3 * REBALANCE_INTERVAL_MS;
      }
    }
  }

  /** Announces handovers put in thread `index`'s inbox (`moved` of them established connections). */
  announce(h: ThreadHandover, index: number, moved: number): void {
    if (moved > 0) h.loads[h.index * 2 + 1] = (h.loads[h.index * 2 + 1] ?? 0) + moved;
    const fd = h.inboxFds[index];
    if (fd !== undefined) this.c.fn.write(fd, this.wakeCountOne.at, 8);
  }

  private takeHandovers(h: ThreadHandover): void {
    // The eventfd's counter only says "look"; the inbox holds what came.
    this.c.fn.read(this.inboxFd, this.wakeCount.at, 8);
    const inbox = h.inboxes[h.index];
    if (!inbox) return;
    for (const handed of inbox.takeAll()) {
      const fresh = handed.backendFd < 0;
      if (fresh) Atomics.sub(h.inFlight, h.index, 1);
      const relay = this.relaysById.get(handed.listenId);
      if (relay && fresh) relay.adoptNew(handed.clientFd);
      else if (relay) relay.adopt(handed);
      else {
        // The port closed while the connection was on its way: nobody relays it now.
        this.c.fn.close(handed.clientFd);
        if (!fresh) this.c.fn.close(handed.backendFd);
      }
    }
  }

  private expireDials(): void {
    const now = performance.now();
    for (let attempt = 0; attempt < this.dialQueues.length; attempt++) {
      const q = this.dialQueues[attempt];
      if (!q) continue;
      let k = 0;
      while (k < q.length) {
        const conn = q[k] as Conn;
        // Entries of dials that finished, or of earlier attempts of a connection now on a later one.
        if (conn.dialDeadline === 0 || conn.done || conn.attempt !== attempt + 1) {
          k++;
          continue;
        }
        if (conn.dialDeadline > now) break;
        k++;
        dialTimedOut(conn);
      }
      if (k > 0) q.splice(0, k);
    }
  }
}

/** What a relay thread keeps for rebalancing (see `Rebalancing`). */
interface ThreadHandover {
  readonly index: number;
  readonly inboxFds: readonly number[];
  readonly inboxes: readonly HandoverInbox[];
  /** Per thread: load, then connections handed over so far. */
  readonly loads: Float64Array;
  /** Per thread: new connections on their way to it. */
  readonly inFlight: Int32Array;
  lastAt: number;
  /** Time spent blocked in epoll_wait since `lastAt`. */
  waitedMs: number;
  /** No handovers before this (after one, until the loads show it). */
  quietUntil: number;
  readonly limits: HandoverLimits;
}

const REBALANCE_INTERVAL_MS = 100;
/** Connections younger than this stay where they are (most short ones end before it). */
const HANDOVER_MIN_AGE_MS = 200;

/** How long turns keep from blocking while a message announced by a wake-up has not arrived. */
const OWED_WAIT_MS = 5;

let threadLoop: EpollLoop | null | undefined;

function loopOfThisThread(): EpollLoop | undefined {
  if (threadLoop !== undefined) return threadLoop ?? undefined;
  const c = openLibc();
  threadLoop = c ? new EpollLoop(c) : null;
  return threadLoop ?? undefined;
}

/** The eventfd the owner writes to after posting this thread a message; undefined without one. */
export function wakeFdOfThisThread(): number | undefined {
  const fd = loopOfThisThread()?.wakeFd;
  return fd === undefined || fd < 0 ? undefined : fd;
}

/** The thread handled a message whose posting was followed by a write to its wake fd. */
export function wakeMessageSeen(): void {
  threadLoop?.messageSeen();
}

/** Whether this thread can run the epoll relay (Linux with a loadable libc). */
export function epollRelayAvailable(): boolean {
  return loopOfThisThread() !== undefined;
}

function onEvent(side: Side, ev: number): void {
  if (side.connecting) {
    if (ev & (EPOLLERR | EPOLLHUP)) {
      dialFailed(side, new Error(`dial ${side.endpoint} failed`));
      return;
    }
    if (!(ev & EPOLLOUT)) return;
    connected(side);
    if (side.closed) return;
  } else if (ev & EPOLLOUT && side.queued > 0) {
    writable(side);
    if (side.closed) return;
  }
  if (side.stalled && ev & EPOLLERR) {
    // Reset while waiting for its peer to drain: nothing it sent can be delivered now anyway.
    abort(side.conn, side.peer);
    return;
  }
  if (ev & READ_EVENTS && !side.stalled && !side.finIn && !side.closed) pump(side, (ev & (EPOLLHUP | EPOLLERR)) !== 0, (ev & (EPOLLRDHUP | EPOLLERR)) === EPOLLRDHUP);
}

/** The dial of backend side `side` has succeeded. */
function dialDone(side: Side): void {
  side.connecting = false;
  side.conn.dialDeadline = 0;
}

function connected(side: Side): void {
  const conn = side.conn;
  dialDone(side);
  const client = conn.client;
  if (client.closed) {
    // The client left while this dial was in progress; nobody wants this connection.
    closeConn(conn, false);
    return;
  }
  writable(side);
}

/** `side` can take data: write what is queued for it, then let its peer read again. */
function writable(side: Side): void {
  if (side.queued > 0 && !flush(side)) return;
  const peer = side.peer;
  if (peer.finIn && !side.finOut) {
    sendFin(side);
    return;
  }
  if (peer.stalled && !peer.closed) {
    peer.stalled = false;
    // Edges that came while it was stalled are spent: read until the kernel says there is no more.
    pump(peer, true);
  }
}

/** `n` bytes went out on `side`: the relay's counters, and the connection's own for rebalancing. */
function countSent(side: Side, n: number): void {
  side.conn.relay.countOut(side.toClient, n);
  side.conn.bytes += n;
}

/** Writes `side`'s queue; true once it is empty. */
function flush(side: Side): boolean {
  const relay = side.conn.relay;
  const loop = relay.loop;
  while (side.queued > 0) {
    const chunk = side.pending ?? (side.pendingParts?.[0] as Uint8Array);
    const n = loop.c.fn.send(side.fd, ptrOf(chunk), chunk.byteLength, MSG_NOSIGNAL);
    if (n < 0) {
      const e = loop.c.errno();
      if (e === EAGAIN) return false;
      if (e === EINTR) continue;
      abort(side.conn, side.peer);
      return false;
    }
    countSent(side, n);
    side.queued -= n;
    relay.counters[Stat.bufferedBytes]! -= n;
    const rest = n < chunk.byteLength ? chunk.subarray(n) : undefined;
    if (side.pending) side.pending = rest;
    else if (rest) side.pendingParts![0] = rest;
    else side.pendingParts!.shift();
    if (rest) return false;
  }
  side.pending = undefined;
  side.pendingParts = undefined;
  return true;
}

function queue(side: Side, bytes: Uint8Array): void {
  side.conn.relay.counters[Stat.bufferedBytes]! += bytes.byteLength;
  side.queued += bytes.byteLength;
  if (side.pendingParts) side.pendingParts.push(bytes);
  else if (side.pending === undefined) side.pending = bytes;
  else {
    side.pendingParts = [side.pending, bytes];
    side.pending = undefined;
  }
}

/**
 * Reads `side` until the kernel has nothing more or the peer cannot take it, passing it on. A read
 * shorter than the buffer ends the turn (any later arrival raises a new edge) unless `untilEmpty`
 * (edges were spent while the side was stalled, or an error is to be read). `finSeen`: the event
 * reported the FIN already, so a short read has taken everything before it, and the read that would
 * only answer 0 is skipped.
 */
function pump(side: Side, untilEmpty: boolean, finSeen = false): void {
  const conn = side.conn;
  const relay = conn.relay;
  const loop = relay.loop;
  const fn = loop.c.fn;
  const buf = loop.chunk;
  for (;;) {
    const out = side.peer;
    const dialling = out.fd < 0 || out.connecting;
    if (out.queued > 0 && (!dialling || out.queued > relay.connectBufferBytes)) {
      side.stalled = true;
      return;
    }
    const n = fn.recv(side.fd, buf.at, CHUNK, 0);
    if (n > 0) {
      const last = n < CHUNK && finSeen;
      if (out.fd < 0 || out.queued > 0) {
        queue(out, buf.bytes.slice(0, n));
        if (last) break;
        if (n < CHUNK && !untilEmpty) return;
        continue;
      }
      // Also while the dial is in progress: on a near endpoint the handshake is often done by the
      // time connect returns, and a send that succeeds saves waiting for the writable event.
      const w = fn.send(out.fd, buf.at, n, MSG_NOSIGNAL);
      if (w === n) {
        if (out.connecting) dialDone(out);
        countSent(out, n);
        if (last) break;
        if (n < CHUNK && !untilEmpty) return;
        continue;
      }
      if (w < 0) {
        const e = loop.c.errno();
        if (out.connecting) {
          // Not connected yet (or the dial failed: its event says so): the bytes wait for the outcome.
          queue(out, buf.bytes.slice(0, n));
          if (last) break;
          if (n < CHUNK && !untilEmpty) return;
          continue;
        }
        if (e !== EAGAIN) {
          abort(conn, side);
          return;
        }
        queue(out, buf.bytes.slice(0, n));
      } else {
        if (out.connecting) dialDone(out);
        countSent(out, w);
        queue(out, buf.bytes.slice(w, n));
      }
      side.stalled = true;
      if (last) side.finIn = true;
      return;
    }
    if (n === 0) break;
    const e = loop.c.errno();
    if (e === EAGAIN) return;
    if (e === EINTR) continue;
    // A reset (or other error) from this side is passed on as a reset.
    abort(conn, side.peer);
    return;
  }
  // The FIN: passed on now, or by `writable` once the peer has taken what is queued for it.
  side.finIn = true;
  const out = side.peer;
  if (out.fd >= 0 && !out.connecting && out.queued === 0 && !out.finOut) sendFin(out);
}

function sendFin(side: Side): void {
  side.finOut = true;
  // The last FIN of the connection: closing sends it, so the shutdown call would be one call too many.
  if (side.finIn && side.peer.finOut) {
    closeConn(side.conn, false);
    return;
  }
  side.conn.relay.loop.c.fn.shutdown(side.fd, SHUT_WR);
}

/** Cuts the connection: `resetSide` (if still open) gets a reset, the other side is closed. */
function abort(conn: Conn, resetSide: Side): void {
  const loop = conn.relay.loop;
  for (const s of [conn.client, conn.backend]) {
    if (s.closed || s.fd < 0) continue;
    s.closed = true;
    if (s === resetSide) loop.reset(s.fd);
    else loop.release(s.fd);
  }
  conn.relay.connectionDone(conn);
}

/** Both ways have seen their FIN through (or the relay is shutting the connection): close both. */
function closeConn(conn: Conn, hard: boolean): void {
  const loop = conn.relay.loop;
  for (const s of [conn.client, conn.backend]) {
    if (s.closed || s.fd < 0) continue;
    s.closed = true;
    if (hard) loop.reset(s.fd);
    else loop.release(s.fd);
  }
  conn.relay.connectionDone(conn);
}

function dialFailed(side: Side, error: Error): void {
  const conn = side.conn;
  const relay = conn.relay;
  side.closed = true;
  side.connecting = false;
  relay.loop.release(side.fd);
  conn.dialDeadline = 0;
  relay.countDialFailure(conn.clientIP, error);
  if (conn.client.closed || conn.done) {
    relay.connectionDone(conn);
    return;
  }
  relay.dial(conn, true);
}

function dialTimedOut(conn: Conn): void {
  const side = conn.backend;
  if (!side.connecting || side.closed) return;
  const timeoutMs = conn.relay.dialTimeoutsMs[conn.attempt - 1];
  dialFailed(side, new Error(`dial ${side.endpoint} timed out after ${timeoutMs} ms`));
}

/** The address of a view's first byte, taken right before the call that uses it. */
function ptrOf(bytes: Uint8Array): Pointer {
  return ptr(bytes);
}

interface Target {
  readonly family: number;
  readonly addr: Uint8Array;
  readonly at: Pointer;
}

class EpollRelay extends TcpRelayCore<Target> implements EpollTcpRelay {
  readonly loop: EpollLoop;
  private listener: ListenerEntry | undefined;
  private head: Conn | undefined;
  private active = 0;
  private readonly v6: boolean;
  /** Closed for new connections but still relaying; leaves the loop once the last one ends. */
  private draining = false;
  /** Rebalancing: the port's id among the threads and the threads serving it (empty: not rebalanced). */
  readonly listenId: number | undefined;
  readonly group: readonly number[];
  /** This thread's slot among the port's threads and their counters, to spread new connections. */
  private readonly slot: number;
  private readonly portCounters: Float64Array | undefined;

  constructor(options: EpollTcpRelayOptions, loop: EpollLoop) {
    super(options);
    this.loop = loop;
    this.v6 = options.host.includes(":");
    this.listenId = options.rebalancing?.listenId;
    this.group = options.rebalancing?.group ?? [];
    this.slot = options.rebalancing?.slot ?? 0;
    this.portCounters = options.rebalancing?.portCounters;
  }

  /**
   * Hands every other one of this port's busiest connections here (ranked by bytes per second since
   * they came) to thread `target`: about half the load. Of those, only established connections with
   * nothing buffered and no dial in progress, older than HANDOVER_MIN_AGE_MS, move now; their sockets
   * leave this thread's epoll set and join the target's, which reports any bytes that arrived in
   * between, so none are lost. Returns how many moved.
   */
  handOverBusiest(target: number, h: ThreadHandover, now: number): number {
    const inbox = h.inboxes[target];
    if (!inbox || this.listenId === undefined) return 0;
    const busy: Conn[] = [];
    for (let conn = this.head; conn; conn = conn.next) if (conn.bytes > 0 && !conn.done) busy.push(conn);
    // One busy connection moved would only move the saturation.
    if (busy.length < 2) return 0;
    const rate = (conn: Conn) => conn.bytes / Math.max(1, now - conn.since);
    busy.sort((x, y) => rate(y) - rate(x));
    const loop = this.loop;
    let moved = 0;
    for (let k = 1; k < busy.length; k += 2) {
      const conn = busy[k] as Conn;
      const c = conn.client;
      const b = conn.backend;
      // Only a connection between two reads moves: established, nothing buffered, not waiting on a
      // slow reader; one that is not, stays for a later look.
      const movable =
        conn.attempt > 0 &&
        !b.connecting &&
        c.fd >= 0 &&
        b.fd >= 0 &&
        !c.closed &&
        !b.closed &&
        c.queued === 0 &&
        b.queued === 0 &&
        !c.stalled &&
        !b.stalled &&
        now - conn.since >= HANDOVER_MIN_AGE_MS;
      if (!movable) continue;
      loop.detach(c.fd);
      loop.detach(b.fd);
      const flags =
        (c.finIn ? HandoverFlag.clientFinIn : 0) |
        (c.finOut ? HandoverFlag.clientFinOut : 0) |
        (b.finIn ? HandoverFlag.backendFinIn : 0) |
        (b.finOut ? HandoverFlag.backendFinOut : 0);
      if (!inbox.put({ listenId: this.listenId, clientFd: c.fd, backendFd: b.fd, flags })) {
        // The target's inbox is full: keep this one, and the rest, here.
        c.token = loop.register(c.fd, c, SIDE_EVENTS);
        b.token = loop.register(b.fd, b, SIDE_EVENTS);
        break;
      }
      conn.done = true;
      this.unlink(conn);
      moved++;
    }
    if (moved > 0) loop.announce(h, target, moved);
    if (this.draining && !this.head) loop.remove(this);
    return moved;
  }

  /** Takes up an established connection another thread handed over (see `handOverBusiest`). */
  adopt(handed: Handover): void {
    const loop = this.loop;
    const conn = new Conn(this, "");
    conn.attempt = 1;
    conn.since = loop.clockMs;
    const c = conn.client;
    const b = conn.backend;
    c.fd = handed.clientFd;
    b.fd = handed.backendFd;
    c.finIn = (handed.flags & HandoverFlag.clientFinIn) !== 0;
    c.finOut = (handed.flags & HandoverFlag.clientFinOut) !== 0;
    b.finIn = (handed.flags & HandoverFlag.backendFinIn) !== 0;
    b.finOut = (handed.flags & HandoverFlag.backendFinOut) !== 0;
    try {
      c.token = loop.register(c.fd, c, SIDE_EVENTS);
      b.token = loop.register(b.fd, b, SIDE_EVENTS);
    } catch (err) {
      this.logger?.error("taking over a connection failed", { service: this.serviceKey, err });
      loop.release(c.fd);
      loop.release(b.fd);
      return;
    }
    this.link(conn);
  }

  protected override parseTarget(endpoint: string): Target | undefined {
    let hp: { host: string; port: number };
    try {
      hp = splitHostPort(endpoint);
    } catch {
      return undefined;
    }
    const addr = sockaddr(hp.host, hp.port);
    if (!addr) return undefined;
    return { family: hp.host.includes(":") ? AF_INET6 : AF_INET, addr, at: ptrOf(addr) };
  }

  get listenerFd(): number {
    return this.listener?.fd ?? -1;
  }

  /** Accepts on another thread's listener (see `joinFd`). */
  join(fd: number): void {
    const loop = this.loop;
    loop.addrLen.view.setUint32(0, 28, true);
    if (loop.c.fn.getsockname(fd, loop.addr.at, loop.addrLen.at) < 0) throw new Error(`join listener fd ${fd}: getsockname failed (errno ${loop.c.errno()})`);
    this.port = sockaddrPort(loop.addr.view);
    const entry: ListenerEntry = { relay: this, fd, token: 0, joined: true };
    entry.token = loop.register(fd, entry, EPOLLIN | EPOLLEXCLUSIVE);
    this.listener = entry;
    loop.add(this);
  }

  listen(port: number, reusePort: boolean, shared: boolean): void {
    const loop = this.loop;
    const fn = loop.c.fn;
    const sa = sockaddr(this.host === "" ? "0.0.0.0" : this.host, port);
    if (!sa) throw new Error(`listen ${this.host}:${port}: not an IP address`);
    const fd = fn.socket(this.v6 ? AF_INET6 : AF_INET, SOCK_STREAM_NONBLOCK_CLOEXEC, 0);
    if (fd < 0) throw new Error(`listen ${this.host}:${port}: socket failed (errno ${loop.c.errno()})`);
    try {
      fn.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, loop.one.at, 4);
      if (reusePort) fn.setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, loop.one.at, 4);
      // An IPv6 relay serves IPv6 only, so the IPv4 relay of a dual-stack service can own the port.
      if (this.v6) fn.setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, loop.one.at, 4);
      // Accepted sockets inherit TCP_NODELAY from the listener (Linux): one call per port, not per client.
      loop.noDelay(fd);
      if (fn.bind(fd, ptrOf(sa), sa.byteLength) < 0) throw new Error(`listen ${this.host}:${port}: bind failed (errno ${loop.c.errno()}${loop.c.errno() === 98 ? ", address in use" : ""})`);
      if (fn.listen(fd, 4096) < 0) throw new Error(`listen ${this.host}:${port}: listen failed (errno ${loop.c.errno()})`);
      loop.addrLen.view.setUint32(0, 28, true);
      fn.getsockname(fd, loop.addr.at, loop.addrLen.at);
      this.port = sockaddrPort(loop.addr.view);
      const entry: ListenerEntry = { relay: this, fd, token: 0, joined: false };
      entry.token = loop.register(fd, entry, shared ? EPOLLIN | EPOLLEXCLUSIVE : EPOLLIN);
      this.listener = entry;
    } catch (err) {
      fn.close(fd);
      throw err;
    }
    loop.add(this);
  }

  /**
   * Accepts up to ACCEPTS_PER_EVENT connections. The listener is level-triggered, so the wait reports
   * it again while more are queued: no accept4 call that only answers EAGAIN, and with a shared
   * listener the next connection can wake a thread that is idle.
   */
  acceptSome(lfd: number): void {
    const loop = this.loop;
    const fn = loop.c.fn;
    const wantIP = this.chooser.usesClientIP(this.serviceKey);
    for (let k = 0; k < ACCEPTS_PER_EVENT; k++) {
      if (wantIP) loop.addrLen.view.setUint32(0, 28, true);
      const fd = wantIP ? fn.accept4(lfd, loop.addr.at, loop.addrLen.at, ACCEPT_FLAGS) : fn.accept4(lfd, null, null, ACCEPT_FLAGS);
      if (fd < 0) return;
      if (!wantIP && this.group.length > 1 && this.passOn(fd)) continue;
      this.relayNew(fd, wantIP ? sockaddrIP(loop.addr.view) : "");
    }
  }

  private relayNew(fd: number, clientIP: string): void {
    const loop = this.loop;
    const conn = new Conn(this, clientIP);
    conn.client.fd = fd;
    conn.client.token = loop.register(fd, conn.client, SIDE_EVENTS);
    conn.since = loop.clockMs;
    this.link(conn);
    this.counters[Stat.total]!++;
    this.dial(conn, false);
  }

  /** Hands a connection just accepted to the port's thread with the fewest (see `acceptTarget`); false to keep it. */
  private passOn(fd: number): boolean {
    const h = this.loop.handoverState;
    const counters = this.portCounters;
    if (!h || !counters || this.listenId === undefined) return false;
    const group = this.group;
    const slot = acceptTarget(this.slot, group.length, (i) => (counters[i * STAT_SLOTS + Stat.active] ?? 0) + Atomics.load(h.inFlight, group[i] as number));
    if (slot === this.slot) return false;
    const thread = group[slot] as number;
    if (!h.inboxes[thread]?.put({ listenId: this.listenId, clientFd: fd, backendFd: -1, flags: 0 })) return false;
    Atomics.add(h.inFlight, thread, 1);
    this.loop.announce(h, thread, 0);
    return true;
  }

  /** Relays a connection another thread of the port accepted and passed on (see `passOn`). */
  adoptNew(fd: number): void {
    this.relayNew(fd, "");
  }

  dial(conn: Conn, affinityReset: boolean): void {
    const endpoint = this.chooseEndpoint(conn.clientIP, conn.attempt, affinityReset);
    if (endpoint === undefined) {
      // Cut with a reset, as the relay on Bun's sockets does (terminate).
      closeConn(conn, true);
      return;
    }
    const timeoutMs = this.dialTimeoutsMs[conn.attempt] as number;
    let side = conn.backend;
    if (conn.attempt > 0) {
      // A fresh Side per retry; bytes the client sent during the failed attempt go to the next one.
      const previous = side;
      side = new Side(conn, false);
      side.peer = conn.client;
      conn.client.peer = side;
      conn.backend = side;
      side.pending = previous.pending;
      side.pendingParts = previous.pendingParts;
      side.queued = previous.queued;
      previous.pending = undefined;
      previous.pendingParts = undefined;
      previous.queued = 0;
    }
    conn.attempt++;
    side.endpoint = endpoint;
    const target = this.target(endpoint);
    const loop = this.loop;
    const fn = loop.c.fn;
    const fd = target === undefined ? -1 : fn.socket(target.family, SOCK_STREAM_NONBLOCK_CLOEXEC, 0);
    if (target === undefined || fd < 0) {
      const why = target === undefined ? `endpoint ${endpoint} is not ip:port` : `socket failed (errno ${loop.c.errno()})`;
      this.logger?.error("dial failed", { service: this.serviceKey, endpoint, err: why });
      side.closed = true;
      this.countDialFailure(conn.clientIP, new Error(why));
      this.dial(conn, true);
      return;
    }
    loop.noDelay(fd);
    const r = fn.connect(fd, target.at, target.addr.byteLength);
    if (r < 0 && loop.c.errno() !== EINPROGRESS) {
      const e = loop.c.errno();
      side.fd = fd;
      dialFailed(side, new Error(`dial ${endpoint} failed (errno ${e})`));
      return;
    }
    side.fd = fd;
    side.connecting = true;
    side.token = loop.register(fd, side, SIDE_EVENTS);
    conn.dialDeadline = performance.now() + timeoutMs;
    loop.watchDial(conn, conn.attempt - 1);
  }

  private link(conn: Conn): void {
    conn.next = this.head;
    if (this.head) this.head.prev = conn;
    this.head = conn;
    this.active++;
    this.counters[Stat.active] = this.active;
  }

  private unlink(conn: Conn): void {
    if (conn.prev) conn.prev.next = conn.next;
    else this.head = conn.next;
    if (conn.next) conn.next.prev = conn.prev;
    conn.prev = conn.next = undefined;
    this.active--;
    this.counters[Stat.active] = this.active;
  }

  connectionDone(conn: Conn): void {
    if (conn.done) return;
    conn.done = true;
    conn.dialDeadline = 0;
    this.unlink(conn);
    for (const s of [conn.client, conn.backend]) {
      if (s.queued > 0) this.counters[Stat.bufferedBytes]! -= s.queued;
      s.queued = 0;
      s.pending = undefined;
      s.pendingParts = undefined;
    }
    if (this.draining && !this.head) this.loop.remove(this);
  }

  async close(options: CloseOptions = {}): Promise<void> {
    const l = this.listener;
    this.listener = undefined;
    if (l) {
      if (l.joined) this.loop.forget(l.fd);
      else this.loop.release(l.fd);
    }
    if (options.closeActive) {
      while (this.head) closeConn(this.head, true);
    }
    if (!this.head) this.loop.remove(this);
    else this.draining = true;
  }
}

/**
 * Listens for one service port on this thread's epoll loop; undefined when this thread cannot run it
 * (not Linux, no libc), so the caller can use `startTcpRelay` instead.
 */
export function startEpollTcpRelay(options: EpollTcpRelayOptions): EpollTcpRelay | undefined {
  const loop = loopOfThisThread();
  if (!loop) return undefined;
  if (options.blockMs !== undefined) loop.blockMs = options.blockMs;
  if (options.rebalancing) loop.joinRebalancing(options.rebalancing);
  const relay = new EpollRelay(options, loop);
  if (options.joinFd !== undefined) relay.join(options.joinFd);
  else relay.listen(options.port, options.reusePort ?? false, options.shared ?? false);
  return relay;
}
