import type { udp } from "bun";
import { createSocket } from "node:dgram";
import type { Logger } from "../../log.ts";
import type { EndpointChooser } from "./load-balancer.ts";
import type { ProxySocket, RelayStats } from "./proxy-socket.ts";
import { clientIPOf, ENDPOINT_DIAL_TIMEOUTS_MS, splitHostPort } from "./proxy-socket.ts";

/** Upstream's default udpIdleTimeout for the userspace mode. */
export const DEFAULT_UDP_IDLE_TIMEOUT_MS = 250;

/** Datagrams held for a client while its backend socket is being opened; later ones are dropped. */
const MAX_PENDING_DATAGRAMS = 64;

export interface UdpRelayOptions {
  readonly serviceKey: string;
  readonly host: string;
  /** 0 lets the kernel choose; read the result from `port`. */
  readonly port: number;
  readonly chooser: EndpointChooser;
  /** A client's backend socket is closed after this long without a datagram either way. */
  readonly idleTimeoutMs?: number;
  readonly logger?: Logger;
}

export interface UdpRelay extends ProxySocket {
  readonly protocol: "UDP";
}

/** The socket clients send to; replies to them leave through it too. */
interface Service {
  readonly port: number;
  send(datagram: Uint8Array, port: number, address: string): boolean;
  close(): void;
}
type Backend = udp.ConnectedSocket<"uint8array">;

interface Session {
  readonly key: string;
  readonly clientAddress: string;
  readonly clientPort: number;
  readonly clientIP: string;
  backend: Backend | undefined;
  pending: Uint8Array[];
  lastActive: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  closed: boolean;
}

class Relay implements UdpRelay {
  readonly protocol = "UDP" as const;
  readonly serviceKey: string;
  readonly host: string;
  port = 0;
  private service: Service | undefined;
  private readonly chooser: EndpointChooser;
  private readonly idleTimeoutMs: number;
  private readonly logger: Logger | undefined;
  private readonly sessions = new Map<string, Session>();
  private total = 0;
  private toEndpoints = 0;
  private toClients = 0;
  private dialFailures = 0;
  private rejected = 0;

  constructor(options: UdpRelayOptions) {
    this.serviceKey = options.serviceKey;
    this.host = options.host;
    this.chooser = options.chooser;
    this.idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_UDP_IDLE_TIMEOUT_MS;
    this.logger = options.logger;
  }

  async listen(port: number): Promise<void> {
    const onError = (err: Error) => this.logger?.debug(2, "udp service socket error", { service: this.serviceKey, err });
    const onDatagram = (datagram: Uint8Array, clientPort: number, clientAddress: string) => this.fromClient(datagram, clientPort, clientAddress);
    this.service = this.host.includes(":")
      ? await openIPv6OnlyService(this.host, port, onDatagram, onError)
      : await Bun.udpSocket({
          hostname: this.host,
          port,
          binaryType: "uint8array",
          socket: {
            data: (_s, datagram, clientPort, clientAddress) => onDatagram(datagram, clientPort, clientAddress),
            error: (_s, err) => onError(err),
          },
        });
    this.port = this.service.port;
  }

  private fromClient(datagram: Uint8Array, clientPort: number, clientAddress: string): void {
    const key = `${clientAddress}|${clientPort}`;
    let session = this.sessions.get(key);
    if (!session) {
      session = {
        key,
        clientAddress,
        clientPort,
        clientIP: clientIPOf(clientAddress),
        backend: undefined,
        pending: [],
        lastActive: performance.now(),
        timer: undefined,
        closed: false,
      };
      this.sessions.set(key, session);
      this.total++;
      this.armIdleTimer(session, this.idleTimeoutMs);
      this.open(session, 0, false);
    }
    session.lastActive = performance.now();
    if (session.backend) {
      if (session.backend.send(datagram)) this.toEndpoints += datagram.byteLength;
    } else if (session.pending.length < MAX_PENDING_DATAGRAMS) {
      // The runtime may reuse the receive buffer; keep a copy until the backend socket exists.
      session.pending.push(datagram.slice());
    }
  }

  /** Opens the client's backend socket, moving on to the next endpoint when that fails (as TCP dials do). */
  private open(session: Session, attempt: number, affinityReset: boolean): void {
    if (session.closed) return;
    const endpoint = this.chooser.nextEndpoint(this.serviceKey, session.clientIP, affinityReset);
    if (endpoint === undefined || attempt >= ENDPOINT_DIAL_TIMEOUTS_MS.length) {
      this.rejected++;
      this.logger?.debug(2, "udp client rejected", { service: this.serviceKey, client: session.key, reason: endpoint === undefined ? "no endpoints" : "no endpoint reachable" });
      this.closeSession(session);
      return;
    }
    let target: { host: string; port: number };
    try {
      target = splitHostPort(endpoint);
    } catch (err) {
      this.dialFailures++;
      this.logger?.error("bad endpoint", { service: this.serviceKey, endpoint, err });
      this.open(session, attempt + 1, true);
      return;
    }
    Bun.udpSocket({
      // The socket's family must match the endpoint's; unbound it would be IPv4 and cannot reach IPv6.
      hostname: target.host.includes(":") ? "::" : "0.0.0.0",
      binaryType: "uint8array",
      connect: { hostname: target.host, port: target.port },
      socket: {
        data: (_b, reply) => {
          session.lastActive = performance.now();
          if (this.service?.send(reply, session.clientPort, session.clientAddress)) this.toClients += reply.byteLength;
        },
        error: (_b, err) => {
          // Typically ICMP port unreachable from the endpoint: the next datagram starts afresh.
          this.logger?.debug(3, "udp backend error", { service: this.serviceKey, client: session.key, err });
          this.closeSession(session);
        },
      },
    }).then(
      (backend) => {
        if (session.closed) {
          backend.close();
          return;
        }
        session.backend = backend;
        for (const d of session.pending) if (backend.send(d)) this.toEndpoints += d.byteLength;
        session.pending = [];
      },
      (err: unknown) => {
        this.dialFailures++;
        this.logger?.debug(2, "udp dial failed", { service: this.serviceKey, endpoint, err });
        this.open(session, attempt + 1, true);
      },
    );
  }

  private armIdleTimer(session: Session, ms: number): void {
    session.timer = setTimeout(() => {
      if (session.closed) return;
      const idle = performance.now() - session.lastActive;
      if (idle >= this.idleTimeoutMs) this.closeSession(session);
      else this.armIdleTimer(session, this.idleTimeoutMs - idle);
    }, ms);
  }

  private closeSession(session: Session): void {
    if (session.closed) return;
    session.closed = true;
    if (session.timer !== undefined) clearTimeout(session.timer);
    session.backend?.close();
    session.backend = undefined;
    session.pending = [];
    this.sessions.delete(session.key);
  }

  stats(): RelayStats {
    let buffered = 0;
    for (const s of this.sessions.values()) for (const d of s.pending) buffered += d.byteLength;
    return {
      bufferedBytes: buffered,
      active: this.sessions.size,
      total: this.total,
      bytesToEndpoints: this.toEndpoints,
      bytesToClients: this.toClients,
      dialFailures: this.dialFailures,
      rejected: this.rejected,
    };
  }

  /** UDP sessions cannot outlive the service socket (replies leave through it), so all close with it. */
  async close(): Promise<void> {
    this.service?.close();
    this.service = undefined;
    for (const s of [...this.sessions.values()]) this.closeSession(s);
  }
}

/**
 * An IPv6 service socket that leaves IPv4 to others: a dual-stack service's IPv4 relay owns the same
 * port (its NodePort) on 0.0.0.0. Bun.udpSocket cannot set IPV6_V6ONLY; node:dgram can.
 */
function openIPv6OnlyService(
  host: string,
  port: number,
  onDatagram: (datagram: Uint8Array, clientPort: number, clientAddress: string) => void,
  onError: (err: Error) => void,
): Promise<Service> {
  const socket = createSocket({ type: "udp6", ipv6Only: true });
  return new Promise<Service>((resolve, reject) => {
    const failed = (err: Error) => {
      socket.close();
      reject(err);
    };
    socket.once("error", failed);
    socket.bind(port, host, () => {
      socket.off("error", failed);
      socket.on("error", onError);
      socket.on("message", (datagram, rinfo) => onDatagram(datagram, rinfo.port, rinfo.address));
      resolve({
        port: socket.address().port,
        send: (datagram, clientPort, clientAddress) => {
          socket.send(datagram, clientPort, clientAddress);
          return true;
        },
        close: () => socket.close(),
      });
    });
  });
}

/** Listens for one UDP service port; each client address gets its own socket to an endpoint. */
export async function startUdpRelay(options: UdpRelayOptions): Promise<UdpRelay> {
  const relay = new Relay(options);
  await relay.listen(options.port);
  return relay;
}
