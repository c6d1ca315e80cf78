import { afterEach, describe, expect, test } from "bun:test";
import { memoryLogger } from "../../../src/log.ts";
import { TcpRelayWorkers } from "../../../src/backends/userspace/relay-workers.ts";
import { closedPort, connect, echo, eventually, fetchName, hashUntilEnd, HOST, nameServer, pattern, readAll, sha256, startBackend } from "./helpers.ts";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Backends "a" and "b", two relay threads sending port "svc" to a, and proof that they do. */
async function twoThreadsServingA() {
  const a = await startBackend(nameServer("a"));
  const b = await startBackend(nameServer("b"));
  cleanups.push(() => a.close(), () => b.close());
  const pool = TcpRelayWorkers.start({ threads: 2 });
  cleanups.push(() => pool.close());
  pool.update("svc", [a.endpoint]);
  const relay = await pool.listen({ serviceKey: "svc", host: HOST, port: 0 });
  expect(await fetchName(relay.port)).toBe("a");
  return { a, b, pool, relay };
}

describe("TCP relay threads", () => {
  test("two threads share one port; connections are relayed, counted and balanced over endpoints", async () => {
    const a = await startBackend(nameServer("a"));
    const b = await startBackend(nameServer("b"));
    cleanups.push(() => a.close(), () => b.close());
    const pool = TcpRelayWorkers.start({ threads: 2 });
    cleanups.push(() => pool.close());
    expect(pool.threads).toBe(2);
    pool.update("svc", [a.endpoint, b.endpoint]);
    const relay = await pool.listen({ serviceKey: "svc", host: HOST, port: 0 });
    expect(relay.port).toBeGreaterThan(0);
    const counts: Record<string, number> = {};
    const n = 40;
    for (let i = 0; i < n; i++) {
      const name = await fetchName(relay.port);
      counts[name] = (counts[name] ?? 0) + 1;
    }
    expect(Object.keys(counts).sort()).toEqual(["a", "b"]);
    // Each thread runs its own round robin, so the split is even only up to one per thread.
    expect(Math.abs((counts["a"] ?? 0) - (counts["b"] ?? 0))).toBeLessThanOrEqual(2);
    await eventually("all closed", () => relay.stats().active === 0);
    const st = relay.stats();
    expect(st.total).toBe(n);
    expect(st.bytesToClients).toBe(n);
  });

  test("an endpoint change reaches every thread before the next connection", async () => {
    const { a, b, pool, relay } = await twoThreadsServingA();
    pool.update("svc", [b.endpoint]);
    // Messages to a thread arrive in order; a round trip through listen/close of another port proves
    // both threads have taken the update.
    const probe = await pool.listen({ serviceKey: "probe", host: HOST, port: 0 });
    await probe.close();
    for (let i = 0; i < 6; i++) expect(await fetchName(relay.port)).toBe("b");
  });

  test("an endpoint change applies to the very next connection, though the threads block in their wait", async () => {
    const { a, b, pool, relay } = await twoThreadsServingA();
    // No round trip in between: the connection comes right after the update, while a thread may be
    // blocked in epoll_wait with the update still in its message queue.
    const seen: string[] = [];
    const want: string[] = [];
    for (let i = 0; i < 10; i++) {
      const name = i % 2 === 0 ? "b" : "a";
      pool.update("svc", [name === "a" ? a.endpoint : b.endpoint]);
      want.push(name);
      seen.push(await fetchName(relay.port));
    }
    expect(seen).toEqual(want);
  });

  test("close stops the port on all threads; closeActive cuts running connections", async () => {
    const echoBackend = await startBackend((s) => s.pipe(s));
    cleanups.push(() => echoBackend.close());
    const pool = TcpRelayWorkers.start({ threads: 2 });
    cleanups.push(() => pool.close());
    pool.update("svc", [echoBackend.endpoint]);
    const relay = await pool.listen({ serviceKey: "svc", host: HOST, port: 0 });
    const c = await connect(relay.port);
    cleanups.push(() => {
      c.destroy();
    });
    c.on("error", () => {});
    const ended = readAll(c).catch(() => "");
    c.write("x");
    await eventually("echoed", () => c.bytesRead === 1);
    await relay.close({ closeActive: true });
    await ended;
    await expect(connect(relay.port)).rejects.toThrow();
    await eventually("backend side closed", () => echoBackend.open() === 0);
  });

  test("stopping the pool closes every thread's listener and connections (raw sockets outlive threads)", async () => {
    const a = await startBackend(echo);
    cleanups.push(() => a.close());
    const pool = TcpRelayWorkers.start({ threads: 2 });
    pool.update("svc", [a.endpoint]);
    const relay = await pool.listen({ serviceKey: "svc", host: HOST, port: 0 });
    const c = await connect(relay.port);
    const closed = new Promise<void>((resolve) => c.on("close", () => resolve()));
    c.on("error", () => {});
    c.write("x");
    await eventually("relayed", () => c.bytesRead === 1);
    await pool.close();
    await closed;
    await expect(connect(relay.port)).rejects.toThrow();
    await eventually("backend side closed", () => a.open() === 0);
  });

  test("a port already taken by someone else fails to listen", async () => {
    const taken = await startBackend(() => {});
    cleanups.push(() => taken.close());
    const pool = TcpRelayWorkers.start({ threads: 2 });
    cleanups.push(() => pool.close());
    await expect(pool.listen({ serviceKey: "svc", host: HOST, port: taken.port })).rejects.toThrow();
    // And a free port still works afterwards.
    const free = await closedPort();
    const relay = await pool.listen({ serviceKey: "svc", host: HOST, port: free });
    expect(relay.port).toBe(free);
  });

  test("a thread that has died answers later requests at once with an error instead of never", async () => {
    const logger = memoryLogger();
    const pool = TcpRelayWorkers.start({ threads: 1, logger, workerUrl: new URL("./fixtures/dying-relay-worker.ts", import.meta.url).href });
    cleanups.push(() => pool.close());
    pool.update("svc", ["127.0.0.1:1"]);
    await eventually("thread failure seen", () => logger.lines.some((l) => l.includes("relay thread failed")));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const unanswered = new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve("unanswered"), 2000);
    });
    try {
      const outcome = await Promise.race([
        pool.listen({ serviceKey: "svc", host: HOST, port: 0 }).then(
          () => "listening",
          (err: Error) => err.message,
        ),
        unanswered,
      ]);
      expect(outcome).toMatch(/relay thread/);
    } finally {
      clearTimeout(timer);
    }
  });

  test("after one thread dies, new ports listen on the threads still running and are relayed", async () => {
    const a = await startBackend(nameServer("a"));
    cleanups.push(() => a.close());
    const logger = memoryLogger();
    const pool = TcpRelayWorkers.start({ threads: 2, logger, workerUrl: new URL("./fixtures/relay-worker-dying-on-listen.ts", import.meta.url).href });
    cleanups.push(() => pool.close());
    await expect(pool.listen({ serviceKey: "die", host: HOST, port: 0 })).rejects.toThrow(/relay thread 0 failed/);
    pool.update("svc", [a.endpoint]);
    const relay = await pool.listen({ serviceKey: "svc", host: HOST, port: 0 });
    for (let i = 0; i < 4; i++) expect(await fetchName(relay.port)).toBe("a");
    expect(relay.stats().total).toBe(4);
  });
});


describe("TCP relay threads moving connections between them", () => {
  test("new connections spread evenly over the threads as they come, and each one relays", async () => {
    const backend = await startBackend(echo);
    cleanups.push(() => backend.close());
    const pool = TcpRelayWorkers.start({ threads: 2 });
    cleanups.push(() => pool.close());
    pool.update("svc", [backend.endpoint]);
    const relay = await pool.listen({ serviceKey: "svc", host: HOST, port: 0 });
    // A burst, as a client pool opens them: one thread tends to accept most of it.
    const conns = await Promise.all(Array.from({ length: 20 }, () => connect(relay.port)));
    cleanups.push(() => {
      for (const c of conns) c.destroy();
    });
    conns.forEach((c, i) => c.write(`c${i}`));
    await eventually("every connection echoed", () => conns.every((c, i) => c.bytesRead === `c${i}`.length));
    const [a, b] = relay.activeByThread();
    expect((a ?? 0) + (b ?? 0)).toBe(20);
    expect(Math.abs((a ?? 0) - (b ?? 0))).toBeLessThanOrEqual(2);
    expect(relay.stats().total).toBe(20);
  });

  /**
   * Two threads with a listener each (SO_REUSEPORT), so the kernel spreads `n` connections over both
   * by hash; each connection's echo is hashed from the start.
   */
  async function spreadEchoConnections(n: number, rebalance: boolean | { saturatedLoad: number; spareLoad: number }) {
    const backend = await startBackend(echo);
    cleanups.push(() => backend.close());
    const pool = TcpRelayWorkers.start({ threads: 2, accept: "reuseport", rebalance });
    cleanups.push(() => pool.close());
    pool.update("svc", [backend.endpoint]);
    const relay = await pool.listen({ serviceKey: "svc", host: HOST, port: 0 });
    const conns = await Promise.all(Array.from({ length: n }, () => connect(relay.port)));
    cleanups.push(() => {
      for (const c of conns) c.destroy();
    });
    const echoes = conns.map((c) => hashUntilEnd(c));
    const sent: Uint8Array[][] = conns.map(() => []);
    let written = 0;
    /** One chunk on every connection, then wait until each has come back. */
    const round = async (size: number, seed: number) => {
      written += size;
      conns.forEach((c, i) => {
        const chunk = pattern(size, seed * 1000 + i);
        sent[i]!.push(chunk);
        c.write(chunk);
      });
      await eventually("echoed", () => conns.every((c) => c.bytesRead === written), 10_000);
    };
    return { pool, relay, conns, echoes, sent, round };
  }

  test("threads hand busy connections to one another; no byte is lost on the way, half-close included", async () => {
    const n = 16;
    // Limits that make every thread "saturated" and every other one "spare": connections move back and
    // forth (each thread waits 300 ms after a move) while the traffic goes on.
    const { pool, relay, conns, echoes, sent, round } = await spreadEchoConnections(n, { saturatedLoad: -1, spareLoad: 2 });
    // Traffic goes on while the threads move connections: each is moved between two chunks.
    let rounds = 0;
    for (const deadline = Date.now() + 10_000; (pool.connectionsMoved() ?? 0) === 0 && Date.now() < deadline; ) await round(4096, rounds++);
    const handedOver = pool.connectionsMoved() ?? 0;
    expect(handedOver).toBeGreaterThan(0);
    expect(handedOver).toBeLessThanOrEqual(n);
    for (let k = 0; k < 10; k++) await round(4096, rounds++);
    expect(relay.stats().active).toBe(n);
    // Then a large transfer each way and the client's half-close, which the echo answers with its own.
    await round(512 * 1024, rounds++);
    for (const c of conns) c.end();
    const got = await Promise.all(echoes);
    got.forEach((g, i) => {
      const all = Buffer.concat(sent[i]!);
      expect(g.bytes).toBe(all.byteLength);
      expect(g.digest).toBe(sha256(all));
    });
    await eventually("all closed", () => relay.stats().active === 0);
    expect(relay.stats().bufferedBytes).toBe(0);
  });
});
