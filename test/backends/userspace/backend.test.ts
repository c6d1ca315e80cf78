import { afterEach, describe, expect, test } from "bun:test";
import {
  RelayPool,
  registerRelayMetrics,
  registerRelayThreadMetrics,
  type RelayFactory,
  type RelayListenOptions,
  UserspaceBackend,
  type UserspaceBackendOptions,
} from "../../../src/backends/userspace/backend.ts";
import { portalRules } from "../../../src/backends/userspace/portals.ts";
import type { ProxySocket, RelayStats } from "../../../src/backends/userspace/proxy-socket.ts";
import type { Fields, Logger } from "../../../src/log.ts";
import type { ChangeSet, SessionAffinity } from "../../../src/model/types.ts";
import type { Exec, ExecOptions, ExecResult } from "../../../src/system/exec.ts";
import { endpoint, servicePort, snapshot, testNodeName } from "../iptables/helpers.ts";
import { Registry } from "../../../src/server/registry.ts";
import { closedPort, eventually, fetchName, nameServer, startBackend } from "./helpers.ts";

const FULL: ChangeSet = { changed: new Set(), full: true, triggerTimes: [] };
const PARTIAL: ChangeSet = { changed: new Set(), full: false, triggerTimes: [] };
/** A partial sync of these service ports. */
const changed = (...ports: readonly { readonly key: string }[]): ChangeSet => ({ changed: new Set(ports.map((p) => p.key)), full: false, triggerTimes: [] });
const HOST_IP = "172.30.0.1";

const NO_STATS: RelayStats = { active: 0, total: 0, bytesToEndpoints: 0, bytesToClients: 0, dialFailures: 0, rejected: 0, bufferedBytes: 0 };

/** Relays that only record: which listeners are open on which ports, and what each balancer was told. */
class FakeRelays implements RelayFactory {
  readonly listens: RelayListenOptions[] = [];
  readonly open = new Map<string, { port: number; options: RelayListenOptions }>();
  readonly balancers = new Map<string, { endpoints: readonly string[]; affinity: SessionAffinity }>();
  readonly updates: string[] = [];
  readonly removed: string[] = [];
  readonly closedKeys: string[] = [];
  /** Ports whose bind fails (taken by someone else). */
  readonly taken = new Set<number>();
  private nextPort = 50000;
  closed = false;

  async listen(options: RelayListenOptions): Promise<ProxySocket> {
    if (this.taken.has(options.port)) throw new Error(`listen ${options.host}:${options.port}: EADDRINUSE`);
    this.listens.push(options);
    const port = options.port === 0 ? this.nextPort++ : options.port;
    this.open.set(options.key, { port, options });
    return {
      protocol: options.protocol,
      serviceKey: options.key,
      host: options.host,
      port,
      stats: () => NO_STATS,
      close: async () => {
        this.open.delete(options.key);
        this.closedKeys.push(options.key);
      },
    };
  }

  update(key: string, endpoints: readonly string[], affinity: SessionAffinity): void {
    this.updates.push(key);
    this.balancers.set(key, { endpoints: [...endpoints], affinity });
  }

  remove(key: string): void {
    this.removed.push(key);
    this.balancers.delete(key);
  }

  sweeps = 0;
  cleanupStaleAffinity(): void {
    this.sweeps++;
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

/** iptables as far as the backend uses it: restores recorded, `-C` answered from the rules `-I`/`-A` added. */
class FakeExec implements Exec {
  readonly calls: { argv: string[]; stdin?: string }[] = [];
  readonly rules = new Set<string>();
  failRestores = 0;

  restores(): string[] {
    return this.calls.filter((c) => c.argv[0]?.endsWith("-restore")).map((c) => c.stdin ?? "");
  }

  verbs(verb: string): string[] {
    return this.calls.filter((c) => c.argv[5] === verb).map((c) => c.argv.slice(4).join(" "));
  }

  async run(argv: readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
    const stdin = typeof options.stdin === "string" ? options.stdin : undefined;
    this.calls.push(stdin === undefined ? { argv: [...argv] } : { argv: [...argv], stdin });
    const ok: ExecResult = { code: 0, stdout: "", stderr: "", timedOut: false };
    const fail = (stderr: string): ExecResult => ({ code: 1, stdout: "", stderr, timedOut: false });
    const bin = argv[0] ?? "";
    if (bin.endsWith("-restore")) {
      if (this.failRestores > 0) {
        this.failRestores--;
        return fail("iptables-restore: line 7 failed");
      }
      return ok;
    }
    if (bin.endsWith("-save")) return ok;
    // iptables -w 5 -t <table> <verb> <chain> <args...>
    const [table, verb, chain, ...args] = argv.slice(4);
    const rule = `${bin} ${table} ${chain} ${args.join(" ")}`;
    if (verb === "-C") return this.rules.has(rule) ? ok : fail("Bad rule (does a matching rule exist in that chain?)");
    if (verb === "-I" || verb === "-A") this.rules.add(rule);
    return ok;
  }
}

class CaptureLogger implements Logger {
  readonly lines: { level: string; msg: string; fields?: Fields }[] = [];
  info(msg: string, fields?: Fields): void {
    this.lines.push({ level: "info", msg, ...(fields ? { fields } : {}) });
  }
  warn(msg: string, fields?: Fields): void {
    this.lines.push({ level: "warn", msg, ...(fields ? { fields } : {}) });
  }
  error(msg: string, fields?: Fields): void {
    this.lines.push({ level: "error", msg, ...(fields ? { fields } : {}) });
  }
  debug(): void {}
  enabled(): boolean {
    return false;
  }
  with(): Logger {
    return this;
  }
  count(level: string, text: string): number {
    return this.lines.filter((l) => l.level === level && l.msg.includes(text)).length;
  }
}

function setup(overrides: Partial<UserspaceBackendOptions> = {}) {
  const relays = new FakeRelays();
  const exec = new FakeExec();
  const logger = new CaptureLogger();
  const backend = new UserspaceBackend({
    relays,
    exec,
    logger,
    portals: "auto",
    bindAddress: "0.0.0.0",
    portRange: { base: 0, size: 0 },
    flavour: "nft",
    portalsUnavailableReason: async () => undefined,
    hostIP: () => HOST_IP,
    ...overrides,
  });
  return { relays, exec, logger, backend };
}

const web = servicePort("ns1", "web", "http", { clusterIP: "10.96.0.10", port: 80, type: "NodePort", nodePort: 30080 });
const dns = servicePort("ns1", "dns", "dns", { clusterIP: "10.96.0.53", port: 53, protocol: "UDP" });
const webEndpoints = [endpoint("10.244.1.10", 8080), endpoint("10.244.1.11", 8080)];

describe("userspace backend", () => {
  test("a relay per service port on a kernel-chosen port, a NodePort relay on the NodePort itself, UDP for UDP ports", async () => {
    const { relays, backend } = setup();
    const result = await backend.sync(snapshot([[web, webEndpoints], [dns, [endpoint("10.244.1.20", 53)]]]), FULL);
    expect(result.servicePorts).toBe(2);
    expect(result.endpoints).toBe(3);
    const listens = relays.listens.map((l) => `${l.key} ${l.protocol} ${l.host}:${l.port}`).sort();
    expect(listens).toEqual([
      `${dns.key} UDP 0.0.0.0:0`,
      `${web.key} TCP 0.0.0.0:0`,
      `${web.key}|nodePort TCP 0.0.0.0:30080`,
    ]);
    expect(relays.balancers.get(web.key)?.endpoints).toEqual(["10.244.1.10:8080", "10.244.1.11:8080"]);
    expect(relays.balancers.get(`${web.key}|nodePort`)?.endpoints).toEqual(["10.244.1.10:8080", "10.244.1.11:8080"]);
    expect(relays.balancers.get(dns.key)?.endpoints).toEqual(["10.244.1.20:53"]);
  });

  test("traffic policies: Local external traffic gets its own relay balancing over this node's endpoints only", async () => {
    const { relays, exec, backend } = setup();
    const local = servicePort("ns1", "lb", "", {
      clusterIP: "10.96.0.20",
      port: 443,
      type: "LoadBalancer",
      nodePort: 31443,
      loadBalancerIPs: ["198.51.100.9"],
      externalPolicyLocal: true,
    });
    const eps = [endpoint("10.244.1.10", 443, { nodeName: testNodeName }), endpoint("10.244.2.10", 443, { nodeName: "other" })];
    await backend.sync(snapshot([[local, eps]]), FULL);
    expect(relays.balancers.get(local.key)?.endpoints).toEqual(["10.244.1.10:443", "10.244.2.10:443"]);
    expect(relays.balancers.get(`${local.key}|external`)?.endpoints).toEqual(["10.244.1.10:443"]);
    expect(relays.balancers.get(`${local.key}|nodePort`)?.endpoints).toEqual(["10.244.1.10:443"]);
    const internalPort = relays.open.get(local.key)?.port;
    const externalPort = relays.open.get(`${local.key}|external`)?.port;
    const text = exec.restores()[0] ?? "";
    // ClusterIP to the internal relay; LoadBalancer IP and NodePort to the external one.
    expect(text).toContain(`--dport 443 -d 10.96.0.20/32 -j REDIRECT --to-ports ${internalPort}\n`);
    expect(text).toContain(`--dport 443 -d 198.51.100.9/32 -j REDIRECT --to-ports ${externalPort}\n`);
    expect(text).toContain(`--dport 31443 -j REDIRECT --to-ports ${externalPort}\n`);
  });

  test("endpoint changes reach the balancer at once; unchanged endpoints send nothing", async () => {
    const { relays, backend } = setup();
    await backend.sync(snapshot([[web, webEndpoints]]), FULL);
    relays.updates.length = 0;
    await backend.sync(snapshot([[web, webEndpoints]]), changed(web));
    expect(relays.updates).toEqual([]);
    const fewer = [endpoint("10.244.1.11", 8080), endpoint("10.244.1.12", 8080, { ready: false })];
    // A partial sync leaves alone what it is not told changed.
    await backend.sync(snapshot([[web, fewer]]), PARTIAL);
    expect(relays.updates).toEqual([]);
    await backend.sync(snapshot([[web, fewer]]), changed(web));
    expect(relays.updates.sort()).toEqual([web.key, `${web.key}|nodePort`]);
    expect(relays.balancers.get(web.key)?.endpoints).toEqual(["10.244.1.11:8080"]);
    // The relays stay open: only new connections see the change.
    expect(relays.listens).toHaveLength(2);
  });

  test("removing a service closes its relays, forgets its balancers and drops its portals", async () => {
    const { relays, exec, backend } = setup();
    await backend.sync(snapshot([[web, webEndpoints], [dns, []]]), FULL);
    await backend.sync(snapshot([[dns, []]]), PARTIAL);
    expect(relays.closedKeys.sort()).toEqual([web.key, `${web.key}|nodePort`]);
    expect(relays.removed.sort()).toEqual([web.key, `${web.key}|nodePort`]);
    expect([...relays.open.keys()]).toEqual([dns.key]);
    const last = exec.restores().at(-1) ?? "";
    expect(last).not.toContain("ns1/web");
    expect(last).toContain("ns1/dns:dns");
  });

  test("a change of protocol, NodePort or affinity reopens the relays; ClientIP affinity asks for one balancing state", async () => {
    const { relays, backend } = setup();
    await backend.sync(snapshot([[web, webEndpoints]]), FULL);
    const sticky = { ...web, sessionAffinity: { type: "ClientIP", timeoutSeconds: 60 } as const };
    await backend.sync(snapshot([[sticky, webEndpoints]]), changed(web));
    expect(relays.closedKeys.sort()).toEqual([web.key, `${web.key}|nodePort`]);
    expect(relays.listens.slice(2).every((l) => l.clientIPAffinity)).toBe(true);
    expect(relays.balancers.get(web.key)?.affinity).toEqual({ type: "ClientIP", timeoutSeconds: 60 });
    // A new timeout is a balancer update, not a reopen.
    relays.updates.length = 0;
    await backend.sync(snapshot([[{ ...sticky, sessionAffinity: { type: "ClientIP", timeoutSeconds: 30 } }, webEndpoints]]), changed(web));
    expect(relays.listens).toHaveLength(4);
    expect(relays.updates).toHaveLength(2);
  });

  test("portal rules are restored every sync from the open relays; jumps are ensured once, and again on full syncs", async () => {
    const { relays, exec, backend } = setup();
    const result = await backend.sync(snapshot([[web, webEndpoints], [dns, []]]), FULL);
    const port = (key: string) => relays.open.get(key)?.port ?? -1;
    const expected = portalRules(
      [
        { ...web, protocol: "TCP", proxyPort: port(web.key), externalProxyPort: port(web.key) },
        { ...dns, protocol: "UDP", proxyPort: port(dns.key), externalProxyPort: port(dns.key) },
      ],
      { family: "IPv4", listenIP: "0.0.0.0", hostIP: HOST_IP },
    );
    expect(exec.restores()).toEqual([expected.text]);
    expect(result.rules).toEqual({ nat: expected.natRules, filter: expected.filterRules });
    expect(exec.calls[0]?.argv.slice(0, 4)).toEqual(["iptables-nft-restore", "-w", "5", "--noflush"]);
    // Five jumps, each checked and then added (portals prepended, NodePorts appended).
    expect(exec.verbs("-C")).toHaveLength(5);
    expect(exec.verbs("-I").map((v) => v.split(" ").slice(0, 3).join(" "))).toEqual(["nat -I PREROUTING", "nat -I OUTPUT", "filter -I INPUT"]);
    expect(exec.verbs("-A").map((v) => v.split(" ").slice(0, 3).join(" "))).toEqual(["nat -A PREROUTING", "nat -A OUTPUT"]);

    exec.calls.length = 0;
    await backend.sync(snapshot([[web, webEndpoints], [dns, []]]), PARTIAL);
    expect(exec.restores()).toEqual([expected.text]);
    expect(exec.verbs("-C")).toHaveLength(0);

    exec.calls.length = 0;
    await backend.sync(snapshot([[web, webEndpoints], [dns, []]]), FULL);
    expect(exec.verbs("-C")).toHaveLength(5);
    // Already there: never duplicated.
    expect(exec.verbs("-I")).toHaveLength(0);
    expect(exec.verbs("-A")).toHaveLength(0);
  });

  test("UDP flows redirected to a closed relay port are deleted after the portals change, and at start", async () => {
    const { exec, backend } = setup();
    const conntrack = () => exec.calls.filter((c) => c.argv[0] === "conntrack").map((c) => c.argv.join(" "));
    await backend.sync(snapshot([[web, webEndpoints], [dns, []]]), FULL);
    // A new run has new relay ports: flows of an earlier run go.
    expect(conntrack()).toEqual(["conntrack -D --orig-dst 10.96.0.53 -p udp"]);
    exec.calls.length = 0;
    await backend.sync(snapshot([[web, webEndpoints], [dns, []]]), PARTIAL);
    expect(conntrack()).toEqual([]);
    await backend.sync(snapshot([[web, webEndpoints]]), PARTIAL);
    const calls = exec.calls.map((c) => c.argv[0]);
    expect(conntrack()).toEqual(["conntrack -D --orig-dst 10.96.0.53 -p udp"]);
    // After the restore that dropped the portal, so no new flow can be redirected to the old port.
    expect(calls.indexOf("conntrack")).toBeGreaterThan(calls.indexOf("iptables-nft-restore"));
  });

  test("a failed restore fails the sync, keeps the relays, and re-checks the jumps next time", async () => {
    const { relays, exec, backend } = setup();
    await backend.sync(snapshot([[web, webEndpoints]]), FULL);
    exec.failRestores = 1;
    await expect(backend.sync(snapshot([[web, webEndpoints]]), PARTIAL)).rejects.toThrow(/portal rules failed/);
    expect(relays.open.size).toBe(2);
    exec.calls.length = 0;
    await backend.sync(snapshot([[web, webEndpoints]]), PARTIAL);
    expect(exec.verbs("-C")).toHaveLength(5);
  });

  test("without root: no kernel commands at all, NodePorts still served on the NodePort, and one warning for the whole run", async () => {
    const { relays, exec, logger, backend } = setup({ portalsUnavailableReason: async () => "kproxy is not running as root" });
    const first = await backend.sync(snapshot([[web, webEndpoints]]), FULL);
    await backend.sync(snapshot([[web, webEndpoints], [dns, []]]), FULL);
    expect(backend.portalsEnabled).toBe(false);
    expect(exec.calls).toEqual([]);
    expect(first.rules).toBeUndefined();
    expect(relays.open.get(`${web.key}|nodePort`)?.port).toBe(30080);
    expect(logger.count("warn", "without portal rules")).toBe(1);
    const warning = logger.lines.find((l) => l.msg.includes("without portal rules"));
    expect(warning?.msg).toContain("ClusterIPs");
    expect(warning?.fields?.["reason"]).toBe("kproxy is not running as root");
  });

  test('portals "off" never asks the kernel anything, even where it could', async () => {
    let asked = false;
    const { exec, backend } = setup({
      portals: "off",
      flavour: "auto",
      portalsUnavailableReason: async () => {
        asked = true;
        return undefined;
      },
    });
    await backend.sync(snapshot([[web, webEndpoints]]), FULL);
    expect(asked).toBe(false);
    expect(exec.calls).toEqual([]);
  });

  test("portRange: ports from the range, a taken one skipped, a full range logged once and retried on later syncs", async () => {
    const { relays, logger, backend } = setup({ portRange: { base: 40000, size: 2 } });
    relays.taken.add(40000);
    const a = servicePort("ns1", "a", "", { clusterIP: "10.96.0.1", port: 80 });
    const b = servicePort("ns1", "b", "", { clusterIP: "10.96.0.2", port: 80 });
    await backend.sync(snapshot([[a, []], [b, []]]), FULL);
    expect(relays.open.get(a.key)?.port).toBe(40001);
    expect(relays.open.has(b.key)).toBe(false);
    await backend.sync(snapshot([[a, []], [b, []]]), PARTIAL);
    expect(logger.count("error", "Cannot listen")).toBe(1);
    relays.taken.clear();
    await backend.sync(snapshot([[a, []], [b, []]]), PARTIAL);
    expect(relays.open.get(b.key)?.port).toBe(40000);
    // A removed service gives its port back to the range.
    await backend.sync(snapshot([[b, []]]), PARTIAL);
    const c = servicePort("ns1", "c", "", { clusterIP: "10.96.0.3", port: 80 });
    await backend.sync(snapshot([[b, []], [c, []]]), PARTIAL);
    expect(relays.open.get(c.key)?.port).toBe(40001);
  });

  test("a taken NodePort is reported and leaves the other relays working", async () => {
    const { relays, logger, backend } = setup();
    relays.taken.add(30080);
    await backend.sync(snapshot([[web, webEndpoints]]), FULL);
    expect(relays.open.has(web.key)).toBe(true);
    expect(logger.lines.find((l) => l.msg === "Cannot listen for a service port")?.fields?.["port"]).toBe(30080);
  });

  test("a bound bindAddress is where relays listen and what portals DNAT to", async () => {
    const { relays, exec, backend } = setup({ bindAddress: "192.168.0.2" });
    await backend.sync(snapshot([[web, webEndpoints]]), FULL);
    expect(relays.listens.every((l) => l.host === "192.168.0.2")).toBe(true);
    expect(exec.restores()[0]).toContain(`-j DNAT --to-destination 192.168.0.2:${relays.open.get(web.key)?.port}`);
  });

  test("IPv6 service ports listen on :: and get ip6tables portals", async () => {
    const { relays, exec, backend } = setup({ hostIP: (family) => (family === "IPv6" ? "fd00:30::1" : HOST_IP) });
    const web6 = servicePort("ns1", "web6", "", { clusterIP: "fd00:96::10", port: 80 });
    await backend.sync(snapshot([[web6, [endpoint("fd00:244:1::a", 8080)]]]), FULL);
    expect(relays.listens[0]?.host).toBe("::");
    expect(relays.balancers.get(web6.key)?.endpoints).toEqual(["[fd00:244:1::a]:8080"]);
    const six = exec.calls.find((c) => c.argv[0] === "ip6tables-nft-restore");
    expect(six?.stdin).toContain(`-d fd00:96::10/128 -j DNAT --to-destination [fd00:30::1]:${relays.open.get(web6.key)?.port}`);
  });

  test("health check node ports of Local services follow the snapshot, with their local endpoint counts", async () => {
    const calls: string[] = [];
    const { backend } = setup({
      serviceHealth: {
        syncServices: async (desired) => void calls.push(`services ${JSON.stringify([...desired])}`),
        syncEndpoints: (local) => void calls.push(`endpoints ${JSON.stringify([...local])}`),
        close: async () => void calls.push("close"),
      },
    });
    const local = servicePort("ns1", "lb", "", { clusterIP: "10.96.0.20", port: 80, type: "LoadBalancer", nodePort: 31000, externalPolicyLocal: true, healthCheckNodePort: 32000 });
    await backend.sync(snapshot([[local, [endpoint("10.244.1.10", 80, { nodeName: testNodeName }), endpoint("10.244.2.10", 80, { nodeName: "other" })]]]), FULL);
    await backend.close();
    expect(calls).toEqual(['services [["ns1/lb",32000]]', 'endpoints [["ns1/lb",1]]', "close"]);
  });

  test("relay counters on /metrics, by protocol, read at scrape time", () => {
    const registry = new Registry();
    const tcp = { active: 2, total: 7, bytesToEndpoints: 100, bytesToClients: 300, dialFailures: 1, rejected: 0, bufferedBytes: 5 };
    let udp = { ...NO_STATS };
    registerRelayMetrics(registry, () => ({ TCP: tcp, UDP: udp }));
    expect(registry.expose()).toContain('kproxy_userspace_connections_total{protocol="TCP"} 7\n');
    udp = { ...NO_STATS, total: 3 };
    const text = registry.expose();
    expect(text).toContain("# TYPE kproxy_userspace_connections_total counter\n");
    expect(text).toContain('kproxy_userspace_connections_total{protocol="UDP"} 3\n');
    expect(text).toContain('kproxy_userspace_bytes_total{protocol="TCP",direction="to_clients"} 300\n');
    expect(text).toContain('kproxy_userspace_active_connections{protocol="TCP"} 2\n');
  });

  test("connections moved between relay threads on /metrics, read at scrape time", () => {
    const registry = new Registry();
    let moved = 0;
    registerRelayThreadMetrics(registry, () => moved);
    expect(registry.expose()).toContain("kproxy_userspace_connections_moved_total 0\n");
    moved = 4;
    const text = registry.expose();
    expect(text).toContain("# TYPE kproxy_userspace_connections_moved_total counter\n");
    expect(text).toContain("kproxy_userspace_connections_moved_total 4\n");
  });

  test("close stops every relay and the relay threads", async () => {
    const { relays, backend } = setup();
    await backend.sync(snapshot([[web, webEndpoints]]), FULL);
    expect(relays.sweeps).toBe(1);
    await backend.close();
    expect(relays.open.size).toBe(0);
    expect(relays.closed).toBe(true);
  });

  test("plan shows relays with their endpoints and the portal rules, touching nothing", () => {
    const { relays, exec, backend } = setup();
    const text = backend.plan(snapshot([[web, webEndpoints]]));
    expect(text).toContain("# ns1/web:http TCP IPv4 internal 0.0.0.0:0 -> 10.244.1.10:8080 10.244.1.11:8080");
    expect(text).toContain("# ns1/web:http TCP IPv4 nodePort 0.0.0.0:30080 -> 10.244.1.10:8080 10.244.1.11:8080");
    expect(text).toContain(":KUBE-PORTALS-CONTAINER - [0:0]");
    expect(relays.listens).toEqual([]);
    expect(exec.calls).toEqual([]);
  });
});

describe("userspace backend on real relays (loopback)", () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  test("a NodePort relay spreads over both endpoints, follows endpoint removal at once, and closes with the service", async () => {
    const a = await startBackend(nameServer("a"));
    const b = await startBackend(nameServer("b"));
    cleanups.push(() => a.close(), () => b.close());
    const nodePort = await closedPort();
    const logger = new CaptureLogger();
    const backend = new UserspaceBackend({
      relays: new RelayPool({ threads: 0, logger }),
      exec: new FakeExec(),
      logger,
      portals: "off",
      bindAddress: "127.0.0.1",
      portRange: { base: 0, size: 0 },
      flavour: "nft",
    });
    cleanups.push(() => backend.close());
    const svc = servicePort("ns1", "web", "", { clusterIP: "10.96.0.10", port: 80, type: "NodePort", nodePort });
    const both = [endpoint("127.0.0.1", a.port), endpoint("127.0.0.1", b.port)];
    await backend.sync(snapshot([[svc, both]]), FULL);
    const seen: Record<string, number> = {};
    for (let i = 0; i < 6; i++) {
      const name = await fetchName(nodePort);
      seen[name] = (seen[name] ?? 0) + 1;
    }
    expect(seen).toEqual({ a: 3, b: 3 });
    await eventually("connections closed", () => backend.relayStats().TCP.active === 0);
    expect(backend.relayStats().TCP).toMatchObject({ active: 0, total: 6, bytesToClients: 6 });

    await backend.sync(snapshot([[svc, [endpoint("127.0.0.1", b.port)]]]), changed(svc));
    for (let i = 0; i < 4; i++) expect(await fetchName(nodePort)).toBe("b");

    await backend.sync(snapshot([]), changed(svc));
    await expect(fetchName(nodePort)).rejects.toThrow();
    // Totals of closed relays are kept.
    expect(backend.relayStats().TCP.total).toBe(10);
  });

  test("relay threads that cannot start: the pool says so once and relays TCP on the main thread", async () => {
    const a = await startBackend(nameServer("a"));
    cleanups.push(() => a.close());
    const logger = new CaptureLogger();
    const pool = new RelayPool({ threads: 2, logger, workerUrl: new URL("./no-such-relay-worker.ts", import.meta.url) });
    cleanups.push(() => pool.close());
    pool.update("svc", [a.endpoint], { type: "None" });
    const first = await pool.listen({ key: "svc", protocol: "TCP", host: "127.0.0.1", port: 0, clientIPAffinity: false });
    const second = await pool.listen({ key: "svc2", protocol: "TCP", host: "127.0.0.1", port: 0, clientIPAffinity: false });
    cleanups.push(() => first.close({ closeActive: true }), () => second.close({ closeActive: true }));
    expect(await fetchName(first.port)).toBe("a");
    expect(logger.count("warn", "Relay threads are unavailable")).toBe(1);
  });

  test("relay threads: TCP relayed by the threads with the balancer's endpoints", async () => {
    const a = await startBackend(nameServer("a"));
    cleanups.push(() => a.close());
    const logger = new CaptureLogger();
    const pool = new RelayPool({ threads: 2, logger });
    cleanups.push(() => pool.close());
    pool.update("svc", [a.endpoint], { type: "None" });
    const relay = await pool.listen({ key: "svc", protocol: "TCP", host: "127.0.0.1", port: 0, clientIPAffinity: false });
    cleanups.push(() => relay.close({ closeActive: true }));
    for (let i = 0; i < 4; i++) expect(await fetchName(relay.port)).toBe("a");
    expect(relay.stats().total).toBe(4);
    expect(logger.count("warn", "Relay threads are unavailable")).toBe(0);
  });

  test("relay threads: stale ClientIP affinity records are swept in every thread, not only on the main thread", async () => {
    const a = await startBackend(nameServer("a"));
    cleanups.push(() => a.close());
    const pool = new RelayPool({ threads: 2, logger: new CaptureLogger() });
    cleanups.push(() => pool.close());
    pool.update("svc", [a.endpoint], { type: "ClientIP", timeoutSeconds: 1 });
    const relay = await pool.listen({ key: "svc", protocol: "TCP", host: "127.0.0.1", port: 0, clientIPAffinity: true });
    cleanups.push(() => relay.close({ closeActive: true }));
    expect(await fetchName(relay.port)).toBe("a");
    expect(await pool.affinityRecords()).toBe(1);
    // The record goes stale after its one-second timeout; each sweep (one per sync) should then drop it.
    const deadline = Date.now() + 4000;
    let records = 1;
    while (records > 0 && Date.now() < deadline) {
      pool.cleanupStaleAffinity();
      records = await pool.affinityRecords();
      if (records > 0) await Bun.sleep(50);
    }
    expect(records).toBe(0);
  });
});

