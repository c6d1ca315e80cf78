/**
 * Runs inside the guest (see test/e2e/ipvs.test.ts): the ipvs mode end to end with real packets.
 * kproxy runs in the node namespace of the e2e topology (test/e2e/topology.ts) with a
 * --services-file manifest this script rewrites; probe agents in the node, client and pod
 * namespaces make the connections. Each scenario prints one JSON line
 * `{"scenario": name, "detail": {...}}` (or `"error"`) with what it observed; the host test makes
 * the assertions. The guest is thrown away afterwards, so this changes the guest freely.
 */
import { mkdir, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { bunExec, runChecked } from "../../../../src/system/exec.ts";
import type { Netns } from "../../../helpers/netns.ts";
import { Child } from "../../../helpers/process.ts";
import { createTopology, NODE_IP, type Pod, type Topology, UDP_PORT } from "../../topology.ts";
import { manifest, NODE_NAME, type Svc, tally } from "../../manifest.ts";
import { HTTP_GET } from "../../probe.ts";

const ROOT = join(import.meta.dir, "../../../..");
/** kproxy's entry point: src/main.ts, or a bundle of it (KPROXY_MAIN), which starts several times faster under emulation. */
const MAIN = process.env["KPROXY_MAIN"] ?? join(ROOT, "src/main.ts");
const DIR = "/tmp/kproxy-ipvs-e2e";
const started = performance.now();
const phases: Record<string, number> = {};

function report(scenario: string, detail: unknown): void {
  phases[scenario] = Math.round(performance.now() - started);
  console.log(JSON.stringify({ scenario, detail }));
}

async function scenario(name: string, fn: () => Promise<unknown>): Promise<void> {
  try {
    report(name, await fn());
  } catch (err) {
    phases[name] = Math.round(performance.now() - started);
    console.log(JSON.stringify({ scenario: name, error: err instanceof Error ? err.stack ?? err.message : String(err) }));
  }
}

/** Polls every 200 ms (each poll spawns a process, slow under emulation) until `fn` gives a value. */
async function poll<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await Bun.sleep(200);
  }
}

/**
 * A long-lived probe in a namespace (starting Bun is slow under emulation, so each namespace gets
 * one): JSON commands on stdin, one JSON answer per line on stdout.
 */
const PROBE =
  HTTP_GET +
  String.raw`
const get = (host, port) => httpGet(host, port, "/", 2000);
for await (const line of console) {
  const c = JSON.parse(line);
  let out;
  if (c.op === "http") {
    out = [];
    for (let i = 0; i < c.count; i++) { const t = Date.now(); out.push(await get(c.host, c.port)); if (c.timed) out[out.length - 1] += " " + (Date.now() - t); }
  } else if (c.op === "load") {
    const until = Date.now() + c.ms;
    let ok = 0; const failures = [];
    while (Date.now() < until) { const r = await get(c.host, c.port); if (r.startsWith("ERR")) failures.push(r); else ok++; }
    out = { ok, failures };
  } else if (c.op === "udp") {
    const answers = [];
    const sock = await Bun.udpSocket({ port: c.srcPort, socket: { data(s, d) { answers.push(new TextDecoder().decode(d)); } } });
    for (let i = 0; i < c.count; i++) { sock.send("ping", c.port, c.host); await Bun.sleep(100); }
    await Bun.sleep(300);
    sock.close();
    out = answers;
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}
`;

/**
 * Holds TCP connections open and ends them with a reset (SO_LINGER 0), so IPVS keeps no TIME_WAIT
 * entry (two minutes, not tunable) and a drained real server can be deleted within seconds.
 */
const DRAIN_CLIENT = String.raw`
import socket, struct, sys
def request(s):
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk: return "ERR:closed"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"): length = int(line.split(b":")[1])
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk: break
        body += chunk
    return body.decode()
def reset(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
held = None
for line in sys.stdin:
    words = line.split()
    try:
        if words[0] == "open":
            held = socket.create_connection((words[1], int(words[2])), timeout=3)
            out = request(held)
        elif words[0] == "again":
            out = request(held)
        elif words[0] == "reset":
            reset(held); out = "reset"
        elif words[0] == "oneshot":
            s = socket.create_connection((words[1], int(words[2])), timeout=3)
            out = request(s); reset(s)
    except Exception as e:
        out = "ERR:" + type(e).__name__
    print(out, flush=True)
`;

class Agent {
  private readonly proc;
  private buffer = "";
  private readonly reader;

  constructor(ns: Netns, argv: string[]) {
    this.proc = Bun.spawn(["ip", "netns", "exec", ns.name, ...argv], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
    this.reader = (this.proc.stdout as ReadableStream<Uint8Array>).getReader();
  }

  async ask(line: string, timeoutMs = 30_000): Promise<string> {
    this.proc.stdin.write(`${line}\n`);
    this.proc.stdin.flush();
    const deadline = Date.now() + timeoutMs;
    const decoder = new TextDecoder();
    while (!this.buffer.includes("\n")) {
      if (Date.now() > deadline) throw new Error(`agent gave no answer to ${line}`);
      const chunk = await this.reader.read();
      if (chunk.done) throw new Error(`agent ended before answering ${line}`);
      this.buffer += decoder.decode(chunk.value);
    }
    const i = this.buffer.indexOf("\n");
    const answer = this.buffer.slice(0, i);
    this.buffer = this.buffer.slice(i + 1);
    return answer;
  }

  async json<T>(command: object): Promise<T> {
    return JSON.parse(await this.ask(JSON.stringify(command))) as T;
  }

  stop(): void {
    this.proc.kill("SIGKILL");
  }
}

const CONFIG = [
  "apiVersion: kubeproxy.config.k8s.io/v1alpha1",
  "kind: KubeProxyConfiguration",
  "mode: ipvs",
  `hostnameOverride: ${NODE_NAME}`,
  "clusterCIDR: 10.244.0.0/16",
  "healthzBindAddress: 127.0.0.1:10256",
  "metricsBindAddress: 127.0.0.1:10249",
  "conntrack: { maxPerCore: 0 }",
  "iptables: { flavour: nft }",
  "ipvs: { syncPeriod: 2s, minSyncPeriod: 0s, excludeCIDRs: [10.99.0.0/16], tcpTimeout: 900s, tcpFinTimeout: 30s, udpTimeout: 300s }",
  "",
].join("\n");

async function main(): Promise<void> {
  await mkdir(DIR, { recursive: true });
  await writeFile(join(DIR, "probe.ts"), PROBE);
  await writeFile(join(DIR, "drain-client.py"), DRAIN_CLIENT);
  await writeFile(join(DIR, "config.yaml"), CONFIG);
  const topo: Topology = await createTopology(3);
  const [p0, p1, p2] = topo.pods as [Pod, Pod, Pod];
  const node = topo.node;
  const nodeRun = (...argv: string[]) => node.run(argv);
  const save = () => nodeRun("ipvsadm", "-S", "-n");
  report("setup", { pods: topo.pods.map((p) => p.ip) });

  const base = (): Svc[] => [
    { name: "web", clusterIP: "10.96.0.10", type: "NodePort", nodePort: 30080, endpoints: [p0.ip, p1.ip, p2.ip] },
    { name: "sticky", clusterIP: "10.96.0.11", affinity: true, endpoints: [p0.ip, p1.ip, p2.ip] },
    { name: "empty", clusterIP: "10.96.0.13", endpoints: [] },
    { name: "dns", clusterIP: "10.96.0.53", port: 53, protocol: "UDP", targetPort: UDP_PORT, endpoints: [p0.ip] },
    { name: "drain", clusterIP: "10.96.0.20", endpoints: [p0.ip, p1.ip] },
  ];
  let services = base();
  const publish = async (next: Svc[]) => {
    services = next;
    await writeFile(join(DIR, "services.tmp"), manifest(next));
    await rename(join(DIR, "services.tmp"), join(DIR, "services.yaml"));
  };
  await publish(services);

  // A virtual server kproxy does not own, inside excludeCIDRs: no sync or cleanup may touch it.
  await runChecked(node.exec, ["ipvsadm", "-R"], { stdin: "-A -t 10.99.0.1:80 -s wrr\n-a -t 10.99.0.1:80 -r 10.244.1.99:80 -m -w 3\n" });

  const startKproxy = () =>
    new Child(
      ["ip", "netns", "exec", node.name, process.execPath, MAIN, "--config", join(DIR, "config.yaml"), "--services-file", join(DIR, "services.yaml"), "--v=3"],
      { cwd: ROOT },
    );
  const probeArgv = [process.execPath, join(DIR, "probe.ts")];
  const agents = {
    node: new Agent(node, probeArgv),
    client: new Agent(topo.client, probeArgv),
    pod: new Agent(p1.ns, probeArgv),
    drain: new Agent(topo.client, ["python3", "-u", join(DIR, "drain-client.py")]),
  };
  let kproxy = startKproxy();
  const http = async (agent: Agent, host: string, port: number, count: number) => agent.json<string[]>({ op: "http", host, port, count });
  try {
    await kproxy.waitFor(/Synced proxy rules/, 60_000);
    report("started", { syncedAfterMs: Math.round(performance.now() - started) });

    await scenario("kernel state", async () => {
      const link = JSON.parse(await nodeRun("ip", "-j", "addr", "show", "dev", "kube-ipvs0")) as { flags: string[]; operstate: string; link_type: string; addr_info: { local: string }[] }[];
      const sets = await nodeRun("ipset", "save");
      return {
        save: await save(),
        dummy: { flags: link[0]?.flags, addresses: link[0]?.addr_info.map((a) => a.local).sort() },
        setNames: [...sets.matchAll(/^create (\S+) (\S+)/gm)].map((m) => `${m[1]} ${m[2]}`).sort(),
        clusterIPMembers: [...sets.matchAll(/^add KUBE-CLUSTER-IP (\S+)/gm)].map((m) => m[1]).sort(),
        nodePortMembers: [...sets.matchAll(/^add KUBE-NODE-PORT-TCP (\S+)/gm)].map((m) => m[1]),
        loopBackMembers: [...sets.matchAll(/^add KUBE-LOOP-BACK (\S+)/gm)].map((m) => m[1]).sort(),
        ipvsIPs: [...sets.matchAll(/^add KUBE-IPVS-IPS (\S+)/gm)].map((m) => m[1]).sort(),
        nat: await nodeRun("iptables-nft-save", "-t", "nat"),
        filter: await nodeRun("iptables-nft-save", "-t", "filter"),
        sysctls: Object.fromEntries(
          await Promise.all(
            ["vs/conntrack", "vs/expire_nodest_conn", "vs/expire_quiescent_template", "ip_forward"].map(async (k) => [k, (await nodeRun("cat", `/proc/sys/net/ipv4/${k}`)).trim()]),
          ),
        ),
        timeouts: (await nodeRun("ipvsadm", "-L", "-n", "--timeout")).trim(),
      };
    });

    await scenario("ClusterIP from the node", async () => tally(await http(agents.node, "10.96.0.10", 80, 30)));
    await scenario("ClusterIP from a pod", async () => tally(await http(agents.pod, "10.96.0.10", 80, 15)));
    await scenario("NodePort from the client", async () => tally(await http(agents.client, NODE_IP, 30080, 30)));
    await scenario("affinity", async () => tally(await http(agents.client, "10.96.0.11", 80, 20)));
    await scenario("no endpoints", async () => {
      const t = Date.now();
      const bodies = await http(agents.node, "10.96.0.13", 80, 1);
      return { bodies, ms: Date.now() - t };
    });
    await scenario("UDP", async () => agents.client.json<string[]>({ op: "udp", host: "10.96.0.53", port: 53, srcPort: 40000, count: 5 }));

    // Graceful termination: a connection is held to one endpoint of "drain" while it is removed.
    let drainedIP = "";
    let resetAt = 0;
    await scenario("graceful termination", async () => {
      const held = await agents.drain.ask("open 10.96.0.20 80");
      const pod = topo.pods.find((p) => p.name === held);
      if (!pod) throw new Error(`held connection answered ${held}`);
      drainedIP = pod.ip;
      const other = pod === p0 ? p1 : p0;
      const rsLine = (w: number) => `-a -t 10.96.0.20:80 -r ${pod.ip}:8080 -m -w ${w}`;
      const withDrain = (endpoints: string[]) => services.map((s) => (s.name === "drain" ? { ...s, endpoints } : s));
      const without = () => withDrain([other.ip]);
      await publish(without());
      const t0 = Date.now();
      const drainedSave = await poll("weight 0", async () => ((await save()).includes(rsLine(0)) ? save() : undefined), 10_000);
      const weightZeroMs = Date.now() - t0;
      const newConnections: string[] = [];
      for (let i = 0; i < 4; i++) newConnections.push(await agents.drain.ask("oneshot 10.96.0.20 80"));
      const heldAgain = await agents.drain.ask("again");
      const whileConnected = await save();
      // The endpoint comes back while draining: weight 1 again.
      await publish(withDrain([p0.ip, p1.ip]));
      const restoredSave = await poll("weight 1", async () => ((await save()).includes(rsLine(1)) ? save() : undefined), 10_000);
      await publish(without());
      await poll("weight 0 again", async () => ((await save()).includes(rsLine(0)) ? true : undefined), 10_000);
      await agents.drain.ask("reset");
      resetAt = Date.now();
      return { held, other: other.name, weightZeroMs, drainedSave, newConnections, heldAgain, restoredSave, whileConnected };
    });

    await scenario("service deletion", async () => {
      await publish(services.filter((s) => s.name !== "sticky"));
      const gone = await poll("sticky to go", async () => ((await save()).includes("10.96.0.11:80") ? undefined : true), 10_000);
      return {
        gone,
        save: await save(),
        dummy: await nodeRun("ip", "-o", "addr", "show", "dev", "kube-ipvs0"),
        clusterIPSet: await nodeRun("ipset", "save", "KUBE-CLUSTER-IP"),
      };
    });

    const withoutDrain = (text: string) => text.split("\n").filter((l) => !l.includes(" 10.96.0.20:80 ")).join("\n");
    await scenario("restart without drops", async () => {
      const before = await save();
      const load = agents.client.json<{ ok: number; failures: string[] }>({ op: "load", host: NODE_IP, port: 30080, ms: 6000 });
      kproxy.kill("SIGTERM");
      const stopCode = await kproxy.exited(20_000);
      kproxy = startKproxy();
      await kproxy.waitFor(/Synced proxy rules/, 60_000);
      const firstSync = kproxy.stderr.match(/.*Synced ipvs \(full\).*/)?.[0] ?? "";
      const result = await load;
      return {
        stopCode,
        firstSync,
        load: result,
        // The "drain" service may lose its drained real server at any moment (its connection ended), so it is left out.
        sameVirtualServers: withoutDrain(before) === withoutDrain(await save()),
        preroutingJumps: ((await nodeRun("iptables-nft", "-t", "nat", "-S", "PREROUTING")).match(/KUBE-SERVICES/g) ?? []).length,
        inputJumps: (await nodeRun("iptables-nft", "-t", "filter", "-S", "INPUT")).split("\n").filter((l) => l.includes("KUBE-")).length,
      };
    });

    // Checked after the restart: the new kproxy takes the draining server over and deletes it.
    await scenario("drained real server deleted", async () => {
      if (drainedIP === "") throw new Error("graceful termination did not run");
      const rs = `-r ${drainedIP}:8080`;
      await poll("the drained real server to go", async () => ((await save()).split("\n").some((l) => l.startsWith("-a -t 10.96.0.20:80") && l.includes(rs)) ? undefined : true), 30_000);
      return { deletedAfterResetMs: Date.now() - resetAt, save: await save() };
    });

    await scenario("cleanup", async () => {
      kproxy.kill("SIGTERM");
      await kproxy.exited(20_000);
      const cleanup = new Child(["ip", "netns", "exec", node.name, process.execPath, MAIN, "--cleanup"], { cwd: ROOT });
      const code = await cleanup.exited(60_000);
      const again = new Child(["ip", "netns", "exec", node.name, process.execPath, MAIN, "--cleanup"], { cwd: ROOT });
      const secondCode = await again.exited(60_000);
      const link = await node.exec.run(["ip", "link", "show", "kube-ipvs0"]);
      return {
        code,
        secondCode,
        stderr: cleanup.stderr.slice(-2000),
        save: await save(),
        sets: await nodeRun("ipset", "list", "-n"),
        dummyExists: link.code === 0,
        kubeChains: (await nodeRun("iptables-nft-save")).split("\n").filter((l) => /^:KUBE-|KUBE-/.test(l)),
        afterCleanup: await http(agents.client, NODE_IP, 30080, 1),
      };
    });
  } finally {
    kproxy.kill("SIGKILL");
    for (const agent of Object.values(agents)) agent.stop();
    if (kproxy.stderr) await writeFile(join(DIR, "kproxy.log"), kproxy.stderr);
    console.log(JSON.stringify({ scenario: "phases", detail: phases, kproxyLogTail: kproxy.stderr.slice(-3000) }));
    await topo.destroy().catch(() => {});
    await bunExec.run(["true"]);
  }
}

await main();
process.exit(0);
