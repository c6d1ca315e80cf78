/**
 * Loopback peers for the relay tests, built on node:net so they share no code with the relay under
 * test (which uses Bun's native sockets).
 */
import { createHash } from "node:crypto";
import net from "node:net";
import { AF_INET, openLibc, SOCK_STREAM_NONBLOCK_CLOEXEC, sockaddr, sockaddrPort, pinned } from "../../../src/backends/userspace/libc.ts";

export const HOST = "127.0.0.1";

export interface Backend {
  readonly port: number;
  readonly endpoint: string;
  /** Sockets accepted so far. */
  readonly accepted: net.Socket[];
  /** Sockets still open. */
  open(): number;
  close(): Promise<void>;
}

/** A TCP server on a kernel-chosen loopback port; `onConnection` gets each accepted socket. */
export async function startBackend(onConnection: (s: net.Socket) => void): Promise<Backend> {
  const accepted: net.Socket[] = [];
  const live = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    accepted.push(s);
    live.add(s);
    s.on("close", () => live.delete(s));
    s.on("error", () => {});
    onConnection(s);
  });
  // A deep accept queue: the 1,000-connection test dials them all at once.
  await new Promise<void>((resolve) => server.listen({ port: 0, host: HOST, backlog: 4096 }, resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    endpoint: `${HOST}:${port}`,
    accepted,
    open: () => live.size,
    close: async () => {
      for (const s of live) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Echoes everything and answers a FIN with a FIN. */
export function echo(s: net.Socket): void {
  s.pipe(s);
}

/** Writes `name` and closes: tells a test which backend a connection reached. */
export function nameServer(name: string): (s: net.Socket) => void {
  return (s) => {
    s.resume();
    s.end(name);
  };
}

export function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: HOST, allowHalfOpen: true });
    s.once("connect", () => resolve(s));
    s.once("error", reject);
  });
}

/** Everything the socket sends until its FIN, as a string; rejects on error. */
export function readAll(s: net.Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    s.on("data", (d: Buffer) => parts.push(d));
    s.once("end", () => resolve(Buffer.concat(parts).toString()));
    s.once("error", reject);
  });
}

/** Connects, sends nothing, reads until FIN: the name a nameServer backend sent. */
export async function fetchName(port: number): Promise<string> {
  const s = await connect(port);
  try {
    return await readAll(s);
  } finally {
    s.destroy();
  }
}

/** `size` bytes that differ per block, so a dropped, duplicated or reordered block changes the digest. */
export function pattern(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  const block = new Uint8Array(65536);
  crypto.getRandomValues(block);
  const view = new DataView(out.buffer);
  for (let off = 0, i = 0; off < size; off += block.length, i++) {
    out.set(block.subarray(0, Math.min(block.length, size - off)), off);
    if (off + 8 <= size) {
      view.setUint32(off, i);
      view.setUint32(off + 4, seed);
    }
  }
  return out;
}

export function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Hashes what arrives until FIN; resolves with digest and byte count. */
export function hashUntilEnd(s: net.Socket): Promise<{ digest: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const h = createHash("sha256");
    let bytes = 0;
    s.on("data", (d: Buffer) => {
      h.update(d);
      bytes += d.length;
    });
    s.once("end", () => resolve({ digest: h.digest("hex"), bytes }));
    s.once("error", reject);
  });
}

/** Polls `check` until it returns true; fails with `what` after `timeoutMs`. */
export async function eventually(what: string, check: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A port with nothing listening (bound and released at once). */
export async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * A loopback port whose accept queue is full and never drained: the kernel drops further SYNs, so a
 * dial to it hangs (until its SYN is retried, a second or more later). Linux only.
 */
export async function stuckListener(): Promise<{ endpoint: string; close(): void }> {
  const c = openLibc();
  if (!c) throw new Error("needs libc");
  const fd = c.fn.socket(AF_INET, SOCK_STREAM_NONBLOCK_CLOEXEC, 0);
  const sa = sockaddr(HOST, 0) as Uint8Array;
  const addr = pinned(sa.byteLength);
  addr.bytes.set(sa);
  if (c.fn.bind(fd, addr.at, sa.byteLength) < 0 || c.fn.listen(fd, 0) < 0) throw new Error(`bind/listen failed (errno ${c.errno()})`);
  const len = pinned(4);
  len.view.setUint32(0, 16, true);
  c.fn.getsockname(fd, addr.at, len.at);
  const port = sockaddrPort(addr.view);
  // One finished handshake fills a queue of backlog 0.
  const filler = await connect(port);
  return {
    endpoint: `${HOST}:${port}`,
    close: () => {
      filler.destroy();
      c.fn.close(fd);
    },
  };
}
