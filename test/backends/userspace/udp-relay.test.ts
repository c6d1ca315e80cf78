import { afterEach, describe, expect, test } from "bun:test";
import dgram from "node:dgram";
import { LoadBalancer } from "../../../src/backends/userspace/load-balancer.ts";
import { DEFAULT_UDP_IDLE_TIMEOUT_MS, startUdpRelay } from "../../../src/backends/userspace/udp-relay.ts";
import type { UdpRelay } from "../../../src/backends/userspace/udp-relay.ts";
import { eventually, HOST } from "./helpers.ts";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface UdpPeer {
  readonly socket: dgram.Socket;
  readonly port: number;
  readonly received: { text: string; from: string; at: number }[];
}

/** A node:dgram socket on loopback; `reply` (when given) answers each datagram. */
async function peer(reply?: (text: string) => string, host = HOST): Promise<UdpPeer> {
  const socket = dgram.createSocket(host.includes(":") ? "udp6" : "udp4");
  const received: { text: string; from: string; at: number }[] = [];
  socket.on("message", (msg, rinfo) => {
    received.push({ text: msg.toString(), from: `${rinfo.address}:${rinfo.port}`, at: performance.now() });
    if (reply) socket.send(reply(msg.toString()), rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, host, resolve));
  cleanups.push(() => new Promise<void>((resolve) => socket.close(() => resolve())));
  return { socket, port: socket.address().port, received };
}

async function relayTo(endpoints: string[], idleTimeoutMs?: number): Promise<{ relay: UdpRelay; lb: LoadBalancer }> {
  const lb = new LoadBalancer();
  lb.update("ns/dns:udp", endpoints);
  const relay = await startUdpRelay({
    serviceKey: "ns/dns:udp",
    host: HOST,
    port: 0,
    chooser: lb,
    ...(idleTimeoutMs === undefined ? {} : { idleTimeoutMs }),
  });
  cleanups.push(() => relay.close());
  return { relay, lb };
}

describe("UDP relay", () => {
  test("default idle timeout is upstream's 250 ms", () => {
    expect(DEFAULT_UDP_IDLE_TIMEOUT_MS).toBe(250);
  });

  test("IPv6: a client of an IPv6 service socket reaches an IPv6 endpoint and gets its replies", async () => {
    const backend = await peer((t) => `echo:${t}`, "::1");
    const lb = new LoadBalancer();
    lb.update("ns/dns:udp", [`[::1]:${backend.port}`]);
    const relay = await startUdpRelay({ serviceKey: "ns/dns:udp", host: "::1", port: 0, chooser: lb, idleTimeoutMs: 5000 });
    cleanups.push(() => relay.close());
    const client = await peer(undefined, "::1");
    client.socket.send("ping", relay.port, "::1");
    await eventually("a reply", () => client.received.length === 1);
    expect(client.received[0]).toMatchObject({ text: "echo:ping", from: `::1:${relay.port}` });
    expect(relay.stats().dialFailures).toBe(0);
  });

  test("echo through the relay; replies come from the service address", async () => {
    const backend = await peer((t) => `echo:${t}`);
    const { relay } = await relayTo([`${HOST}:${backend.port}`], 5000);
    const client = await peer();
    for (let i = 0; i < 5; i++) client.socket.send(`ping${i}`, relay.port, HOST);
    await eventually("five replies", () => client.received.length === 5);
    expect(client.received.map((r) => r.text).sort()).toEqual([0, 1, 2, 3, 4].map((i) => `echo:ping${i}`));
    for (const r of client.received) expect(r.from).toBe(`${HOST}:${relay.port}`);
    // One backend socket for the one client: the backend saw a single source port.
    expect(new Set(backend.received.map((r) => r.from)).size).toBe(1);
    expect(backend.received[0]!.from).not.toBe(`${HOST}:${relay.port}`);
    const st = relay.stats();
    expect(st.active).toBe(1);
    expect(st.total).toBe(1);
    expect(st.bytesToEndpoints).toBe(5 * "ping0".length);
    expect(st.bytesToClients).toBe(5 * "echo:ping0".length);
  });

  test("each client address gets its own backend socket", async () => {
    const backend = await peer((t) => t);
    const { relay } = await relayTo([`${HOST}:${backend.port}`], 5000);
    const clients = await Promise.all([peer(), peer(), peer()]);
    clients.forEach((c, i) => c.socket.send(`from${i}`, relay.port, HOST));
    await eventually("all answered", () => clients.every((c) => c.received.length === 1));
    clients.forEach((c, i) => expect(c.received[0]!.text).toBe(`from${i}`));
    expect(new Set(backend.received.map((r) => r.from)).size).toBe(3);
    expect(relay.stats().active).toBe(3);
  });

  test("an idle backend socket is closed after the idle timeout; the next datagram opens a new one", async () => {
    const backend = await peer((t) => t);
    const idleMs = 60;
    const { relay } = await relayTo([`${HOST}:${backend.port}`], idleMs);
    const client = await peer();
    client.socket.send("one", relay.port, HOST);
    await eventually("reply", () => client.received.length === 1);
    expect(relay.stats().active).toBe(1);
    // The reply was the session's last activity; polling only notices the close late, never early.
    const lastActivity = client.received[0]!.at;
    await eventually("idle session closed", () => relay.stats().active === 0, 2000);
    expect(performance.now() - lastActivity).toBeGreaterThanOrEqual(idleMs - 5);
    client.socket.send("two", relay.port, HOST);
    await eventually("second reply", () => client.received.length === 2);
    expect(relay.stats().total).toBe(2);
    // A fresh backend socket means a fresh source port at the backend.
    expect(backend.received[0]!.from).not.toBe(backend.received[1]!.from);
  });

  test("traffic keeps a session alive past the idle timeout", async () => {
    const backend = await peer((t) => t);
    const idleMs = 300;
    const { relay } = await relayTo([`${HOST}:${backend.port}`], idleMs);
    const client = await peer();
    const start = Date.now();
    let sent = 0;
    while (Date.now() - start < idleMs * 3) {
      client.socket.send(`n${sent++}`, relay.port, HOST);
      const want = sent;
      await eventually("reply", () => client.received.length === want);
      await new Promise((r) => setTimeout(r, idleMs / 10));
    }
    expect(relay.stats().total).toBe(1);
  });

  test("clients are spread round robin over endpoints; an endpoint change applies to new clients", async () => {
    const a = await peer(() => "a");
    const b = await peer(() => "b");
    const { relay, lb } = await relayTo([`${HOST}:${a.port}`, `${HOST}:${b.port}`], 5000);
    const clients = await Promise.all([peer(), peer(), peer(), peer()]);
    for (const c of clients) c.socket.send("x", relay.port, HOST);
    await eventually("all answered", () => clients.every((c) => c.received.length === 1));
    expect(clients.map((c) => c.received[0]!.text).sort()).toEqual(["a", "a", "b", "b"]);
    lb.update("ns/dns:udp", [`${HOST}:${b.port}`]);
    const late = await peer();
    late.socket.send("x", relay.port, HOST);
    await eventually("late answered", () => late.received.length === 1);
    expect(late.received[0]!.text).toBe("b");
  });

  test("closing the relay closes its port and its backend sockets", async () => {
    const backend = await peer((t) => t);
    const { relay } = await relayTo([`${HOST}:${backend.port}`], 5000);
    const client = await peer();
    client.socket.send("hi", relay.port, HOST);
    await eventually("reply", () => client.received.length === 1);
    await relay.close();
    expect(relay.stats().active).toBe(0);
    // The port is free again: binding it succeeds.
    const probe = dgram.createSocket("udp4");
    await new Promise<void>((resolve, reject) => {
      probe.once("error", reject);
      probe.bind(relay.port, HOST, resolve);
    });
    probe.close();
  });
});
