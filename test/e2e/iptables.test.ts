/**
 * The iptables mode with real packets: kproxy runs in the node namespace of the e2e topology with
 * a --services-file manifest the test rewrites, and probes in the node, client and pod namespaces
 * prove what the rules do. The main scenario runs on the nft flavour; the basic ClusterIP/NodePort
 * check runs again on legacy.
 */
import { afterAll, beforeAll, describe, expect } from "bun:test";
import { mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isRoot, type Netns } from "../helpers/netns.ts";
import { eventually } from "../helpers/process.ts";
import { hasTool, needs } from "../helpers/require.ts";
import { createTopology, NODE_IP, type Pod, type Topology, UDP_PORT } from "./topology.ts";
import { KproxyInNamespace } from "./kproxy.ts";
import { http, installProbe, probe } from "./probe.ts";
import { manifest, NODE_NAME, NS, type Svc, tally } from "./manifest.ts";

const e2e = needs(
  isRoot() && hasTool("ip") && hasTool("iptables-nft") && hasTool("iptables-legacy") && hasTool("conntrack"),
  "needs root, iproute2, iptables (legacy and nft) and conntrack",
);

function config(flavour: "legacy" | "nft"): string {
  return [
    "apiVersion: kubeproxy.config.k8s.io/v1alpha1",
    "kind: KubeProxyConfiguration",
    "mode: iptables",
    `hostnameOverride: ${NODE_NAME}`,
    "clusterCIDR: 10.244.0.0/16,fd00:244::/48",
    "healthzBindAddress: 127.0.0.1:10256",
    "metricsBindAddress: 127.0.0.1:10249",
    // nf_conntrack_max is global to the host: leave it alone.
    "conntrack: { maxPerCore: 0 }",
    `iptables: { syncPeriod: 2s, minSyncPeriod: 0s, flavour: ${flavour} }`,
    "",
  ].join("\n");
}

async function natChains(node: Netns, flavour: string, family: "4" | "6" = "4"): Promise<string> {
  return node.run([`ip${family === "6" ? "6" : ""}tables-${flavour}-save`, "-t", "nat"]);
}

describe("iptables mode end to end", () => {
  let topo: Topology | undefined;
  let dir = "";
  let kproxy: KproxyInNamespace | undefined;
  const pods = () => (topo as Topology).pods as [Pod, Pod, Pod];
  const node = () => (topo as Topology).node;
  const client = () => (topo as Topology).client;

  const base = (): Svc[] => {
    const [p0, p1, p2] = pods();
    return [
      { name: "web", clusterIP: "10.96.0.10", type: "NodePort", nodePort: 30080, endpoints: [p0.ip, p1.ip, p2.ip] },
      { name: "sticky", clusterIP: "10.96.0.11", affinity: true, endpoints: [p0.ip, p1.ip, p2.ip] },
      { name: "self", clusterIP: "10.96.0.12", endpoints: [p0.ip] },
      { name: "empty", clusterIP: "10.96.0.13", endpoints: [] },
      {
        name: "local",
        clusterIP: "10.96.0.14",
        type: "LoadBalancer",
        nodePort: 30081,
        local: true,
        healthCheckNodePort: 30500,
        endpoints: [p0.ip, `${p1.ip}@node-b`],
      },
      { name: "dns", clusterIP: "10.96.0.53", port: 53, protocol: "UDP", targetPort: UDP_PORT, endpoints: [p0.ip] },
      { name: "web6", clusterIP: "fd00:96::10", family: "IPv6", endpoints: [p0.ip6, p1.ip6] },
    ];
  };

  async function publish(services: readonly Svc[]): Promise<void> {
    // Written aside and renamed, as a ConfigMap update would be: the source never reads half a file.
    await writeFile(join(dir, "services.tmp"), manifest(services));
    await rename(join(dir, "services.tmp"), join(dir, "services.yaml"));
  }

  beforeAll(async () => {
    if (!isRoot()) return;
    dir = await mkdtemp(join(tmpdir(), "kproxy-e2e-ipt-"));
    await installProbe(dir);
    topo = await createTopology(3);
  }, 30_000);

  afterAll(async () => {
    if (kproxy) await kproxy.stop().catch(() => {});
    await topo?.destroy();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 30_000);

  e2e(
    "nft: ClusterIP, NodePort, spread, affinity, hairpin, REJECT, Local policy, UDP conntrack, IPv6, removal",
    async () => {
      const [p0, p1, p2] = pods();
      await writeFile(join(dir, "config.yaml"), config("nft"));
      await publish(base());
      kproxy = new KproxyInNamespace(node(), dir);
      await kproxy.child.waitFor(/Synced proxy rules/, 15_000);

      // ClusterIP from the node: every endpoint gets traffic.
      const fromNode = tally(await http(node(), "10.96.0.10", 80, 60, dir));
      expect(Object.keys(fromNode).sort()).toEqual(["pod0", "pod1", "pod2"]);
      // NodePort from the client.
      const fromClient = tally(await http(client(), NODE_IP, 30080, 30, dir));
      expect(Object.keys(fromClient).sort()).toEqual(["pod0", "pod1", "pod2"]);
      // ClusterIP from a pod, and a pod reaching itself through its own service (hairpin).
      expect(tally(await http(p1.ns, "10.96.0.10", 80, 30, dir))).not.toHaveProperty("ERR:timeout");
      expect(await http(p0.ns, "10.96.0.12", 80, 3, dir)).toEqual(["pod0", "pod0", "pod0"]);
      // ClientIP affinity: one client, one endpoint.
      expect(Object.keys(tally(await http(client(), "10.96.0.11", 80, 20, dir)))).toHaveLength(1);
      // No endpoints: refused at once.
      const started = Date.now();
      expect(await http(node(), "10.96.0.13", 80, 1, dir)).toEqual(["ERR:ECONNREFUSED"]);
      expect(Date.now() - started).toBeLessThan(1000);
      // IPv6 ClusterIP.
      expect(Object.keys(tally(await http(node(), "fd00:96::10", 80, 30, dir))).sort()).toEqual(["pod0", "pod1"]);

      // externalTrafficPolicy Local: the NodePort reaches only the local endpoint; the health check says so.
      expect(tally(await http(client(), NODE_IP, 30081, 20, dir))).toEqual({ pod0: 20 });
      const hc = await client().run(["curl", "-s", "-w", "\n%{http_code}", `http://${NODE_IP}:30500/`]);
      expect(hc.trim().split("\n").at(-1)).toBe("200");
      expect(JSON.parse(hc.slice(0, hc.lastIndexOf("\n")))).toEqual({
        service: { namespace: NS, name: "local" },
        localEndpoints: 1,
        serviceProxyHealthy: true,
      });

      // Endpoint removal stops traffic to that pod within a second; Local without local endpoints answers 503.
      const withoutPod2 = base().map((s) => {
        if (s.name === "web") return { ...s, endpoints: [p0.ip, p1.ip] };
        if (s.name === "local") return { ...s, endpoints: [`${p1.ip}@node-b`] };
        return s;
      });
      const changedAt = Date.now();
      await publish(withoutPod2);
      await eventually("pod2 to leave web", async () => {
        const seen = tally(await http(node(), "10.96.0.10", 80, 12, dir));
        return seen["pod2"] === undefined ? seen : undefined;
      }, 3000);
      expect(Date.now() - changedAt).toBeLessThan(1500);
      const hc503 = await eventually("health check 503", async () => {
        const out = await client().run(["curl", "-s", "-w", "\n%{http_code}", `http://${NODE_IP}:30500/`]);
        return out.trim().endsWith("503") ? out : undefined;
      });
      expect(hc503).toContain('"localEndpoints": 0');

      // UDP: a client keeping its source port follows the endpoint change (stale flow deleted).
      const udp = probe(client(), ["udp-for", "10.96.0.53", 53, 40000, 2500, 25], dir) as Promise<[number, string][]>;
      await eventually("UDP answers from pod0", async () => {
        const out = await node().run(["conntrack", "-L", "-p", "udp", "--orig-dst", "10.96.0.53"]).catch(() => "");
        return out.includes("10.244.1.10") ? true : undefined;
      }, 2000);
      const switchedAt = Date.now();
      await publish(withoutPod2.map((s) => (s.name === "dns" ? { ...s, endpoints: [p1.ip] } : s)));
      const answers = await udp;
      expect(answers.some(([, body]) => body.startsWith("pod0"))).toBe(true);
      const last = answers.at(-1);
      // Off-cluster clients are masqueraded, so pod1 sees the node's bridge address.
      expect(last?.[1]).toStartWith("pod1 ");
      const firstPod1 = answers.find(([, body]) => body.startsWith("pod1"));
      expect((firstPod1?.[0] ?? Infinity) - switchedAt).toBeLessThan(1500);

      // Deleting a service removes its chains.
      expect(await natChains(node(), "nft")).toContain(`${NS}/sticky:p`);
      await publish(withoutPod2.filter((s) => s.name !== "sticky"));
      await eventually("sticky's chains to go", async () => ((await natChains(node(), "nft")).includes(`${NS}/sticky:p`) ? undefined : true), 3000);
      await publish(base());
    },
    40_000,
  );

  e2e(
    "nft: a restart under load drops nothing; a flushed nat table is repaired within syncPeriod; --cleanup removes everything",
    async () => {
      if (!kproxy) throw new Error("needs the previous test's kproxy");
      await eventually("web to have 3 endpoints again", async () =>
        Object.keys(tally(await http(client(), NODE_IP, 30080, 20, dir))).length === 3 ? true : undefined,
      );
      const load = probe(client(), ["load", NODE_IP, 30080, 3000], dir) as Promise<{ ok: number; failures: string[] }>;
      await kproxy.stop();
      kproxy = new KproxyInNamespace(node(), dir);
      await kproxy.child.waitFor(/Synced proxy rules/, 15_000);
      const result = await load;
      expect(result.failures).toEqual([]);
      expect(result.ok).toBeGreaterThan(20);
      // The jumps were taken over, not duplicated.
      const prerouting = await node().run(["iptables-nft", "-t", "nat", "-S", "PREROUTING"]);
      expect(prerouting.match(/KUBE-SERVICES/g)).toHaveLength(1);

      await node().run(["iptables-nft", "-t", "nat", "-F"]);
      await node().run(["iptables-nft", "-t", "nat", "-X"]);
      const flushedAt = Date.now();
      expect(await natChains(node(), "nft")).not.toContain("KUBE-SERVICES");
      await eventually("the ClusterIP to work again", async () => {
        const r = await http(client(), NODE_IP, 30080, 1, dir);
        return r[0]?.startsWith("pod") ? true : undefined;
      }, 4000);
      expect(Date.now() - flushedAt).toBeLessThan(3000);

      await kproxy.stop();
      kproxy = undefined;
      const cleanup = KproxyInNamespace.cleanup(node());
      expect(await cleanup.exited()).toBe(0);
      for (const tool of ["iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"]) {
        const saved = await node().run([tool]);
        // KUBE-FIREWALL is kubelet's chain; its rule keeps 127.0.0.0/8 closed while route_localnet stays on.
        const left = saved.split("\n").filter((l) => /^:KUBE-/.test(l) && !l.startsWith(":KUBE-FIREWALL "));
        expect({ tool, left }).toEqual({ tool, left: [] });
        expect(saved.split("\n").filter((l) => /-j KUBE-(?!FIREWALL)/.test(l))).toEqual([]);
      }
      // Nothing is proxied any more, and a second cleanup is fine.
      expect((await http(client(), NODE_IP, 30080, 1, dir))[0]).toStartWith("ERR:");
      const again = KproxyInNamespace.cleanup(node());
      expect(await again.exited()).toBe(0);
    },
    30_000,
  );

  e2e(
    "legacy: ClusterIP and NodePort",
    async () => {
      await writeFile(join(dir, "config.yaml"), config("legacy"));
      await publish(base());
      kproxy = new KproxyInNamespace(node(), dir);
      await kproxy.child.waitFor(/Synced proxy rules/, 15_000);
      expect(await natChains(node(), "legacy")).toContain("KUBE-SVC-");
      expect(Object.keys(tally(await http(node(), "10.96.0.10", 80, 40, dir))).sort()).toEqual(["pod0", "pod1", "pod2"]);
      expect(Object.keys(tally(await http(client(), NODE_IP, 30080, 40, dir))).sort()).toEqual(["pod0", "pod1", "pod2"]);
      await kproxy.stop();
      kproxy = undefined;
      const cleanup = KproxyInNamespace.cleanup(node());
      expect(await cleanup.exited()).toBe(0);
      expect((await natChains(node(), "legacy")).match(/^:KUBE-/m)).toBeNull();
    },
    20_000,
  );
});
