/**
 * The userspace mode with real packets: kproxy runs in the node namespace of the e2e topology with a
 * --services-file manifest the test rewrites; its relays carry the traffic and its portal rules (nft
 * flavour) send ClusterIP and NodePort traffic to them. Probes in the node, client and pod namespaces
 * prove the result.
 */
import { afterAll, beforeAll, describe, expect } from "bun:test";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isRoot, type Netns } from "../helpers/netns.ts";
import { Child, eventually } from "../helpers/process.ts";
import { hasTool, needs } from "../helpers/require.ts";
import { createTopology, NODE_IP, type Pod, type Topology, UDP_PORT } from "./topology.ts";
import { KproxyInNamespace } from "./kproxy.ts";
import { http, installProbe, probe } from "./probe.ts";
import { manifest, NODE_NAME, NS, type Svc, tally } from "./manifest.ts";

const e2e = needs(isRoot() && hasTool("ip") && hasTool("iptables-nft") && hasTool("conntrack"), "needs root, iproute2, iptables (nft) and conntrack");
const ARM64_LIBS = "/usr/aarch64-linux-gnu";
const arm64e2e = needs(
  isRoot() && hasTool("ip") && hasTool("qemu-aarch64-static") && existsSync(join(ARM64_LIBS, "lib", "ld-linux-aarch64.so.1")),
  "needs root, iproute2, qemu-user-static and libc6-arm64-cross to run the arm64 binary",
);

const ROOT = join(import.meta.dir, "../..");

const CONFIG = [
  "apiVersion: kubeproxy.config.k8s.io/v1alpha1",
  "kind: KubeProxyConfiguration",
  "mode: userspace",
  `hostnameOverride: ${NODE_NAME}`,
  "healthzBindAddress: 127.0.0.1:10256",
  "metricsBindAddress: 127.0.0.1:10249",
  "conntrack: { maxPerCore: 0 }",
  "iptables: { syncPeriod: 2s, minSyncPeriod: 0s, flavour: nft }",
  "",
].join("\n");

/** Every table's rules, for finding our chains and jumps. */
async function ruleset(node: Netns): Promise<string> {
  return (await node.run(["iptables-nft-save", "-t", "nat"])) + (await node.run(["iptables-nft-save", "-t", "filter"]));
}

function count(text: string, needle: string): number {
  return text.split("\n").filter((l) => l.includes(needle)).length;
}

describe("userspace mode end to end", () => {
  let topo: Topology | undefined;
  let dir = "";
  let kproxy: KproxyInNamespace | undefined;
  const pods = () => (topo as Topology).pods as [Pod, Pod, Pod];
  const node = () => (topo as Topology).node;
  const client = () => (topo as Topology).client;

  const base = (): Svc[] => {
    const [p0, p1, p2] = pods();
    return [
      { name: "web", clusterIP: "10.96.0.10", nodePort: 30080, endpoints: [p0.ip, p1.ip, p2.ip] },
      { name: "sticky", clusterIP: "10.96.0.11", affinity: true, endpoints: [p0.ip, p1.ip, p2.ip] },
      { name: "dns", clusterIP: "10.96.0.53", port: 53, protocol: "UDP", targetPort: UDP_PORT, endpoints: [p0.ip] },
    ];
  };

  async function publish(services: readonly Svc[]): Promise<void> {
    await writeFile(join(dir, "services.tmp"), manifest(services));
    await rename(join(dir, "services.tmp"), join(dir, "services.yaml"));
  }

  beforeAll(async () => {
    if (!isRoot()) return;
    dir = await mkdtemp(join(tmpdir(), "kproxy-e2e-us-"));
    // The unprivileged run reads the config and manifest from here.
    await chmod(dir, 0o755);
    await installProbe(dir);
    await writeFile(join(dir, "config.yaml"), CONFIG);
    topo = await createTopology(3);
  }, 30_000);

  afterAll(async () => {
    if (kproxy) await kproxy.stop().catch(() => {});
    // Whatever a failed test left in the node namespace goes with it.
    await topo?.destroy();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 30_000);

  e2e(
    "ClusterIP from node and pod, NodePort from a client, spread, affinity, UDP, endpoint removal, service deletion",
    async () => {
      const [p0, p1] = pods();
      await publish(base());
      kproxy = new KproxyInNamespace(node(), dir);
      await kproxy.child.waitFor(/Synced proxy rules/, 15_000);
      expect(kproxy.child.stderr).toContain("Userspace mode with portal rules");

      // ClusterIP from the node (KUBE-PORTALS-HOST): every endpoint gets traffic.
      expect(Object.keys(tally(await http(node(), "10.96.0.10", 80, 30, dir))).sort()).toEqual(["pod0", "pod1", "pod2"]);
      // ClusterIP from a pod (KUBE-PORTALS-CONTAINER).
      expect(Object.keys(tally(await http(p1.ns, "10.96.0.10", 80, 30, dir))).sort()).toEqual(["pod0", "pod1", "pod2"]);
      // NodePort from the client (KUBE-NODEPORT-CONTAINER).
      expect(Object.keys(tally(await http(client(), NODE_IP, 30080, 30, dir))).sort()).toEqual(["pod0", "pod1", "pod2"]);
      // ClientIP affinity: one client, one endpoint.
      expect(Object.keys(tally(await http(client(), "10.96.0.11", 80, 20, dir)))).toHaveLength(1);
      expect(Object.keys(tally(await http(node(), "10.96.0.11", 80, 20, dir)))).toHaveLength(1);

      // UDP from a pod and from the node: the relay's answers come back from the service address.
      const fromPod = (await probe(p1.ns, ["udp", "10.96.0.53", 53, 40000, 3000, 50], dir)) as string[];
      expect(fromPod[0]).toStartWith("10.96.0.53:53 pod0 ");
      const fromNode = (await probe(node(), ["udp", "10.96.0.53", 53, 40001, 3000, 50], dir)) as string[];
      expect(fromNode[0]).toStartWith("10.96.0.53:53 pod0 ");

      // Endpoint removal: the next connections avoid the removed pod.
      await publish(base().map((s) => (s.name === "web" ? { ...s, endpoints: [p0.ip, p1.ip] } : s)));
      await eventually("pod2 to leave web", async () => {
        const seen = tally(await http(client(), NODE_IP, 30080, 12, dir));
        return seen["pod2"] === undefined && Object.keys(seen).length === 2 ? seen : undefined;
      }, 5000);

      // Deleting a service closes its relay and removes its portals.
      expect(await ruleset(node())).toContain(`${NS}/sticky:p`);
      await publish(base().filter((s) => s.name !== "sticky"));
      await eventually("sticky's portals to go", async () => ((await ruleset(node())).includes(`${NS}/sticky:p`) ? undefined : true), 5000);
      expect((await http(node(), "10.96.0.11", 80, 1, dir))[0]).toStartWith("ERR:");
    },
    40_000,
  );

  e2e(
    "a restart takes over (a UDP client keeping its port too) without duplicating jumps; --cleanup removes every portal chain and jump",
    async () => {
      if (!kproxy) throw new Error("needs the previous test's kproxy");
      await publish(base());
      const [, p1] = pods();
      // A UDP client that keeps its source port across the restart: its flow points at the old relay
      // port, which the new run must clear for the answers to resume.
      const udp = probe(p1.ns, ["udp-for", "10.96.0.53", 53, 40002, 5000, 50], dir) as Promise<[number, string][]>;
      await eventually("the UDP client's flow", async () => {
        const out = await node().run(["conntrack", "-L", "-p", "udp", "--orig-dst", "10.96.0.53", "--sport", "40002"]).catch(() => "");
        return out.includes("dport=53") ? true : undefined;
      }, 3000);
      await kproxy.stop();
      kproxy = new KproxyInNamespace(node(), dir);
      await kproxy.child.waitFor(/Synced proxy rules/, 15_000);
      const restartedAt = Date.now();
      const answers = await udp;
      expect(answers.some(([at]) => at < restartedAt)).toBe(true);
      expect(answers.some(([at, body]) => at > restartedAt && body.startsWith("pod0 "))).toBe(true);
      await eventually("web through the new relays", async () => {
        const seen = tally(await http(client(), NODE_IP, 30080, 9, dir));
        return Object.keys(seen).sort().join() === "pod0,pod1,pod2" ? seen : undefined;
      }, 5000);
      const rules = await ruleset(node());
      for (const chain of ["KUBE-PORTALS-CONTAINER", "KUBE-PORTALS-HOST", "KUBE-NODEPORT-CONTAINER", "KUBE-NODEPORT-HOST", "KUBE-NODEPORT-NON-LOCAL"]) {
        expect(count(rules, `-j ${chain}`)).toBe(1);
      }

      await kproxy.stop();
      kproxy = undefined;
      const cleanup = KproxyInNamespace.cleanup(node());
      expect(await cleanup.exited(20_000)).toBe(0);
      const after = await ruleset(node());
      expect(after).not.toContain("KUBE-PORTALS");
      expect(after).not.toContain("KUBE-NODEPORT");
    },
    40_000,
  );

  /**
   * kproxy without root in the node namespace, on the base services: the root kproxy of earlier tests
   * is stopped and its rules removed first, so the test stands alone even when one failed half way.
   * The unprivileged user may not be able to read the checkout (a private clone directory), so it
   * runs kproxy compiled for `target` into the test's own world-readable folder, through `runner`
   * (an emulator) when one is given.
   */
  async function unprivilegedKproxy(target: "x64" | "arm64", buildTimeoutMs: number, runner: readonly string[] = []): Promise<Child> {
    if (kproxy) {
      await kproxy.stop();
      kproxy = undefined;
      await KproxyInNamespace.cleanup(node()).exited(20_000);
    }
    await publish(base());
    const build = new Child([process.execPath, join(ROOT, "build.ts"), "--target", target, "--outdir", dir], { cwd: ROOT });
    expect(await build.exited(buildTimeoutMs)).toBe(0);
    const binary = join(dir, target === "arm64" ? "kproxy-linux-arm64" : "kproxy");
    return new Child(
      [
        "ip", "netns", "exec", node().name,
        "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
        ...runner,
        binary, "--config", join(dir, "config.yaml"), "--services-file", join(dir, "services.yaml"), "--v=2",
      ],
      { cwd: dir, env: { HOME: dir } },
    );
  }

  e2e(
    "without root: no portal rules, NodePorts served by listening on them, one warning saying what is unreachable",
    async () => {
      const unprivileged = await unprivilegedKproxy(process.arch === "arm64" ? "arm64" : "x64", 60_000);
      try {
        await unprivileged.waitFor(/Synced proxy rules/, 15_000);
        expect(Object.keys(tally(await http(client(), NODE_IP, 30080, 12, dir))).sort()).toEqual(["pod0", "pod1", "pod2"]);
        expect((await http(node(), "10.96.0.10", 80, 1, dir))[0]).toStartWith("ERR:");
        // A second sync (the manifest changes) does not repeat the warning.
        await publish(base().filter((s) => s.name !== "sticky"));
        await eventually("a second sync", () => (unprivileged.stderr.match(/Synced proxy rules/g)?.length ?? 0) >= 2 || undefined, 5000);
        expect(unprivileged.stderr.match(/Userspace mode without portal rules: ClusterIPs/g)).toHaveLength(1);
        expect(unprivileged.stderr).toContain('reason="kproxy is not running as root"');
        expect(await ruleset(node())).not.toContain("KUBE-");
      } finally {
        unprivileged.kill("SIGTERM");
        await unprivileged.exited(10_000);
      }
    },
    90_000,
  );
  arm64e2e(
    "the arm64 binary (under qemu-user) relays NodePort traffic to every pod on its relay threads",
    async () => {
      // Unprivileged, like the run above, so it writes no rules and listens on the NodePort itself.
      const arm64 = await unprivilegedKproxy("arm64", 120_000, ["qemu-aarch64-static", "-L", ARM64_LIBS]);
      try {
        await arm64.waitFor(/Synced proxy rules/, 60_000);
        expect(Object.keys(tally(await http(client(), NODE_IP, 30080, 12, dir))).sort()).toEqual(["pod0", "pod1", "pod2"]);
        expect(arm64.stderr).not.toContain("Relay threads are unavailable");
      } finally {
        arm64.kill("SIGTERM");
        await arm64.exited(20_000);
      }
    },
    180_000,
  );
});
