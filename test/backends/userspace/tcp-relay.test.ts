import { afterEach, describe, expect, test } from "bun:test";
import type net from "node:net";
import { LoadBalancer } from "../../../src/backends/userspace/load-balancer.ts";
import { startEpollTcpRelay } from "../../../src/backends/userspace/epoll-tcp-relay.ts";
import { startTcpRelay } from "../../../src/backends/userspace/tcp-relay.ts";
import type { TcpConnect, TcpRelay, TcpRelayOptions } from "../../../src/backends/userspace/tcp-relay.ts";
import type { Backend } from "./helpers.ts";
import {
  closedPort,
  connect,
  echo,
  eventually,
  fetchName,
  hashUntilEnd,
  HOST,
  nameServer,
  pattern,
  readAll,
  sha256,
  startBackend,
  stuckListener,
} from "./helpers.ts";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function backend(onConnection: (s: net.Socket) => void): Promise<Backend> {
  const b = await startBackend(onConnection);
  cleanups.push(() => b.close());
  return b;
}

/**
 * Both relays run every behaviour test: Bun's sockets (the main thread's relay) and the epoll relay
 * (the relay threads'). Here the epoll relay shares the test's thread, so it polls instead of blocking.
 */
const ENGINES: { readonly name: string; readonly start: (o: TcpRelayOptions) => TcpRelay }[] = [
  { name: "bun sockets", start: startTcpRelay },
  {
    name: "epoll",
    start: (o) => {
      const { connect: _unused, ...rest } = o;
      const relay = startEpollTcpRelay({ ...rest, blockMs: 0 });
      if (!relay) throw new Error("the epoll relay cannot run here");
      return relay;
    },
  },
];

for (const engine of ENGINES) {
const startRelay = engine.start;

function relayTo(endpoints: string[], extra: Partial<TcpRelayOptions> = {}): { relay: TcpRelay; lb: LoadBalancer } {
  const lb = new LoadBalancer();
  lb.update("ns/svc:p", endpoints);
  const relay = startRelay({ serviceKey: "ns/svc:p", host: HOST, port: 0, chooser: lb, ...extra });
  cleanups.push(() => relay.close({ closeActive: true }));
  return { relay, lb };
}

function track(s: net.Socket): net.Socket {
  cleanups.push(() => {
    s.destroy();
  });
  return s;
}

describe(`TCP relay data path (${engine.name})`, () => {
  test("64 MiB each way at once arrive intact (sha256), and counters add up", async () => {
    const size = 64 * 1024 * 1024;
    const up = pattern(size, 1);
    const down = pattern(size, 2);
    let backendGot: Promise<{ digest: string; bytes: number }> | undefined;
    const b = await backend((s) => {
      backendGot = hashUntilEnd(s);
      s.end(down);
    });
    const { relay } = relayTo([b.endpoint]);
    expect(relay.port).toBeGreaterThan(0);
    const c = track(await connect(relay.port));
    const clientGot = hashUntilEnd(c);
    c.end(up);
    const [fromBackend, toBackend] = await Promise.all([clientGot, eventually("backend accepted", () => backendGot !== undefined).then(() => backendGot!)]);
    expect(fromBackend.bytes).toBe(size);
    expect(fromBackend.digest).toBe(sha256(down));
    expect(toBackend.bytes).toBe(size);
    expect(toBackend.digest).toBe(sha256(up));
    await eventually("connection closed", () => relay.stats().active === 0);
    const st = relay.stats();
    expect(st.total).toBe(1);
    expect(st.bytesToEndpoints).toBe(size);
    expect(st.bytesToClients).toBe(size);
    expect(st.bufferedBytes).toBe(0);
  }, 20_000);

  test("a slow reader pauses the writer: the relay holds little while the backend does not read", async () => {
    let backendSocket: net.Socket | undefined;
    const b = await backend((s) => {
      backendSocket = s;
      s.pause();
    });
    const { relay } = relayTo([b.endpoint]);
    const c = track(await connect(relay.port));
    const size = 48 * 1024 * 1024;
    const data = pattern(size, 3);
    c.end(data);
    await eventually("backend accepted", () => backendSocket !== undefined);
    // The client's writes back up into its own buffer instead of into the relay.
    await eventually("client blocked", () => c.writableLength > 8 * 1024 * 1024);
    const heldWhileBlocked = relay.stats().bufferedBytes;
    expect(heldWhileBlocked).toBeLessThan(4 * 1024 * 1024);
    const got = hashUntilEnd(backendSocket!);
    backendSocket!.resume();
    const r = await got;
    expect(r.bytes).toBe(size);
    expect(r.digest).toBe(sha256(data));
  }, 20_000);

  test("half-close: the client shuts its write side and still gets the whole reply", async () => {
    const b = await backend((s) => {
      const parts: Buffer[] = [];
      s.on("data", (d: Buffer) => parts.push(d));
      // Replies only after the request's FIN arrived, then keeps streaming for a while.
      s.on("end", () => {
        const req = Buffer.concat(parts).toString();
        s.write(`got ${req};`);
        setImmediate(() => s.end("done"));
      });
    });
    const { relay } = relayTo([b.endpoint]);
    const c = track(await connect(relay.port));
    const reply = readAll(c);
    c.end("request");
    expect(await reply).toBe("got request;done");
    await eventually("connection closed", () => relay.stats().active === 0);
  });

  test("half-close the other way: the backend finishes first while the client keeps sending", async () => {
    let received = "";
    const backendDone = Promise.withResolvers<string>();
    const b = await backend((s) => {
      s.end("hello"); // FIN from the backend right away
      s.on("data", (d: Buffer) => (received += d.toString()));
      s.on("end", () => backendDone.resolve(received));
    });
    const { relay } = relayTo([b.endpoint]);
    const c = track(await connect(relay.port));
    const greeting = readAll(c);
    expect(await greeting).toBe("hello");
    c.write("still ");
    c.end("talking");
    expect(await backendDone.promise).toBe("still talking");
    await eventually("connection closed", () => relay.stats().active === 0);
  });

  test("a reply that comes with the backend's FIN arrives whole, then the end, whatever its size", async () => {
    // Around the epoll relay's 256 KiB read buffer: a FIN seen with a short read ends the stream there.
    for (const size of [1, 1000, 256 * 1024 - 1, 256 * 1024, 256 * 1024 + 1, 600 * 1024]) {
      const reply = pattern(size, size % 251);
      let clientEnded = Promise.withResolvers<void>();
      const b = await backend((s) => {
        s.end(reply);
        s.on("data", () => {});
        s.on("end", () => clientEnded.resolve());
      });
      const { relay } = relayTo([b.endpoint]);
      const c = track(await connect(relay.port));
      const got = hashUntilEnd(c);
      const r = await got;
      expect(r.bytes).toBe(size);
      expect(r.digest).toBe(sha256(reply));
      c.end();
      await clientEnded.promise;
      await eventually("connection closed", () => relay.stats().active === 0);
      clientEnded = Promise.withResolvers<void>();
    }
  }, 20_000);

  test("a backend that resets: the client sees the reset promptly", async () => {
    const b = await backend((s) => {
      s.write("partial");
      s.once("data", () => s.resetAndDestroy());
    });
    const { relay } = relayTo([b.endpoint]);
    const c = track(await connect(relay.port));
    const closed = new Promise<{ err: string | undefined; data: string }>((resolve) => {
      let data = "";
      let err: string | undefined;
      c.on("data", (d: Buffer) => (data += d.toString()));
      c.on("error", (e: NodeJS.ErrnoException) => (err = e.code));
      c.on("close", () => resolve({ err, data }));
    });
    await eventually("greeting", () => c.bytesRead > 0);
    const t0 = Date.now();
    c.write("trigger");
    const r = await closed;
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(r.data).toBe("partial");
    expect(r.err).toBe("ECONNRESET");
    await eventually("connection closed", () => relay.stats().active === 0);
  });

  test("a client that disappears mid-transfer: the backend socket is closed and nothing leaks", async () => {
    const chunk = new Uint8Array(64 * 1024);
    let backendClosed = false;
    const b = await backend((s) => {
      const pump = () => {
        while (!s.destroyed && s.write(chunk));
      };
      s.on("drain", pump);
      s.on("close", () => (backendClosed = true));
      pump();
    });
    const { relay } = relayTo([b.endpoint]);
    const c = track(await connect(relay.port));
    c.resume();
    await eventually("streaming", () => c.bytesRead > 1024 * 1024);
    c.resetAndDestroy();
    await eventually("backend closed", () => backendClosed);
    await eventually("relay forgot the connection", () => relay.stats().active === 0);
    expect(relay.stats().bufferedBytes).toBe(0);
    expect(b.open()).toBe(0);
  });

  test("1,000 concurrent connections are all relayed correctly", async () => {
    const b = await backend(echo);
    const { relay } = relayTo([b.endpoint]);
    const n = 1000;
    const results = await Promise.all(
      Array.from({ length: n }, async (_, i) => {
        try {
          const c = track(await connect(relay.port));
          const answer = readAll(c);
          c.end(`connection-${i}`);
          return (await answer) === `connection-${i}` ? "ok" : "wrong answer";
        } catch (err) {
          return String(err);
        }
      }),
    );
    const failures = results.filter((r) => r !== "ok");
    // On failure, show what went wrong and the relay's view of it.
    expect({ failures: failures.slice(0, 3), count: failures.length, stats: failures.length ? relay.stats() : undefined }).toEqual({
      failures: [],
      count: 0,
      stats: undefined,
    });
    expect(relay.stats().total).toBe(n);
    await eventually("all closed", () => relay.stats().active === 0, 5000);
  }, 20_000);
});

describe(`TCP relay balancing (${engine.name})`, () => {
  test("round robin spreads connections evenly over three backends", async () => {
    const names = ["a", "b", "c"];
    const bs = await Promise.all(names.map((n) => backend(nameServer(n))));
    const { relay } = relayTo(bs.map((b) => b.endpoint));
    const counts: Record<string, number> = {};
    for (let i = 0; i < 30; i++) {
      const name = await fetchName(relay.port);
      counts[name] = (counts[name] ?? 0) + 1;
    }
    expect(counts).toEqual({ a: 10, b: 10, c: 10 });
  });

  test("ClientIP affinity keeps a client on one backend", async () => {
    const bs = await Promise.all(["a", "b", "c"].map((n) => backend(nameServer(n))));
    const { relay, lb } = relayTo([]);
    lb.update("ns/svc:p", bs.map((b) => b.endpoint), { type: "ClientIP", timeoutSeconds: 60 });
    const seen = new Set<string>();
    for (let i = 0; i < 9; i++) seen.add(await fetchName(relay.port));
    expect(seen.size).toBe(1);
  });

  test("a failed dial moves on to the next endpoint and resets the client's affinity", async () => {
    const live = await backend(nameServer("live"));
    const dead = `${HOST}:${await closedPort()}`;
    const lb = new LoadBalancer({ random: () => 0.99 }); // keeps the given order: dead first
    lb.update("svc", [dead, live.endpoint], { type: "ClientIP", timeoutSeconds: 60 });
    expect(lb.endpoints("svc")[0]).toBe(dead);
    const relay = startRelay({ serviceKey: "svc", host: HOST, port: 0, chooser: lb });
    cleanups.push(() => relay.close({ closeActive: true }));
    expect(await fetchName(relay.port)).toBe("live");
    expect(relay.stats().dialFailures).toBe(1);
    // The sticky record now points at the live endpoint: no more failed dials.
    for (let i = 0; i < 3; i++) expect(await fetchName(relay.port)).toBe("live");
    expect(relay.stats().dialFailures).toBe(1);
  });

  test("an endpoint that is not ip:port fails its dial and the next endpoint serves, every time", async () => {
    const live = await backend(nameServer("live"));
    const lb = new LoadBalancer({ random: () => 0.99 }); // keeps the given order: the bad one first
    lb.update("svc", ["no-port-here", live.endpoint]);
    const relay = startRelay({ serviceKey: "svc", host: HOST, port: 0, chooser: lb });
    cleanups.push(() => relay.close({ closeActive: true }));
    // The failover takes the round robin past the live endpoint, so each connection meets the bad one first.
    for (let i = 0; i < 4; i++) expect(await fetchName(relay.port)).toBe("live");
    expect(relay.stats().dialFailures).toBe(4);
    expect(relay.stats().rejected).toBe(0);
  });

  test("bytes the client sent while a dial was failing reach the next endpoint", async () => {
    const live = await backend(echo);
    const dead = `${HOST}:${await closedPort()}`;
    const lb = new LoadBalancer({ random: () => 0.99 }); // keeps the given order: dead first
    lb.update("svc", [dead, live.endpoint]);
    const relay = startRelay({ serviceKey: "svc", host: HOST, port: 0, chooser: lb });
    cleanups.push(() => relay.close({ closeActive: true }));
    const c = track(await connect(relay.port));
    const answer = readAll(c);
    c.end("sent at once");
    expect(await answer).toBe("sent at once");
    expect(relay.stats().dialFailures).toBe(1);
  });

  // Each engine times dials out its own way, so each has its own test (defined for that engine only).
  if (engine.name === "bun sockets") test("a dial that times out moves on; when it connects late it is cut and the client is unharmed", async () => {
    const slow = await backend(nameServer("slow"));
    const fast = await backend(echo);
    const lb = new LoadBalancer({ random: () => 0.99 }); // keeps the given order: slow first
    lb.update("svc", [slow.endpoint, fast.endpoint]);
    let lateOpened = false;
    // The slow endpoint answers its SYN 150 ms late, well after the 30 ms first-attempt timeout.
    const slowNetwork: TcpConnect = async (options) => {
      if (options.port === slow.port) {
        await new Promise((r) => setTimeout(r, 150));
        const s = await Bun.connect(options);
        lateOpened = true;
        return s;
      }
      return Bun.connect(options);
    };
    const relay = startRelay({ serviceKey: "svc", host: HOST, port: 0, chooser: lb, connect: slowNetwork, dialTimeoutsMs: [30, 1000] });
    cleanups.push(() => relay.close({ closeActive: true }));
    const c = track(await connect(relay.port));
    const got = readAll(c);
    await eventually("late dial finished", () => lateOpened, 2000);
    await eventually("late connection cut", () => slow.accepted.length === 1 && slow.open() === 0);
    // The client's connection to the fast endpoint still carries data both ways and ends normally.
    c.end("still here");
    expect(await got).toBe("still here");
    expect(relay.stats().dialFailures).toBe(1);
    await eventually("all closed", () => relay.stats().active === 0);
    expect(relay.stats().bufferedBytes).toBe(0);
  });

  if (engine.name === "epoll") test("a dial that times out moves on to the next endpoint and the client is unharmed", async () => {
    const stuck = await stuckListener();
    cleanups.push(() => stuck.close());
    const fast = await backend(echo);
    const lb = new LoadBalancer({ random: () => 0.99 }); // keeps the given order: stuck first
    lb.update("svc", [stuck.endpoint, fast.endpoint]);
    const relay = startRelay({ serviceKey: "svc", host: HOST, port: 0, chooser: lb, dialTimeoutsMs: [30, 1000] });
    cleanups.push(() => relay.close({ closeActive: true }));
    const c = track(await connect(relay.port));
    const got = readAll(c);
    c.end("still here");
    expect(await got).toBe("still here");
    expect(relay.stats().dialFailures).toBe(1);
    expect(fast.accepted.length).toBe(1);
    await eventually("all closed", () => relay.stats().active === 0);
    expect(relay.stats().bufferedBytes).toBe(0);
  });

  test("when no endpoint answers after every attempt the client is cut", async () => {
    const deadPorts = await Promise.all([closedPort(), closedPort()]);
    const { relay } = relayTo(deadPorts.map((p) => `${HOST}:${p}`));
    const c = track(await connect(relay.port));
    const closed = new Promise<void>((resolve) => c.on("close", () => resolve()));
    c.on("error", () => {});
    await closed;
    const st = relay.stats();
    expect(st.dialFailures).toBe(4);
    expect(st.rejected).toBe(1);
    expect(st.active).toBe(0);
  });

  test("a service with no endpoints rejects at once", async () => {
    const { relay } = relayTo([]);
    // The reset may come before the client has seen its connect complete; either way it is cut.
    const outcome = await connect(relay.port).then(
      (c) => {
        track(c);
        c.on("error", () => {});
        return new Promise<string>((resolve) => c.on("close", () => resolve("closed")));
      },
      (err: NodeJS.ErrnoException) => err.code ?? String(err),
    );
    expect(["closed", "ECONNRESET"]).toContain(outcome);
    expect(relay.stats().rejected).toBe(1);
  });

  test("an endpoint change applies to the very next connection", async () => {
    const a = await backend(nameServer("a"));
    const b = await backend(nameServer("b"));
    const { relay, lb } = relayTo([a.endpoint]);
    expect(await fetchName(relay.port)).toBe("a");
    lb.update("ns/svc:p", [b.endpoint]);
    expect(await fetchName(relay.port)).toBe("b");
  });
});

describe(`TCP relay lifecycle (${engine.name})`, () => {
  test("close stops listening; existing connections carry on unless closeActive", async () => {
    const b = await backend(echo);
    const { relay } = relayTo([b.endpoint]);
    const c = track(await connect(relay.port));
    c.write("one");
    await eventually("echo", () => c.bytesRead === 3);
    await relay.close();
    await expect(connect(relay.port)).rejects.toThrow();
    c.write("two");
    await eventually("still relayed", () => c.bytesRead === 6);
    expect(relay.stats().active).toBe(1);
    const closed = new Promise<void>((resolve) => c.on("close", () => resolve()));
    c.on("error", () => {});
    await relay.close({ closeActive: true });
    await closed;
    expect(relay.stats().active).toBe(0);
    await eventually("backend side closed", () => b.open() === 0);
  });

  test("data sent before the endpoint answers is delivered once it does", async () => {
    const b = await backend(echo);
    const { relay } = relayTo([b.endpoint]);
    const c = track(await connect(relay.port));
    const answer = readAll(c);
    // Written immediately, while the relay is still dialling.
    c.end("early bytes");
    expect(await answer).toBe("early bytes");
  });
});
}
