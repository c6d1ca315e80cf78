import { describe, expect, test } from "bun:test";
import { defaultRuleOptions } from "../../../src/backends/iptables/options.ts";
import { plannerFor } from "../../../src/backends/planners.ts";
import { defaultConfig } from "../../../src/config/index.ts";
import { parseIpAddr } from "../../../src/backends/ipvs/addresses.ts";
import { withDraining } from "../../../src/backends/ipvs/graceful.ts";
import { companionRules, DesiredState, type IpvsPlanEnv, planServicePort, planSnapshot, wantedIpsets } from "../../../src/backends/ipvs/plan.ts";
import { isOwnedSet, setName } from "../../../src/backends/ipvs/sets.ts";
import { categorizeEndpoints } from "../../../src/model/topology.ts";
import type { VirtualServer } from "../../../src/system/ipvs.ts";
import { endpoint, servicePort, snapshot, testNode } from "../iptables/helpers.ts";

const env: IpvsPlanEnv = {
  scheduler: "",
  categorize: categorizeEndpoints,
  nodePortIPs: ["192.168.0.2", "fd00::2"],
  nodeAddresses: new Set(["192.168.0.2", "127.0.0.1", "203.0.113.7"]),
  nodeIPs: ["192.168.0.2"],
  node: testNode,
};

const local = (ip: string, port = 8080) => endpoint(ip, port, { isLocal: true });
const remote = (ip: string, port = 8080) => endpoint(ip, port, { isLocal: false, nodeName: "other" });

describe("planServicePort", () => {
  test("LoadBalancer with Local policy and source ranges: sets, virtual servers, bound addresses, node blocked", () => {
    const sp = servicePort("ns", "lb", "p", {
      clusterIP: "10.96.0.5",
      port: 443,
      type: "LoadBalancer",
      nodePort: 31443,
      externalIPs: ["203.0.113.7", "198.51.100.9"],
      loadBalancerIPs: ["198.51.100.1"],
      loadBalancerSourceRanges: ["10.0.0.0/8", "1.2.3.4/32"],
      externalPolicyLocal: true,
      healthCheckNodePort: 32000,
    });
    const plan = planServicePort(sp, [local("10.0.1.1"), remote("10.0.2.1")], env);
    const byAddress = new Map(plan.virtualServers.map((vs) => [`${vs.address}:${vs.port}`, vs.realServers.map((rs) => rs.address)]));
    // ClusterIP uses every endpoint; external traffic only the local one
    expect(byAddress.get("10.96.0.5:443")).toEqual(["10.0.1.1", "10.0.2.1"]);
    expect(byAddress.get("198.51.100.1:443")).toEqual(["10.0.1.1"]);
    expect(byAddress.get("203.0.113.7:443")).toEqual(["10.0.1.1"]);
    expect(byAddress.get("192.168.0.2:31443")).toEqual(["10.0.1.1"]);
    expect(byAddress.has("fd00::2:31443")).toBe(false);
    // an external IP already on the node is not bound to kube-ipvs0
    expect(plan.bound).toEqual(["10.96.0.5", "198.51.100.9", "198.51.100.1"]);
    expect(plan.members).toEqual([
      ["loopBack", "10.0.1.1,tcp:8080,10.0.1.1"],
      ["clusterIP", "10.96.0.5,tcp:443"],
      ["externalIPLocal", "203.0.113.7,tcp:443"],
      ["externalIPLocal", "198.51.100.9,tcp:443"],
      ["loadBalancer", "198.51.100.1,tcp:443"],
      ["loadBalancerLocal", "198.51.100.1,tcp:443"],
      ["loadBalancerFW", "198.51.100.1,tcp:443"],
      ["loadBalancerSourceCIDR", "198.51.100.1,tcp:443,10.0.0.0/8"],
      ["loadBalancerSourceCIDR", "198.51.100.1,tcp:443,1.2.3.4"],
      ["nodePortTCP", "31443"],
      ["nodePortLocalTCP", "31443"],
      ["healthCheckNodePort", "32000"],
    ]);
    // the node's own address is in no source range: its traffic to the LB IP is dropped
    expect(plan.blockedFromNode).toEqual([{ ip: "198.51.100.1", protocol: "tcp", port: 443 }]);
  });

  test("a source range holding the node lets it in through KUBE-LOAD-BALANCER-SOURCE-IP", () => {
    const sp = servicePort("ns", "lb", "p", { clusterIP: "10.96.0.5", port: 80, loadBalancerIPs: ["198.51.100.1"], loadBalancerSourceRanges: ["192.168.0.0/16"] });
    const plan = planServicePort(sp, [], env);
    expect(plan.members).toContainEqual(["loadBalancerSourceIP", "198.51.100.1,tcp:80,198.51.100.1"]);
    expect(plan.blockedFromNode).toEqual([]);
  });

  test("SCTP NodePorts go to the hash set per node IP; mh gets its port flag; affinity is persistence", () => {
    const sp = servicePort("ns", "s", "p", { clusterIP: "10.96.0.6", port: 9, protocol: "SCTP", nodePort: 30009, sessionAffinity: { type: "ClientIP", timeoutSeconds: 30 } });
    const plan = planServicePort(sp, [remote("10.0.2.1", 9)], { ...env, scheduler: "mh" });
    expect(plan.members).toContainEqual(["nodePortSCTP", "192.168.0.2,sctp:30009"]);
    expect(plan.virtualServers[0]).toMatchObject({ protocol: "sctp", scheduler: "mh", flags: ["mh-port"], persistenceTimeout: 30 });
  });

  test("internal Local policy without local endpoints leaves the ClusterIP without real servers", () => {
    const sp = servicePort("ns", "s", "p", { clusterIP: "10.96.0.7", port: 80, internalPolicyLocal: true });
    expect(planServicePort(sp, [remote("10.0.2.1")], env).virtualServers[0]?.realServers).toEqual([]);
  });

  test("IPv6 service ports use the KUBE-6- sets", () => {
    const sp = servicePort("ns", "v6", "p", { clusterIP: "fd00:96::1", port: 80 });
    const state = planSnapshot(snapshot([[sp, [local("fd00:10::5")]]]), env);
    const sets = wantedIpsets(state);
    expect(sets.find((s) => s.name === "KUBE-6-CLUSTER-IP")).toMatchObject({ family: "inet6", entries: ["fd00:96::1,tcp:80"] });
    expect(sets.find((s) => s.name === "KUBE-6-IPVS-IPS")?.entries).toEqual(["fd00:96::1"]);
    expect(setName("loadBalancerSourceCIDR", "IPv6")).toBe("KUBE-6-LOAD-BALANCER-SOURCE-CID");
    expect(isOwnedSet("KUBE-6-LOAD-BALANCER-SOURCE-CID")).toBe(true);
    expect(isOwnedSet("KUBE-MARK-MASQ")).toBe(false);
  });
});

describe("DesiredState", () => {
  const a = servicePort("ns", "a", "", { clusterIP: "10.96.0.1", port: 80 });
  const b = servicePort("ns", "b", "", { clusterIP: "10.96.0.2", port: 80 });

  test("members shared by two service ports stay until the last one goes; deltas say what changed", () => {
    const state = new DesiredState();
    state.replace(a.key, planServicePort(a, [local("10.0.1.1")], env));
    state.replace(b.key, planServicePort(b, [local("10.0.1.1")], env));
    const gone = state.replace(a.key, undefined);
    expect(gone.removedMembers.get("KUBE-LOOP-BACK")).toBeUndefined();
    expect(gone.removedMembers.get("KUBE-CLUSTER-IP")).toEqual(["10.96.0.1,tcp:80"]);
    expect(gone.removedAddresses).toEqual(["10.96.0.1"]);
    expect([...gone.virtualServers]).toEqual(["tcp 10.96.0.1:80"]);
    expect(state.rulesChanged(gone)).toBe(false);
    const last = state.replace(b.key, undefined);
    const lastRules = state.rulesChanged(last);
    expect(last.removedMembers.get("KUBE-LOOP-BACK")).toEqual(["10.0.1.1,tcp:8080,10.0.1.1"]);
    // KUBE-CLUSTER-IP and KUBE-LOOP-BACK became empty: their rules go
    expect(lastRules).toBe(true);
  });

  test("an unchanged replacement is no change", () => {
    const state = new DesiredState();
    state.replace(a.key, planServicePort(a, [local("10.0.1.1")], env));
    const delta = state.replace(a.key, planServicePort(a, [local("10.0.1.1")], env));
    expect(delta.addedMembers.size + delta.removedMembers.size + delta.addedAddresses.length + delta.removedAddresses.length).toBe(0);
    expect(state.rulesChanged(delta)).toBe(false);
  });
});

describe("companionRules", () => {
  const options = { rule: { ...defaultRuleOptions, clusterCIDRs: ["10.0.0.0/8"] }, node: testNode };

  test("rules only for non-empty sets; masquerade off-cluster traffic to ClusterIPs", () => {
    const sp = servicePort("ns", "a", "", { clusterIP: "10.96.0.1", port: 80 });
    const text = companionRules(planSnapshot(snapshot([[sp, [local("10.0.1.1")]]]), env), "IPv4", options);
    // nat first, then filter, as upstream writes them
    expect(text).toStartWith("*nat\n:KUBE-SERVICES - [0:0]\n");
    expect(text.indexOf("*filter\n:KUBE-FORWARD - [0:0]\n")).toBeGreaterThan(0);
    expect(text).toContain(
      '-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ\n',
    );
    expect(text).toContain('-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE\n');
    expect(text).toContain("-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\n");
    expect(text).not.toContain("KUBE-NODE-PORT-TCP");
    expect(text).not.toContain("--match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER");
    expect(text).toContain("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    expect(text.match(/^COMMIT$/gm)).toHaveLength(2);
  });

  test("blocked LB access from the node, masqueradeAll, and no local detection", () => {
    const sp = servicePort("ns", "lb", "", { clusterIP: "10.96.0.5", port: 80, loadBalancerIPs: ["198.51.100.1"], loadBalancerSourceRanges: ["1.0.0.0/8"] });
    const state = planSnapshot(snapshot([[sp, []]]), env);
    expect(companionRules(state, "IPv4", options)).toContain("-A KUBE-IPVS-OUT-FILTER -s 198.51.100.1 -m ipvs --vaddr 198.51.100.1 --vproto tcp --vport 80 -j DROP\n");
    expect(companionRules(state, "IPv4", { ...options, rule: { ...options.rule, masqueradeAll: true } })).toContain("KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ\n");
    expect(companionRules(state, "IPv4", { ...options, rule: { ...options.rule, clusterCIDRs: [] } })).toContain("KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ\n");
  });
});

describe("withDraining", () => {
  const vs = (weights: Record<string, number>, protocol: VirtualServer["protocol"] = "tcp"): VirtualServer => ({
    protocol,
    address: "10.96.0.1",
    port: 80,
    scheduler: "rr",
    persistenceTimeout: 0,
    flags: [],
    realServers: Object.entries(weights).map(([address, weight]) => ({ address, port: 80, forwarding: "masq", weight })),
  });

  test("TCP real servers no longer wanted stay at weight 0; UDP ones are dropped", () => {
    expect(withDraining(vs({ a: 1, b: 1 }), vs({ a: 1 }))).toEqual({ virtualServer: vs({ a: 1, b: 0 }), drained: [vs({ b: 0 }).realServers[0]!] });
    expect(withDraining(vs({ a: 1, b: 1 }, "udp"), vs({ a: 1 }, "udp"))).toEqual({ virtualServer: vs({ a: 1 }, "udp"), drained: [] });
    expect(withDraining(undefined, vs({ a: 1 })).drained).toEqual([]);
  });
});

describe("parseIpAddr", () => {
  test("splits kube-ipvs0's addresses from the others", () => {
    const json = JSON.stringify([
      { ifname: "lo", addr_info: [{ family: "inet", local: "127.0.0.1" }, { family: "inet6", local: "::1" }] },
      { ifname: "kube-ipvs0", addr_info: [{ family: "inet", local: "10.96.0.1" }, { family: "inet6", local: "FD00:96:0::1" }] },
      { ifname: "eth0", addr_info: [{ family: "inet", local: "192.168.0.2" }] },
    ]);
    expect(parseIpAddr(json)).toEqual({ dummyExists: true, dummy: ["10.96.0.1", "fd00:96::1"], others: ["127.0.0.1", "::1", "192.168.0.2"] });
    expect(parseIpAddr("[]").dummyExists).toBe(false);
  });
});

describe("--dry-run planner", () => {
  test("plannerFor(ipvs) prints virtual servers, kube-ipvs0 addresses, sets and rules without touching anything", () => {
    const config = { ...defaultConfig(), mode: "ipvs" as const, ipvs: { ...defaultConfig().ipvs, scheduler: "wrr" as const } };
    const planner = plannerFor(config, () => ["192.168.0.2", "127.0.0.1"]);
    const sp = servicePort("ns", "web", "", { clusterIP: "10.96.0.10", port: 80, nodePort: 30080 });
    const text = planner?.(snapshot([[sp, [remote("10.0.2.1")]]])) ?? "";
    expect(text).toContain("-A -t 10.96.0.10:80 -s wrr\n-a -t 10.96.0.10:80 -r 10.0.2.1:8080 -m -w 1\n");
    expect(text).toContain("-A -t 192.168.0.2:30080 -s wrr\n");
    expect(text).not.toContain("127.0.0.1:30080");
    expect(text).toContain("# addresses on kube-ipvs0\n10.96.0.10\n");
    expect(text).toContain("add KUBE-NODE-PORT-TCP 30080 -exist\n");
    expect(text).toContain("# IPv4: iptables-restore --noflush\n*nat\n");
  });
});
