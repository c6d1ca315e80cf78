import type { Socket, SocketHandler, TCPSocketConnectOptions, TCPSocketListener, TCPSocketListenOptions } from "bun";
import type { CloseOptions, ProxySocket } from "./proxy-socket.ts";
import { clientIPOf, splitHostPort, Stat } from "./proxy-socket.ts";
import { TcpRelayCore } from "./tcp-relay-core.ts";
import type { TcpRelayCoreOptions } from "./tcp-relay-core.ts";

export interface TcpRelayOptions extends TcpRelayCoreOptions {
  /** 0 lets the kernel choose; read the result from `port`. */
  readonly port: number;
  /** Share the port with other listeners of this process or others (SO_REUSEPORT), for relay workers. */
  readonly reusePort?: boolean;
  /** Opens endpoint connections; Bun.connect unless a test needs a slow or failing network. */
  readonly connect?: TcpConnect;
}

export type TcpConnect = <D>(options: TCPSocketConnectOptions<D>) => Promise<Socket<D>>;

export interface TcpRelay extends ProxySocket {
  readonly protocol: "TCP";
}

/**
 * One direction's end of a relayed connection. Each socket's `data` is its Half; `peer` is the other
 * socket's Half. `queue` holds bytes accepted from the peer that this socket could not take yet: the
 * peer is paused while it is non-empty, which is the whole of the backpressure.
 */
/** The queue of a Half that holds nothing; shared, so an idle connection allocates no arrays. */
const NO_CHUNKS: Uint8Array[] = [];

class Half {
  socket: Socket<Half> | undefined;
  peer!: Half;
  queue: Uint8Array[] = NO_CHUNKS;
  queued = 0;
  /** This socket's reader is paused because the peer's queue is full. */
  paused = false;
  /** FIN received from this socket's remote. */
  finIn = false;
  /** FIN sent to this socket's remote. */
  finOut = false;
  /** Close this socket once its queue is written (its peer went away cleanly). */
  endAfterFlush = false;
  closed = false;
  /** A dial that was given up (timeout, client gone): the socket is cut as soon as it opens. */
  abandoned = false;
  /** The endpoint this (backend) Half dials, for the timeout's message. */
  endpoint = "";

  constructor(readonly conn: Connection) {}
}

class Connection {
  readonly client: Half;
  backend: Half;
  attempt = 0;
  dialTimer: ReturnType<typeof setTimeout> | undefined;
  done = false;

  constructor(
    readonly relay: Relay,
    readonly clientIP: string,
  ) {
    this.client = new Half(this);
    this.backend = new Half(this);
    this.client.peer = this.backend;
    this.backend.peer = this.client;
  }
}

function dropQueue(h: Half): void {
  h.conn.relay.counters[Stat.bufferedBytes]! -= h.queued;
  h.queue = NO_CHUNKS;
  h.queued = 0;
}

function enqueue(h: Half, chunk: Uint8Array): void {
  h.conn.relay.counters[Stat.bufferedBytes]! += chunk.byteLength;
  // Each `data` call gets a fresh buffer (the runtime copies out of its receive buffer), so holding a
  // view is safe and saves a copy on the backpressure path.
  if (h.queue === NO_CHUNKS) h.queue = [chunk];
  else h.queue.push(chunk);
  h.queued += chunk.byteLength;
}

/** Writes what `h` has queued; true when the queue is empty afterwards. */
function flush(h: Half): boolean {
  const s = h.socket;
  if (!s) return false;
  while (h.queue.length > 0) {
    const chunk = h.queue[0] as Uint8Array;
    const n = s.write(chunk);
    if (n < 0) {
      dropQueue(h);
      return true;
    }
    h.conn.relay.countOut(h === h.conn.client, n);
    h.queued -= n;
    h.conn.relay.counters[Stat.bufferedBytes]! -= n;
    if (n < chunk.byteLength) {
      h.queue[0] = chunk.subarray(n);
      return false;
    }
    h.queue.shift();
  }
  return true;
}

/** Called when `h`'s queue has drained: lets its peer read again and forwards a pending FIN/close. */
function afterFlush(h: Half): void {
  const peer = h.peer;
  if (peer.paused && peer.socket && !peer.closed) {
    peer.paused = false;
    peer.socket.resume();
  }
  if (h.endAfterFlush) {
    h.socket?.end();
    return;
  }
  if (peer.finIn && !h.finOut) sendFin(h);
}

function sendFin(h: Half): void {
  h.finOut = true;
  h.socket?.shutdown();
  if (h.finIn && h.peer.finOut) finish(h.conn);
}

/** Both directions have seen their FIN through: close both sockets. */
function finish(conn: Connection): void {
  conn.client.socket?.end();
  conn.backend.socket?.end();
}

function onData(s: Socket<Half>, chunk: Uint8Array): void {
  const h = s.data;
  const peer = h.peer;
  const out = peer.socket;
  if (out !== undefined && peer.queued === 0 && !peer.closed) {
    const n = out.write(chunk);
    if (n === chunk.byteLength) {
      h.conn.relay.countOut(peer === h.conn.client, n);
      return;
    }
    if (n < 0) return;
    h.conn.relay.countOut(peer === h.conn.client, n);
    enqueue(peer, chunk.subarray(n));
    h.paused = true;
    s.pause();
    return;
  }
  if (peer.closed) return;
  enqueue(peer, chunk);
  // While dialling a little is buffered; past that (or behind a slow writer) the reader waits.
  if (out !== undefined || peer.queued > h.conn.relay.connectBufferBytes) {
    h.paused = true;
    s.pause();
  }
}

function onDrain(s: Socket<Half>): void {
  const h = s.data;
  if (h.queued > 0 && !flush(h)) return;
  afterFlush(h);
}

function onEnd(s: Socket<Half>): void {
  const h = s.data;
  h.finIn = true;
  const peer = h.peer;
  if (peer.socket && peer.queued === 0 && !peer.finOut && !peer.closed) sendFin(peer);
  else if (h.finOut && peer.finOut) finish(h.conn);
}

function onClose(s: Socket<Half>, error?: Error): void {
  const h = s.data;
  // A given-up dial that connected late was cut on open; its close concerns nobody.
  if (h.closed || h.abandoned) return;
  h.closed = true;
  dropQueue(h);
  const conn = h.conn;
  const peer = h.peer;
  if (peer.closed || peer.abandoned) {
    conn.relay.connectionDone(conn);
    return;
  }
  if (!peer.socket) {
    // The client left while its endpoint was being dialled.
    if (h === conn.client) abandonDial(conn);
    return;
  }
  if (error !== undefined) {
    // A reset is passed on as a reset.
    dropQueue(peer);
    peer.socket.terminate();
    return;
  }
  // A clean close: the remote sent its FIN (the runtime closes without an `end` event when our write
  // side was already shut). Nothing more can reach this side, so the peer is ended once its queue is out.
  h.finIn = true;
  if (peer.queued === 0) peer.socket.end();
  else peer.endAfterFlush = true;
}

function onError(s: Socket<Half>, error: Error): void {
  s.data.conn.relay.logger?.debug(4, "relay socket error", { service: s.data.conn.relay.serviceKey, err: error });
}

function clearDialTimer(conn: Connection): void {
  if (conn.dialTimer !== undefined) clearTimeout(conn.dialTimer);
  conn.dialTimer = undefined;
}

function onDialTimeout(half: Half): void {
  const conn = half.conn;
  conn.dialTimer = undefined;
  if (half.socket || half.abandoned) return;
  half.abandoned = true;
  const timeoutMs = conn.relay.dialTimeoutsMs[conn.attempt - 1];
  conn.relay.dialFailed(conn, new Error(`dial ${half.endpoint} timed out after ${timeoutMs} ms`));
}

/** connectError has handled a failed dial; its promise's rejection is of no further use. */
function ignoreRejection(): void {}

function abandonDial(conn: Connection): void {
  conn.backend.abandoned = true;
  clearDialTimer(conn);
  conn.relay.connectionDone(conn);
}

const relayHandlers = {
  data: onData,
  drain: onDrain,
  end: onEnd,
  close: onClose,
  error: onError,
} as const;

const backendHandlers: SocketHandler<Half> = {
  ...relayHandlers,
  open(s) {
    const h = s.data;
    const conn = h.conn;
    if (h.abandoned || conn.client.closed) {
      h.abandoned = true;
      s.terminate();
      return;
    }
    clearDialTimer(conn);
    h.socket = s;
    if (h.queued > 0 && !flush(h)) return;
    afterFlush(h);
  },
  connectError(s, error) {
    const h = s.data;
    if (h.abandoned) return;
    h.abandoned = true;
    h.conn.relay.dialFailed(h.conn, error);
  },
};

type Target = { readonly host: string; readonly port: number };

class Relay extends TcpRelayCore<Target> implements TcpRelay {
  private readonly connect: TcpConnect;
  private listener: TCPSocketListener<Half> | undefined;
  private readonly connections = new Set<Connection>();

  constructor(options: TcpRelayOptions) {
    super(options);
    this.connect = options.connect ?? Bun.connect;
  }

  protected override parseTarget(endpoint: string): Target | undefined {
    try {
      return splitHostPort(endpoint);
    } catch {
      return undefined;
    }
  }

  listen(port: number, reusePort: boolean): void {
    const handlers: SocketHandler<Half> = {
      ...relayHandlers,
      open: (s) => this.accept(s),
    };
    const listenOptions: TCPSocketListenOptions<Half> & { reusePort: boolean; ipv6Only: boolean } = {
      hostname: this.host,
      port,
      allowHalfOpen: true,
      reusePort,
      // An IPv6 relay serves IPv6 only: a dual-stack service's IPv4 relay owns the same port (its
      // NodePort) on 0.0.0.0, which a "::" socket that also took IPv4-mapped clients would block.
      ipv6Only: this.host.includes(":"),
      socket: handlers,
    };
    this.listener = Bun.listen<Half>(listenOptions);
    this.port = this.listener.port;
  }

  private accept(s: Socket<Half>): void {
    const conn = new Connection(this, this.chooser.usesClientIP(this.serviceKey) ? clientIPOf(s.remoteAddress) : "");
    conn.client.socket = s;
    s.data = conn.client;
    this.connections.add(conn);
    this.counters[Stat.active] = this.connections.size;
    this.counters[Stat.total]!++;
    this.dial(conn, false);
  }

  private dial(conn: Connection, affinityReset: boolean): void {
    const endpoint = this.chooseEndpoint(conn.clientIP, conn.attempt, affinityReset);
    if (endpoint === undefined) {
      conn.backend.abandoned = true;
      conn.client.socket?.terminate();
      this.connectionDone(conn);
      return;
    }
    const timeoutMs = this.dialTimeoutsMs[conn.attempt] as number;
    let half = conn.backend;
    if (conn.attempt > 0) {
      // A fresh Half per retry, so late events of the given-up socket reach only the old one.
      const previous = half;
      half = new Half(conn);
      half.peer = conn.client;
      conn.client.peer = half;
      conn.backend = half;
      // Bytes the client sent during a failed attempt go to the next one.
      half.queue = previous.queue;
      half.queued = previous.queued;
      previous.queue = NO_CHUNKS;
      previous.queued = 0;
    }
    conn.attempt++;
    half.endpoint = endpoint;
    const target = this.target(endpoint);
    if (target === undefined) {
      this.logger?.error("bad endpoint", { service: this.serviceKey, endpoint, err: `${endpoint} is not ip:port` });
      half.abandoned = true;
      this.dialFailed(conn, new Error(`endpoint ${endpoint} is not ip:port`));
      return;
    }
    // A plain timer rather than the Clock: it is armed for every connection, and tests shorten it
    // instead. One shared callback with the Half as argument, so arming it allocates no closure.
    conn.dialTimer = setTimeout(onDialTimeout, timeoutMs, half);
    this.connect<Half>({
      hostname: target.host,
      port: target.port,
      allowHalfOpen: true,
      data: half,
      socket: backendHandlers,
    }).catch(ignoreRejection);
  }

  dialFailed(conn: Connection, error: Error): void {
    this.countDialFailure(conn.clientIP, error);
    clearDialTimer(conn);
    if (conn.client.closed) {
      this.connectionDone(conn);
      return;
    }
    this.dial(conn, true);
  }

  connectionDone(conn: Connection): void {
    if (conn.done) return;
    conn.done = true;
    this.connections.delete(conn);
    this.counters[Stat.active] = this.connections.size;
    // A connection cut before its queues drained leaves nothing buffered behind.
    if (conn.client.queued + conn.backend.queued > 0) {
      dropQueue(conn.client);
      dropQueue(conn.backend);
    }
  }

  async close(options: CloseOptions = {}): Promise<void> {
    this.listener?.stop(false);
    this.listener = undefined;
    if (!options.closeActive) return;
    for (const conn of [...this.connections]) {
      conn.backend.abandoned = true;
      clearDialTimer(conn);
      conn.client.socket?.terminate();
      conn.backend.socket?.terminate();
      this.connectionDone(conn);
    }
  }
}

/** Listens for one service port and relays each connection to an endpoint the chooser picks. */
export function startTcpRelay(options: TcpRelayOptions): TcpRelay {
  const relay = new Relay(options);
  relay.listen(options.port, options.reusePort ?? false);
  return relay;
}
