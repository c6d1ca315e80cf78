import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultRuleOptions } from "../../../src/backends/iptables/options.ts";
import { IpvsBackend, type IpvsBackendOptions, ipvsUnavailableReason } from "../../../src/backends/ipvs/backend.ts";
import { cleanupIpvs } from "../../../src/backends/ipvs/cleanup.ts";
import { createLogger } from "../../../src/log.ts";
import { createMetrics } from "../../../src/metrics.ts";
import type { ChangeSet, Endpoint, ServicePort, Snapshot } from "../../../src/model/types.ts";
import type { StartedCommand, StreamingExec } from "../../../src/system/ipvs.ts";
import type { Sysctl } from "../../../src/system/sysctl.ts";
import { FakeClock } from "../../helpers/fake-clock.ts";
import { Child } from "../../helpers/process.ts";
import { needs } from "../../helpers/require.ts";
import { endpoint, servicePort, snapshot, testNode } from "../iptables/helpers.ts";
import { FakeKernel } from "./fake-kernel.ts";

const logger = createLogger({ write: () => {} });

/** The fake kernel behind a streaming Exec: a started `ipvsadm -R` applies its input when finished. */
class StreamingKernel extends FakeKernel implements StreamingExec {
  /** The input each started command got. */
  readonly started: string[] = [];
  start(argv: readonly string[]): StartedCommand {
    let stdin = "";
    return {
      write: (text) => {
        stdin += text;
      },
      finish: async () => {
        this.started.push(stdin);
        return this.run(argv, { stdin });
      },
    };
  }
}

function fakeSysctl(): Sysctl & { values: Map<string, string> } {
  const values = new Map<string, string>();
  return {
    values,
    get: async (name) => values.get(name),
    set: async (name, value) => {
      values.set(name, String(value));
    },
  };
}

function backend(kernel: FakeKernel, overrides: Partial<IpvsBackendOptions> = {}) {
  const sysctl = fakeSysctl();
  const b = new IpvsBackend({
    exec: kernel,
    clock: new FakeClock(0),
    logger,
    metrics: createMetrics({ mode: "ipvs" }),
    flavour: "nft",
    ruleOptions: { ...defaultRuleOptions, clusterCIDRs: ["10.0.0.0/8"] },
    nodePortAddresses: [],
    scheduler: "",
    excludeCIDRs: ["10.99.0.0/16"],
    strictARP: true,
    timeouts: { tcp: 900, tcpFin: 0, udp: 0 },
    sysctl,
    ...overrides,
  });
  return { backend: b, sysctl };
}

const full: ChangeSet = { changed: new Set(), full: true, triggerTimes: [] };
const partial = (...keys: string[]): ChangeSet => ({ changed: new Set(keys), full: false, triggerTimes: [] });

const web = servicePort("ns", "web", "http", { clusterIP: "10.96.0.10", port: 80, type: "NodePort", nodePort: 30080 });
const dns = servicePort("ns", "dns", "dns", { clusterIP: "10.96.0.53", port: 53, protocol: "UDP" });
const sticky = servicePort("ns", "sticky", "", { clusterIP: "10.96.0.11", port: 80, sessionAffinity: { type: "ClientIP", timeoutSeconds: 600 } });
const eps = (...ips: string[]): Endpoint[] => ips.map((ip) => endpoint(ip, 8080, { isLocal: true }));

function cluster(entries: [ServicePort, Endpoint[]][]): Snapshot {
  return snapshot(entries, testNode);
}

describe("IpvsBackend", () => {
  test("the first sync creates kube-ipvs0, virtual servers, sets, addresses, rules and sysctls", async () => {
    const kernel = new FakeKernel();
    const { backend: b, sysctl } = backend(kernel);
    const result = await b.sync(cluster([[web, eps("10.1.0.1", "10.1.0.2")], [dns, eps("10.1.0.1")], [sticky, []]]), full);
    expect(result).toMatchObject({ servicePorts: 3, partial: false });
    const save = kernel.saveIpvs();
    expect(save).toContain("-A -t 10.96.0.10:80 -s rr\n-a -t 10.96.0.10:80 -r 10.1.0.1:8080 -m -w 1\n-a -t 10.96.0.10:80 -r 10.1.0.2:8080 -m -w 1\n");
    // NodePort on the node's non-loopback IPv4 address only
    expect(save).toContain("-A -t 192.168.0.2:30080 -s rr\n");
    expect(save).not.toContain("127.0.0.1:30080");
    expect(save).toContain("-A -u 10.96.0.53:53 -s rr\n");
    expect(save).toContain("-A -t 10.96.0.11:80 -s rr -p 600\n");
    expect(kernel.links.get("kube-ipvs0")?.sort()).toEqual(["10.96.0.10", "10.96.0.11", "10.96.0.53"]);
    expect(kernel.sets.get("KUBE-CLUSTER-IP")?.entries.sort()).toEqual(["10.96.0.10,tcp:80", "10.96.0.11,tcp:80", "10.96.0.53,udp:53"]);
    expect(kernel.sets.get("KUBE-NODE-PORT-TCP")).toMatchObject({ type: "bitmap:port", entries: ["30080"] });
    expect(kernel.sets.get("KUBE-LOOP-BACK")?.entries.sort()).toEqual(["10.1.0.1,tcp:8080,10.1.0.1", "10.1.0.1,udp:8080,10.1.0.1", "10.1.0.2,tcp:8080,10.1.0.2"]);
    expect(kernel.sets.get("KUBE-IPVS-IPS")?.entries.sort()).toEqual(["10.96.0.10", "10.96.0.11", "10.96.0.53"]);
    expect(kernel.sets.size).toBe(17);
    expect(kernel.restores[0]).toContain("-A KUBE-NODE-PORT -p tcp -m comment --comment \"Kubernetes nodeport TCP port for masquerade purpose\" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ");
    expect(kernel.rules).toContain('nat/PREROUTING -m comment --comment kubernetes service portals -j KUBE-SERVICES');
    expect(kernel.rules.size).toBe(9);
    expect(Object.fromEntries(sysctl.values)).toEqual({
      "net.ipv4.vs.conntrack": "1",
      "net.ipv4.vs.expire_nodest_conn": "1",
      "net.ipv4.vs.expire_quiescent_template": "1",
      "net.ipv4.ip_forward": "1",
      "net.ipv4.conf.all.arp_ignore": "1",
      "net.ipv4.conf.all.arp_announce": "2",
    });
    expect(kernel.timeouts).toBe("900 0 0");
    await b.close();
  });

  test("a full sync of an unchanged cluster writes nothing; a one-endpoint change is one short batch and reads nothing", async () => {
    const kernel = new FakeKernel();
    const { backend: b } = backend(kernel);
    await b.sync(cluster([[web, eps("10.1.0.1", "10.1.0.2")], [dns, eps("10.1.0.1")]]), full);
    kernel.clearCalls();
    await b.sync(cluster([[web, eps("10.1.0.1", "10.1.0.2")], [dns, eps("10.1.0.1")]]), full);
    expect(kernel.callsOf("ipvsadm", "-R")).toEqual([]);
    expect(kernel.callsOf("ipset", "restore")).toEqual([]);
    expect(kernel.callsOf("ip", "-batch")).toEqual([]);

    kernel.clearCalls();
    const result = await b.sync(cluster([[web, eps("10.1.0.1", "10.1.0.2", "10.1.0.3")], [dns, eps("10.1.0.1")]]), partial(web.key));
    expect(result).toMatchObject({ partial: true, servicePorts: 2, endpoints: 4 });
    // nothing is read back and nothing else is spawned: one ipset batch and one ipvsadm batch
    expect(kernel.calls.map((c) => c.argv.slice(0, 2).join(" "))).toEqual(["ipvsadm -R", "ipset restore"]);
    expect(kernel.callsOf("ipvsadm", "-R").map((c) => c.stdin)).toEqual([
      "-a -t 10.96.0.10:80 -r 10.1.0.3:8080 -m -w 1\n-a -t 192.168.0.2:30080 -r 10.1.0.3:8080 -m -w 1\n",
    ]);
    expect(kernel.callsOf("ipset", "restore").map((c) => c.stdin)).toEqual(["add KUBE-LOOP-BACK 10.1.0.3,tcp:8080,10.1.0.3 -exist\n"]);
    // the set was not empty before, so the companion rules are unchanged and not rewritten
    expect(kernel.callsOf("iptables-nft-restore")).toEqual([]);
    await b.close();
  });

  test("graceful termination: weight 0 while connected, deleted when idle, restored when the endpoint returns; UDP at once", async () => {
    const kernel = new FakeKernel();
    const { backend: b } = backend(kernel);
    await b.sync(cluster([[web, eps("10.1.0.1", "10.1.0.2")], [dns, eps("10.1.0.1", "10.1.0.2")]]), full);
    (kernel.real("tcp 10.96.0.10:80", "10.1.0.2:8080") as { active: number }).active = 2;

    await b.sync(cluster([[web, eps("10.1.0.1")], [dns, eps("10.1.0.1")]]), partial(web.key, dns.key));
    await b.checkDraining();
    expect(kernel.real("tcp 10.96.0.10:80", "10.1.0.2:8080")?.weight).toBe(0);
    // the NodePort server had no connections: deleted right after its weight went to 0
    expect(kernel.real("tcp 192.168.0.2:30080", "10.1.0.2:8080")).toBeUndefined();
    expect(kernel.real("udp 10.96.0.53:53", "10.1.0.2:8080")).toBeUndefined();
    expect(b.drainingCount).toBe(1);

    // a periodic full sync keeps the draining server at weight 0
    await b.sync(cluster([[web, eps("10.1.0.1")], [dns, eps("10.1.0.1")]]), full);
    expect(kernel.real("tcp 10.96.0.10:80", "10.1.0.2:8080")?.weight).toBe(0);

    // the endpoint comes back: weight 1, no longer draining
    await b.sync(cluster([[web, eps("10.1.0.1", "10.1.0.2")], [dns, eps("10.1.0.1")]]), partial(web.key));
    expect(kernel.real("tcp 10.96.0.10:80", "10.1.0.2:8080")?.weight).toBe(1);
    expect(b.drainingCount).toBe(0);

    await b.sync(cluster([[web, eps("10.1.0.1")], [dns, eps("10.1.0.1")]]), partial(web.key));
    await b.checkDraining();
    expect(kernel.real("tcp 10.96.0.10:80", "10.1.0.2:8080")?.weight).toBe(0);
    (kernel.real("tcp 10.96.0.10:80", "10.1.0.2:8080") as { active: number; inactive: number }).active = 0;
    (kernel.real("tcp 10.96.0.10:80", "10.1.0.2:8080") as { active: number; inactive: number }).inactive = 1;
    expect(await b.checkDraining()).toBe(0);
    (kernel.real("tcp 10.96.0.10:80", "10.1.0.2:8080") as { inactive: number }).inactive = 0;
    expect(await b.checkDraining()).toBe(1);
    expect(kernel.real("tcp 10.96.0.10:80", "10.1.0.2:8080")).toBeUndefined();
    // later syncs know it is gone: nothing to write
    kernel.clearCalls();
    await b.sync(cluster([[web, eps("10.1.0.1")], [dns, eps("10.1.0.1")]]), full);
    expect(kernel.callsOf("ipvsadm", "-R")).toEqual([]);
    await b.close();
  });

  test("the drain timer deletes idle servers between syncs", async () => {
    const kernel = new FakeKernel();
    const clock = new FakeClock(0);
    const { backend: b } = backend(kernel, { clock, drainCheckIntervalMs: 5000 });
    await b.sync(cluster([[web, eps("10.1.0.1", "10.1.0.2")]]), full);
    (kernel.real("tcp 10.96.0.10:80", "10.1.0.2:8080") as { active: number }).active = 1;
    await b.sync(cluster([[web, eps("10.1.0.1")]]), partial(web.key));
    await b.checkDraining();
    expect(b.drainingCount).toBe(1);
    (kernel.real("tcp 10.96.0.10:80", "10.1.0.2:8080") as { active: number }).active = 0;
    await clock.advance(5000);
    for (let i = 0; i < 50 && b.drainingCount > 0; i++) await Bun.sleep(1);
    expect(b.drainingCount).toBe(0);
    expect(kernel.real("tcp 10.96.0.10:80", "10.1.0.2:8080")).toBeUndefined();
    await b.close();
  });

  test("deleting a service removes its virtual servers, addresses and set members", async () => {
    const kernel = new FakeKernel();
    const { backend: b } = backend(kernel);
    await b.sync(cluster([[web, eps("10.1.0.1")], [sticky, eps("10.1.0.1")]]), full);
    await b.sync(cluster([[web, eps("10.1.0.1")]]), partial(sticky.key));
    expect(kernel.saveIpvs()).not.toContain("10.96.0.11");
    expect(kernel.links.get("kube-ipvs0")).toEqual(["10.96.0.10"]);
    expect(kernel.sets.get("KUBE-CLUSTER-IP")?.entries).toEqual(["10.96.0.10,tcp:80"]);
    expect(kernel.sets.get("KUBE-IPVS-IPS")?.entries).toEqual(["10.96.0.10"]);
    // the shared loopback member stays while web still uses that endpoint
    expect(kernel.sets.get("KUBE-LOOP-BACK")?.entries).toEqual(["10.1.0.1,tcp:8080,10.1.0.1"]);
    await b.close();
  });

  test("a restart takes the kernel state over without writing, and owns only what is kproxy's", async () => {
    const kernel = new FakeKernel();
    const first = backend(kernel).backend;
    await first.sync(cluster([[web, eps("10.1.0.1", "10.1.0.2")]]), full);
    await first.close();
    // someone else's servers: one in excludeCIDRs, one on an address kproxy never used
    await kernel.run(["ipvsadm", "-R"], { stdin: "-A -t 10.99.0.1:80 -s rr\n-A -t 172.16.0.1:80 -s rr\n" });
    // a stale server of kproxy's: its address is still on kube-ipvs0
    await kernel.run(["ipvsadm", "-R"], { stdin: "-A -t 10.96.0.10:81 -s rr\n" });
    kernel.clearCalls();
    const second = backend(kernel).backend;
    await second.sync(cluster([[web, eps("10.1.0.1", "10.1.0.2")]]), full);
    expect(kernel.callsOf("ipvsadm", "-R").map((c) => c.stdin)).toEqual(["-D -t 10.96.0.10:81\n"]);
    expect(kernel.callsOf("ipset", "restore")).toEqual([]);
    expect(kernel.callsOf("ip", "-batch")).toEqual([]);
    expect(kernel.callsOf("iptables-nft", "-I")).toEqual([]);
    expect(kernel.saveIpvs()).toContain("-A -t 10.99.0.1:80 -s rr");
    expect(kernel.saveIpvs()).toContain("-A -t 172.16.0.1:80 -s rr");
    await second.close();
  });

  test("a full sync reads the table from /proc/net/ip_vs (persistence in jiffies) and finds nothing to write", async () => {
    const kernel = new FakeKernel();
    const { backend: b } = backend(kernel);
    const state = cluster([[web, eps("10.1.0.1", "10.1.0.2")], [sticky, eps("10.1.0.3")]]);
    await b.sync(state, full);
    kernel.clearCalls();
    await b.sync(state, full);
    await b.sync(state, full);
    expect(kernel.callsOf("cat", "/proc/net/ip_vs")).toHaveLength(2);
    expect(kernel.callsOf("ipvsadm", "-S")).toEqual([]);
    // the kernel's HZ is learned once from one persistent service's seconds
    expect(kernel.callsOf("ipvsadm", "-L").map((c) => c.argv.join(" "))).toEqual(["ipvsadm -L -n -t 10.96.0.11:80"]);
    expect(kernel.callsOf("ipvsadm", "-R")).toEqual([]);
    await b.close();
  });

  test("a proc file that misses a virtual server the last sync wrote is not trusted: the full sync reads ipvsadm -S", async () => {
    const kernel = new FakeKernel();
    const { backend: b } = backend(kernel);
    const state = cluster([[web, eps("10.1.0.1")], [dns, eps("10.1.0.1")]]);
    await b.sync(state, full);
    kernel.procHides.add("udp 10.96.0.53:53");
    kernel.clearCalls();
    await b.sync(state, full);
    expect(kernel.callsOf("cat")).toHaveLength(1);
    expect(kernel.callsOf("ipvsadm", "-S")).toHaveLength(1);
    // the service the proc file left out is neither added again nor lost
    expect(kernel.callsOf("ipvsadm", "-R")).toEqual([]);
    await b.close();
  });

  test("with the mh scheduler, whose flags the proc file does not show, a full sync reads ipvsadm -S", async () => {
    const kernel = new FakeKernel();
    const { backend: b } = backend(kernel, { scheduler: "mh" });
    const state = cluster([[web, eps("10.1.0.1")]]);
    await b.sync(state, full);
    expect(kernel.saveIpvs()).toContain("-A -t 10.96.0.10:80 -s mh -b mh-port\n");
    kernel.clearCalls();
    await b.sync(state, full);
    expect(kernel.callsOf("ipvsadm", "-S")).toHaveLength(1);
    expect(kernel.callsOf("cat")).toEqual([]);
    expect(kernel.callsOf("ipvsadm", "-R")).toEqual([]);
    await b.close();
  });

  test("stale UDP flows of many services are deleted with one conntrack call", async () => {
    const kernel = new FakeKernel();
    const { backend: b } = backend(kernel);
    const dns2 = servicePort("ns", "dns2", "dns", { clusterIP: "10.96.0.54", port: 53, protocol: "UDP" });
    await b.sync(cluster([[dns, eps("10.1.0.1", "10.1.0.2")], [dns2, eps("10.1.0.1", "10.1.0.2")]]), full);
    await b.settled();
    kernel.clearCalls();
    await b.sync(cluster([[dns, eps("10.1.0.1")], [dns2, eps("10.1.0.1")]]), partial(dns.key, dns2.key));
    await b.settled();
    expect(kernel.callsOf("conntrack").map((c) => [c.argv.join(" "), c.stdin])).toEqual([
      ["conntrack -R -", "-D --orig-dst 10.96.0.53 --dst-nat 10.1.0.2 -p udp\n-D --orig-dst 10.96.0.54 --dst-nat 10.1.0.2 -p udp\n"],
    ]);
    await b.close();
  });

  test("with a streaming Exec a partial sync starts ipvsadm before planning and feeds it the batch", async () => {
    const kernel = new StreamingKernel();
    const { backend: b } = backend(kernel);
    await b.sync(cluster([[web, eps("10.1.0.1", "10.1.0.2")], [dns, eps("10.1.0.1")]]), full);
    kernel.clearCalls();
    await b.sync(cluster([[web, eps("10.1.0.1", "10.1.0.2", "10.1.0.3")], [dns, eps("10.1.0.1")]]), partial(web.key));
    expect(kernel.started).toEqual(["-a -t 10.96.0.10:80 -r 10.1.0.3:8080 -m -w 1\n-a -t 192.168.0.2:30080 -r 10.1.0.3:8080 -m -w 1\n"]);
    expect(kernel.real("tcp 10.96.0.10:80", "10.1.0.3:8080")?.weight).toBe(1);
    // a change that leaves the virtual servers alone lets the started tool go without input
    kernel.started.length = 0;
    await b.sync(cluster([[web, eps("10.1.0.1", "10.1.0.2", "10.1.0.3")], [dns, eps("10.1.0.1")]]), partial(web.key));
    expect(kernel.started).toEqual([""]);
    await b.close();
  });

  test("a failed batch makes the next sync full, which converges", async () => {
    const kernel = new FakeKernel();
    const { backend: b } = backend(kernel);
    await b.sync(cluster([[web, eps("10.1.0.1")]]), full);
    kernel.failNextIpvsBatch = true;
    await expect(b.sync(cluster([[web, eps("10.1.0.1", "10.1.0.2")]]), partial(web.key))).rejects.toThrow(/Memory allocation/);
    kernel.clearCalls();
    await b.sync(cluster([[web, eps("10.1.0.1", "10.1.0.2")]]), partial(web.key));
    // re-read in one piece from /proc/net/ip_vs, not with ipvsadm -S (once per virtual server)
    expect(kernel.callsOf("cat", "/proc/net/ip_vs")).toHaveLength(1);
    expect(kernel.callsOf("ipvsadm", "-S")).toEqual([]);
    expect(kernel.real("tcp 10.96.0.10:80", "10.1.0.2:8080")?.weight).toBe(1);
    await b.close();
  });

  test("--cleanup removes owned servers, sets, kube-ipvs0 and leaves foreign servers", async () => {
    const kernel = new FakeKernel();
    const { backend: b } = backend(kernel);
    await b.sync(cluster([[web, eps("10.1.0.1")], [dns, eps("10.1.0.1")]]), full);
    await b.close();
    await kernel.run(["ipvsadm", "-R"], { stdin: "-A -t 10.99.0.1:80 -s rr\n-A -t 192.168.0.2:22 -s rr\n" });
    const result = await cleanupIpvs({ exec: kernel, logger, iptables: false });
    expect(result).toEqual({ virtualServers: 3, ipsets: 17, dummyInterface: true });
    expect(kernel.saveIpvs()).toBe("-A -t 10.99.0.1:80 -s rr\n-A -t 192.168.0.2:22 -s rr\n");
    expect(kernel.sets.size).toBe(0);
    expect(kernel.links.has("kube-ipvs0")).toBe(false);
    expect(await cleanupIpvs({ exec: kernel, logger, iptables: false })).toEqual({ virtualServers: 0, ipsets: 0, dummyInterface: false });
  });
});

describe("ipvsUnavailableReason", () => {
  test("passes ipvsadm's words on, and nothing when IPVS works", () => {
    expect(ipvsUnavailableReason(() => ({ exitCode: 0, stderr: "" }))).toBeUndefined();
    expect(
      ipvsUnavailableReason(() => ({ exitCode: 2, stderr: "Can't initialize ipvs: Protocol not available\nAre you sure that IP Virtual Server is built in the kernel or as module?\n" })),
    ).toBe("Can't initialize ipvs: Protocol not available; Are you sure that IP Virtual Server is built in the kernel or as module?");
    expect(ipvsUnavailableReason(() => ({ exitCode: 127, stderr: "" }))).toBe("ipvsadm exited 127");
  });
});

// This machine kind's kernel has no IPVS: kproxy must refuse the mode loudly instead of falling back.
const noIpvs = needs(!existsSync("/proc/net/ip_vs") && ipvsUnavailableReason() !== undefined, "needs a kernel without IPVS");
describe("kproxy --proxy-mode ipvs without IPVS in the kernel", () => {
  noIpvs("says so and exits non-zero", async () => {
    const dir = await mkdtemp(join(tmpdir(), "kproxy-ipvs-"));
    try {
      await writeFile(join(dir, "services.yaml"), "");
      const child = new Child([process.execPath, join(import.meta.dir, "../../../src/main.ts"), "--proxy-mode", "ipvs", "--services-file", join(dir, "services.yaml"), "--healthz-bind-address", "127.0.0.1:0", "--metrics-bind-address", "127.0.0.1:0"]);
      expect(await child.exited(15_000)).toBe(1);
      expect(child.stderr).toContain("the ipvs mode needs IPVS in the kernel");
      expect(child.stderr).toContain("does not fall back to iptables");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("IpvsBackend companion rules", () => {
  test("a periodic full sync rewrites no rules while they are intact, and repairs them after a flush", async () => {
    const kernel = new FakeKernel();
    const { backend: b } = backend(kernel);
    await b.sync(cluster([[web, eps("10.1.0.1")]]), full);
    kernel.clearCalls();
    await b.sync(cluster([[web, eps("10.1.0.1")]]), full);
    expect(kernel.callsOf("iptables-nft-restore")).toEqual([]);
    expect(kernel.callsOf("iptables-nft-save")).toHaveLength(1);
    // someone deletes a jump: the next full sync puts it back
    await kernel.run(["iptables-nft", "-w", "5", "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"]);
    kernel.clearCalls();
    await b.sync(cluster([[web, eps("10.1.0.1")]]), full);
    expect(kernel.callsOf("iptables-nft-restore")).toHaveLength(1);
    expect(kernel.callsOf("iptables-nft", "-I").map((c) => c.argv.slice(3).join(" "))).toEqual(["-t nat -I PREROUTING -m comment --comment kubernetes service portals -j KUBE-SERVICES"]);
    await b.close();
  });
});
