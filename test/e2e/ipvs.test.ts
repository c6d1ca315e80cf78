/**
 * The ipvs mode with real packets, in a guest kernel that has IPVS: one boot runs
 * test/e2e/vm/guest/ipvs-e2e.ts, which prints one JSON line per scenario with what it observed;
 * each scenario becomes one test here, all fed from that single boot.
 */
import { beforeAll, describe, expect } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { needs } from "../helpers/require.ts";
import { guestAvailable, runInGuest } from "./vm/run.ts";

const guest = await guestAvailable();
const guestTest = needs(guest.ok, guest.ok ? "" : guest.reason);

interface Line {
  scenario: string;
  detail?: any;
  error?: string;
}

const results = new Map<string, Line>();
let failure: Error | undefined;

function detail(name: string): any {
  if (failure) throw failure;
  const line = results.get(name);
  if (!line) throw new Error(`the guest reported nothing for "${name}" (scenarios seen: ${[...results.keys()].join(", ")})`);
  if (line.error !== undefined) throw new Error(`scenario "${name}" failed in the guest:\n${line.error}`);
  return line.detail;
}

const PODS = ["pod0", "pod1", "pod2"];

describe("ipvs mode end to end (one guest boot)", () => {
  beforeAll(async () => {
    if (!guest.ok) return;
    // kproxy starts several times faster from one bundled file than from its sources under emulation
    // (about 2 s against 7–13 s here), and the scenarios start it four times.
    const share = await mkdtemp("/var/tmp/kproxy-ipvs-e2e-");
    try {
      const build = await Bun.build({ entrypoints: [join(import.meta.dir, "../../src/main.ts")], target: "bun", outdir: share, naming: "kproxy.js" });
      if (!build.success) throw new Error(`bundling kproxy failed: ${build.logs.map(String).join("\n")}`);
      const run = await runInGuest({
        command: [process.execPath, "test/e2e/vm/guest/ipvs-e2e.ts"],
        cwd: join(import.meta.dir, "../.."),
        env: { KPROXY_MAIN: join(share, "kproxy.js") },
        shareDir: share,
        timeoutMs: 300_000,
        memoryMb: 1024,
      });
      for (const text of run.stdout.split("\n")) {
        if (!text.startsWith("{")) continue;
        const line = JSON.parse(text) as Line;
        results.set(line.scenario, line);
      }
      const phases = results.get("phases");
      console.log(`guest: boot ${run.bootMs} ms, whole run ${Math.round(run.durationMs)} ms, phases ${JSON.stringify(phases?.detail)}`);
      if (run.code !== 0) failure = new Error(`guest script exited ${run.code}:\n${run.stderr.slice(-4000)}\n${(phases as any)?.kproxyLogTail ?? ""}`);
      if (!failure) await rm(share, { recursive: true, force: true });
    } catch (err) {
      failure = err as Error;
    }
  }, 320_000);

  guestTest("kproxy programs virtual servers, kube-ipvs0, ipsets, companion rules and sysctls", () => {
    const d = detail("kernel state");
    expect(d.save).toContain("-A -t 10.96.0.10:80 -s rr\n");
    for (const ip of ["10.244.1.10", "10.244.1.11", "10.244.1.12"]) expect(d.save).toContain(`-a -t 10.96.0.10:80 -r ${ip}:8080 -m -w 1\n`);
    expect(d.save).toContain("-A -t 172.30.0.1:30080 -s rr\n");
    expect(d.save).toContain("-A -t 10.96.0.11:80 -s rr -p 10800\n");
    expect(d.save).toContain("-A -u 10.96.0.53:53 -s rr\n");
    expect(d.save).toContain("-A -t 10.96.0.13:80 -s rr\n");
    // the excluded virtual server is untouched
    expect(d.save).toContain("-a -t 10.99.0.1:80 -r 10.244.1.99:80 -m -w 3\n");
    expect(d.dummy.flags).not.toContain("UP");
    expect(d.dummy.addresses).toEqual(["10.96.0.10", "10.96.0.11", "10.96.0.13", "10.96.0.20", "10.96.0.53"]);
    for (const set of ["KUBE-CLUSTER-IP hash:ip,port", "KUBE-LOOP-BACK hash:ip,port,ip", "KUBE-NODE-PORT-TCP bitmap:port", "KUBE-IPVS-IPS hash:ip", "KUBE-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net", "KUBE-HEALTH-CHECK-NODE-PORT bitmap:port", "KUBE-NODE-PORT-SCTP-HASH hash:ip,port"]) {
      expect(d.setNames).toContain(set);
    }
    expect(d.clusterIPMembers).toEqual(["10.96.0.10,tcp:80", "10.96.0.11,tcp:80", "10.96.0.13,tcp:80", "10.96.0.20,tcp:80", "10.96.0.53,udp:53"]);
    expect(d.nodePortMembers).toEqual(["30080"]);
    expect(d.loopBackMembers).toContain("10.244.1.10,tcp:8080,10.244.1.10");
    expect(d.ipvsIPs).toEqual(d.dummy.addresses);
    expect(d.nat).toContain("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES");
    // iptables-save prints the address match before the extensions
    expect(d.nat).toContain("-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ");
    expect(d.nat).toContain("-A KUBE-NODE-PORT -p tcp -m comment --comment \"Kubernetes nodeport TCP port for masquerade purpose\" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ");
    expect(d.filter).toContain("-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT");
    expect(d.filter).toContain("-A INPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-FILTER");
    expect(d.sysctls).toEqual({ "vs/conntrack": "1", "vs/expire_nodest_conn": "1", "vs/expire_quiescent_template": "1", ip_forward: "1" });
    expect(d.timeouts).toBe("Timeout (tcp tcpfin udp): 900 30 300");
  });

  guestTest("ClusterIP from the node reaches every endpoint, round robin", () => {
    const d = detail("ClusterIP from the node");
    expect(Object.keys(d).sort()).toEqual(PODS);
    // rr over three real servers: 30 connections split evenly
    expect(Object.values(d)).toEqual([10, 10, 10]);
  });

  guestTest("ClusterIP from a pod on the node's bridge", () => {
    const d = detail("ClusterIP from a pod");
    expect(Object.keys(d).filter((k) => k.startsWith("ERR"))).toEqual([]);
    expect(Object.values(d as Record<string, number>).reduce((a, b) => a + b, 0)).toBe(15);
  });

  guestTest("NodePort from the client spreads over every endpoint", () => {
    const d = detail("NodePort from the client");
    expect(Object.keys(d).sort()).toEqual(PODS);
    expect(Object.values(d)).toEqual([10, 10, 10]);
  });

  guestTest("ClientIP affinity keeps a client on one endpoint", () => {
    const d = detail("affinity");
    expect(Object.keys(d)).toHaveLength(1);
    expect(PODS).toContain(Object.keys(d)[0] ?? "");
  });

  guestTest("a service without endpoints refuses at once", () => {
    const d = detail("no endpoints");
    expect(d.bodies).toEqual(["ERR:ECONNREFUSED"]);
    expect(d.ms).toBeLessThan(1500);
  });

  guestTest("UDP through a virtual server", () => {
    const d = detail("UDP") as string[];
    expect(d.length).toBeGreaterThanOrEqual(3);
    for (const answer of d) expect(answer).toStartWith("pod0 ");
  });

  guestTest("graceful termination: weight 0 while connected, no new connections, restored when the endpoint returns", () => {
    const d = detail("graceful termination");
    const heldIP = d.held === "pod0" ? "10.244.1.10" : "10.244.1.11";
    expect(d.drainedSave).toContain(`-a -t 10.96.0.20:80 -r ${heldIP}:8080 -m -w 0\n`);
    expect(d.weightZeroMs).toBeLessThan(10_000);
    expect(d.newConnections).toEqual([d.other, d.other, d.other, d.other]);
    expect(d.heldAgain).toBe(d.held);
    expect(d.whileConnected).toContain(`-a -t 10.96.0.20:80 -r ${heldIP}:8080 -m -w 0\n`);
    expect(d.restoredSave).toContain(`-a -t 10.96.0.20:80 -r ${heldIP}:8080 -m -w 1\n`);
  });

  guestTest("a drained real server is deleted once its last connection is gone", () => {
    const d = detail("drained real server deleted");
    expect(d.save).toContain("-A -t 10.96.0.20:80 -s rr\n");
    expect(d.save.split("\n").filter((l: string) => l.startsWith("-a -t 10.96.0.20:80"))).toHaveLength(1);
    // IPVS keeps a reset connection for 10 s; the drain check (here by the restarted kproxy) follows
    expect(d.deletedAfterResetMs).toBeGreaterThanOrEqual(9_000);
    expect(d.deletedAfterResetMs).toBeLessThan(40_000);
  });

  guestTest("deleting a service removes its virtual server, address and set member", () => {
    const d = detail("service deletion");
    expect(d.save).not.toContain("10.96.0.11");
    expect(d.save).toContain("-A -t 10.96.0.10:80 -s rr\n");
    expect(d.dummy).not.toContain("10.96.0.11/32");
    expect(d.dummy).toContain("10.96.0.10/32");
    expect(d.clusterIPSet).not.toContain("10.96.0.11,tcp:80");
    expect(d.clusterIPSet).toContain("10.96.0.10,tcp:80");
  });

  guestTest("a restart under load drops nothing and duplicates nothing", () => {
    const d = detail("restart without drops");
    expect(d.stopCode).toBe(0);
    expect(d.load.failures).toEqual([]);
    expect(d.load.ok).toBeGreaterThan(10);
    expect(d.sameVirtualServers).toBe(true);
    // the restarted kproxy found everything in place and wrote nothing
    expect(d.firstSync).toMatch(/ipvsLines=0\b/);
    expect(d.firstSync).toMatch(/ipsetLines=0\b/);
    expect(d.firstSync).toMatch(/addressesAdded=0\b/);
    expect(d.preroutingJumps).toBe(1);
    expect(d.inputJumps).toBe(3);
  });

  guestTest("--cleanup removes kproxy's virtual servers, sets, kube-ipvs0 and rules, and only those", () => {
    const d = detail("cleanup");
    expect(d.code).toBe(0);
    expect(d.secondCode).toBe(0);
    expect(d.save).toBe("-A -t 10.99.0.1:80 -s wrr\n-a -t 10.99.0.1:80 -r 10.244.1.99:80 -m -w 3\n");
    expect(d.sets.trim()).toBe("");
    expect(d.dummyExists).toBe(false);
    expect(d.kubeChains).toEqual([]);
    expect(d.afterCleanup[0]).toStartWith("ERR:");
  });
});
