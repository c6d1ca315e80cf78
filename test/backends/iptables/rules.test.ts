import { describe, expect, test } from "bun:test";
import {
  generateRules,
  JUMP_RULES,
  KUBELET_JUMP_RULES,
  masqueradeMark,
  probability,
  sameRuleOptions,
  type GenerateContext,
  type RuleOptions,
} from "../../../src/backends/iptables/index.ts";
import { chainContents } from "../../../src/backends/iptables/chunks.ts";
import type { Endpoint, IPFamily, ServicePort } from "../../../src/model/types.ts";
import {
  chainRules,
  endpoint,
  fakeProxierOptions,
  servicePort,
  snapshot,
  testNode,
  testNodeName,
} from "./helpers.ts";

const full: GenerateContext = {};
const local = (ip: string, port: number): Endpoint => endpoint(ip, port, { nodeName: testNodeName });

function generate(
  entries: (readonly [ServicePort, readonly Endpoint[]])[],
  options: Partial<RuleOptions> = {},
  family: IPFamily = "IPv4",
) {
  return generateRules(snapshot(entries), family, { ...fakeProxierOptions, ...options }, full);
}

/** Every chain a rule jumps to is declared, and every declared per-service chain is jumped to. */
function expectConsistentJumps(text: string): void {
  const nat = text.slice(text.indexOf("*nat\n"));
  const declared = new Set([...nat.matchAll(/^:(\S+) /gm)].map((m) => m[1]));
  const targets = new Set([...nat.matchAll(/ -j (KUBE-\S+)/g)].map((m) => m[1]));
  for (const target of targets) expect(declared.has(target)).toBe(true);
  for (const chain of declared) {
    if (/^KUBE-(SVC|SVL|EXT|FW|SEP)-/.test(chain ?? "")) expect(targets.has(chain)).toBe(true);
  }
}

describe("probabilities", () => {
  test("1/(n-i) with 10 decimals; the last endpoint has none", () => {
    for (let n = 1; n <= 5; n++) {
      const eps = Array.from({ length: n }, (_, i) => endpoint(`10.180.0.${i + 1}`, 80));
      const sp = servicePort("ns1", "svc1", "p80", { clusterIP: "172.30.0.41", port: 80 });
      const rules = chainRules(generate([[sp, eps]]).text, "nat", "KUBE-SVC-XPGD46QRK7WJZT7O").filter((r) =>
        r.includes("-j KUBE-SEP-"),
      );
      expect(rules).toHaveLength(n);
      const printed = rules.map((r) => /--probability (\S+)/.exec(r)?.[1]);
      const expected = Array.from({ length: n }, (_, i) => (i < n - 1 ? (1 / (n - i)).toFixed(10) : undefined));
      expect(printed).toEqual(expected);
    }
    expect([2, 3, 4, 5].map(probability)).toEqual(["0.5000000000", "0.3333333333", "0.2500000000", "0.2000000000"]);
  });

  test("rounding follows Go's %0.10f, including the exact tie at n=2048", () => {
    expect(probability(3)).toBe("0.3333333333");
    expect(probability(6)).toBe("0.1666666667");
    expect(probability(1024)).toBe("0.0009765625");
    // 1/2048 = 0.00048828125 exactly: ties round to even.
    expect(probability(2048)).toBe("0.0004882812");
    expect(probability(4096)).toBe("0.0002441406");
    expect(probability(7)).toBe("0.1428571429");
  });
});

describe("session affinity", () => {
  test("recent checks for every endpoint come before the random spread, and endpoints record the client", () => {
    const sp = servicePort("ns1", "svc1", "p80", {
      clusterIP: "172.30.0.41",
      port: 80,
      sessionAffinity: { type: "ClientIP", timeoutSeconds: 300 },
    });
    const out = generate([[sp, [endpoint("10.180.0.1", 80), endpoint("10.180.0.2", 80)]]]);
    const svc = chainRules(out.text, "nat", "KUBE-SVC-XPGD46QRK7WJZT7O");
    const sep1 = "KUBE-SEP-SXIVWICOYRO3J4NJ";
    expect(svc.slice(1)).toEqual([
      `-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m recent --name ${sep1} --rcheck --seconds 300 --reap -j ${sep1}`,
      expect.stringMatching(/-m recent --name (KUBE-SEP-\S+) --rcheck --seconds 300 --reap -j \1$/),
      `-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.5000000000 -j ${sep1}`,
      expect.stringMatching(/"ns1\/svc1:p80 -> 10\.180\.0\.2:80" -j KUBE-SEP-\S+$/),
    ]);
    expect(chainRules(out.text, "nat", sep1)).toEqual([
      `-A ${sep1} -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ`,
      `-A ${sep1} -m comment --comment ns1/svc1:p80 -m recent --name ${sep1} --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80`,
    ]);
  });
});

describe("traffic policies", () => {
  test("internalTrafficPolicy Local without local endpoints drops ClusterIP traffic", () => {
    const sp = servicePort("ns1", "svc1", "p80", { clusterIP: "172.30.0.41", port: 80, internalPolicyLocal: true });
    const out = generate([[sp, [endpoint("10.180.0.1", 80)]]]);
    expect(chainRules(out.text, "filter", "KUBE-SERVICES")).toEqual([
      `-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no local endpoints" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j DROP`,
    ]);
    expect(out.text).not.toContain("KUBE-SVC-XPGD46QRK7WJZT7O");
    expect(out.text).not.toContain("KUBE-SEP-");
    expect(out.counts.noLocalEndpointsInternal).toBe(1);
  });

  test("internalTrafficPolicy Local with a local endpoint sends ClusterIP traffic to KUBE-SVL only", () => {
    const sp = servicePort("ns1", "svc1", "p80", { clusterIP: "172.30.0.41", port: 80, internalPolicyLocal: true });
    const out = generate([[sp, [endpoint("10.180.0.1", 80), local("10.180.0.2", 80)]]]);
    expect(chainRules(out.text, "nat", "KUBE-SERVICES")[0]).toBe(
      `-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVL-XPGD46QRK7WJZT7O`,
    );
    const svl = chainRules(out.text, "nat", "KUBE-SVL-XPGD46QRK7WJZT7O");
    expect(svl).toHaveLength(2);
    expect(svl[0]).toContain("! -s 10.0.0.0/8 -j KUBE-MARK-MASQ");
    expect(svl[1]).toContain(`"ns1/svc1:p80 -> 10.180.0.2:80"`);
    expect(out.text).not.toContain(":KUBE-SVC-XPGD46QRK7WJZT7O");
    expect(out.text).not.toContain("10.180.0.1:80");
    expectConsistentJumps(out.text);
  });

  test("externalTrafficPolicy Local with a local endpoint: EXT short-circuits pods and the node, then KUBE-SVL", () => {
    const sp = servicePort("ns2", "svc2", "p80", {
      type: "LoadBalancer",
      clusterIP: "172.30.0.42",
      port: 80,
      nodePort: 3001,
      loadBalancerIPs: ["1.2.3.4"],
      externalPolicyLocal: true,
      healthCheckNodePort: 30000,
    });
    const out = generate([[sp, [endpoint("10.180.0.1", 80), local("10.180.0.2", 80)]]]);
    expect(chainRules(out.text, "nat", "KUBE-EXT-GNZBNJ2PO5MGZ6GT")).toEqual([
      `-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT`,
      `-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ`,
      `-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT`,
      `-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -j KUBE-SVL-GNZBNJ2PO5MGZ6GT`,
    ]);
    // Cluster chain spreads over both endpoints, the local chain only over the local one.
    expect(chainRules(out.text, "nat", "KUBE-SVC-GNZBNJ2PO5MGZ6GT").filter((r) => r.includes("KUBE-SEP-"))).toHaveLength(2);
    expect(chainRules(out.text, "nat", "KUBE-SVL-GNZBNJ2PO5MGZ6GT")).toEqual([
      expect.stringContaining(`"ns2/svc2:p80 -> 10.180.0.2:80" -j KUBE-SEP-`),
    ]);
    // Two endpoint chains, not three: the local endpoint's chain is shared.
    expect(out.text.match(/^:KUBE-SEP-/gm)).toHaveLength(2);
    expect(chainRules(out.text, "filter", "KUBE-EXTERNAL-SERVICES")).toEqual([]);
    expect(chainRules(out.text, "filter", "KUBE-NODEPORTS")).toEqual([
      `-A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT`,
    ]);
    expectConsistentJumps(out.text);
  });

  test("externalTrafficPolicy Local with no local endpoints drops only external traffic", () => {
    const sp = servicePort("ns2", "svc2", "p80", {
      type: "NodePort",
      clusterIP: "172.30.0.42",
      port: 80,
      nodePort: 3001,
      externalPolicyLocal: true,
    });
    const out = generate([[sp, [endpoint("10.180.0.1", 80)]]]);
    expect(chainRules(out.text, "filter", "KUBE-EXTERNAL-SERVICES")).toEqual([
      `-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP`,
    ]);
    // The EXT chain still exists for the short-circuit rules but has no fall-through.
    expect(chainRules(out.text, "nat", "KUBE-EXT-GNZBNJ2PO5MGZ6GT").some((r) => r.includes("KUBE-SVL-"))).toBe(false);
    expect(out.text).not.toContain("KUBE-SVL-");
    expect(out.counts.noLocalEndpointsExternal).toBe(1);
    expectConsistentJumps(out.text);
  });
});

describe("both policies Local", () => {
  const sp = servicePort("ns1", "svc1", "p80", {
    type: "NodePort",
    clusterIP: "172.30.0.41",
    port: 80,
    nodePort: 3001,
    internalPolicyLocal: true,
    externalPolicyLocal: true,
  });

  test("the Cluster chain still exists for short-circuited pod and node traffic", () => {
    const out = generate([[sp, [endpoint("10.180.0.1", 80), local("10.180.0.2", 80)]]]);
    expect(chainRules(out.text, "nat", "KUBE-SERVICES")[0]).toEndWith("-j KUBE-SVL-XPGD46QRK7WJZT7O");
    expect(chainRules(out.text, "nat", "KUBE-SVC-XPGD46QRK7WJZT7O").filter((r) => r.includes("-j KUBE-SEP-"))).toHaveLength(2);
    expect(chainRules(out.text, "nat", "KUBE-SVL-XPGD46QRK7WJZT7O").filter((r) => r.includes("-j KUBE-SEP-"))).toHaveLength(1);
    expect(chainRules(out.text, "nat", "KUBE-EXT-XPGD46QRK7WJZT7O").at(-1)).toBe(
      "-A KUBE-EXT-XPGD46QRK7WJZT7O -j KUBE-SVL-XPGD46QRK7WJZT7O",
    );
    expectConsistentJumps(out.text);
  });

  test("with no local endpoint both internal and external traffic drop, but pods still short-circuit", () => {
    const out = generate([[sp, [endpoint("10.180.0.1", 80)]]]);
    expect(chainRules(out.text, "filter", "KUBE-SERVICES")).toEqual([
      `-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no local endpoints" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j DROP`,
    ]);
    expect(chainRules(out.text, "filter", "KUBE-EXTERNAL-SERVICES")).toHaveLength(1);
    expect(out.text).not.toContain("KUBE-SVL-");
    expect(chainRules(out.text, "nat", "KUBE-EXT-XPGD46QRK7WJZT7O")[0]).toContain("-s 10.0.0.0/8 -j KUBE-SVC-XPGD46QRK7WJZT7O");
    expectConsistentJumps(out.text);
  });
});

describe("no endpoints", () => {
  test("every address of the service rejects at once", () => {
    const sp = servicePort("ns1", "svc1", "p80", {
      type: "LoadBalancer",
      clusterIP: "172.30.0.41",
      port: 80,
      nodePort: 3001,
      externalIPs: ["192.168.99.11"],
      loadBalancerIPs: ["1.2.3.4"],
      loadBalancerSourceRanges: ["203.0.113.0/25"],
    });
    const notReady = endpoint("10.180.0.1", 80, { ready: false, serving: false });
    const out = generate([[sp, [notReady]]]);
    const comment = `-m comment --comment "ns1/svc1:p80 has no endpoints"`;
    expect(chainRules(out.text, "filter", "KUBE-SERVICES")).toEqual([
      `-A KUBE-SERVICES ${comment} -m tcp -p tcp -d 172.30.0.41 --dport 80 -j REJECT`,
    ]);
    expect(chainRules(out.text, "filter", "KUBE-EXTERNAL-SERVICES")).toEqual([
      `-A KUBE-EXTERNAL-SERVICES ${comment} -m tcp -p tcp -d 192.168.99.11 --dport 80 -j REJECT`,
      `-A KUBE-EXTERNAL-SERVICES ${comment} -m tcp -p tcp -d 1.2.3.4 --dport 80 -j REJECT`,
      `-A KUBE-EXTERNAL-SERVICES ${comment} -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j REJECT`,
    ]);
    // No nat rules at all for it, and no firewall chain.
    expect(out.text).not.toContain("ns1/svc1:p80 cluster IP");
    expect(chainRules(out.text, "nat", "KUBE-NODEPORTS")).toEqual([]);
    expect(chainRules(out.text, "filter", "KUBE-PROXY-FIREWALL")).toEqual([]);
    expect(out.text).not.toMatch(/KUBE-(SVC|EXT|FW|SEP)-/);
  });

  test("serving-terminating endpoints are used when none is ready", () => {
    const sp = servicePort("ns1", "svc1", "p80", { clusterIP: "172.30.0.41", port: 80 });
    const out = generate([[sp, [endpoint("10.180.0.1", 80, { ready: false, serving: true, terminating: true })]]]);
    expect(out.text).toContain("--to-destination 10.180.0.1:80");
    expect(chainRules(out.text, "filter", "KUBE-SERVICES")).toEqual([]);
  });
});

describe("load balancer source ranges", () => {
  const sp = servicePort("ns1", "svc1", "p80", {
    type: "LoadBalancer",
    clusterIP: "172.30.0.41",
    port: 80,
    nodePort: 3001,
    loadBalancerIPs: ["1.2.3.4", "5.6.7.8"],
    loadBalancerSourceRanges: ["192.168.0.0/24", " 203.0.113.0/25"],
  });

  test("LB IPs go through KUBE-FW; ranges, the node's own VIP traffic, then the drop marker", () => {
    const out = generate([[sp, [endpoint("10.180.0.1", 80)]]]);
    const fw = "KUBE-FW-XPGD46QRK7WJZT7O";
    const ext = "KUBE-EXT-XPGD46QRK7WJZT7O";
    const head = `-A ${fw} -m comment --comment "ns1/svc1:p80 loadbalancer IP"`;
    expect(chainRules(out.text, "nat", fw)).toEqual([
      `${head} -s 192.168.0.0/24 -j ${ext}`,
      `${head} -s 203.0.113.0/25 -j ${ext}`,
      // 192.168.0.0/24 contains the node IP, so the node looping back through its VIPs is let in.
      `${head} -s 1.2.3.4 -j ${ext}`,
      `${head} -s 5.6.7.8 -j ${ext}`,
      `-A ${fw} -m comment --comment "other traffic to ns1/svc1:p80 will be dropped by KUBE-PROXY-FIREWALL"`,
    ]);
    expect(chainRules(out.text, "filter", "KUBE-PROXY-FIREWALL")).toEqual([
      `-A KUBE-PROXY-FIREWALL -m comment --comment "ns1/svc1:p80 traffic not accepted by ${fw}" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP`,
      `-A KUBE-PROXY-FIREWALL -m comment --comment "ns1/svc1:p80 traffic not accepted by ${fw}" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j DROP`,
    ]);
    const services = chainRules(out.text, "nat", "KUBE-SERVICES");
    expect(services.filter((r) => r.includes("loadbalancer IP")).every((r) => r.endsWith(`-j ${fw}`))).toBe(true);
    // NodePorts bypass the source ranges (as upstream).
    expect(chainRules(out.text, "nat", "KUBE-NODEPORTS").every((r) => r.endsWith(`-j ${ext}`))).toBe(true);
    expectConsistentJumps(out.text);
  });

  test("without the node in any range, no VIP-source rules", () => {
    const out = generate([[sp, [endpoint("10.180.0.1", 80)]]], { nodeIPs: ["198.51.100.7"] });
    expect(chainRules(out.text, "nat", "KUBE-FW-XPGD46QRK7WJZT7O")).toHaveLength(3);
  });
});

describe("NodePorts", () => {
  const sp = servicePort("ns1", "svc1", "p80", { type: "NodePort", clusterIP: "172.30.0.41", port: 80, nodePort: 3001 });
  const eps = [endpoint("10.180.0.1", 80)];
  const jumpComment = `-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain"`;

  test("default: any local address, localhost included, and the KUBE-FIREWALL guard", () => {
    const out = generate([[sp, eps]], { nfacctCounters: { ctStateInvalidDropped: false, localhostNodePortsAccepted: false } });
    const services = chainRules(out.text, "nat", "KUBE-SERVICES");
    expect(services.at(-1)).toBe(`-A KUBE-SERVICES ${jumpComment} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`);
    expect(chainRules(out.text, "nat", "KUBE-NODEPORTS")).toEqual([
      `-A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-XPGD46QRK7WJZT7O`,
    ]);
    expect(chainRules(out.text, "filter", "KUBE-FIREWALL")).toHaveLength(1);
    expect(chainRules(out.text, "filter", "KUBE-FORWARD")[0]).toBe("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP");
  });

  test("localhostNodePorts off: localhost excluded, no KUBE-FIREWALL chain", () => {
    const out = generate([[sp, eps]], { localhostNodePorts: false });
    expect(chainRules(out.text, "nat", "KUBE-SERVICES").at(-1)).toBe(
      `-A KUBE-SERVICES ${jumpComment} -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS`,
    );
    expect(out.text).not.toContain("KUBE-FIREWALL");
    expect(out.text).not.toContain("localhost_nps_accepted_pkts");
  });

  test("nodePortAddresses: one jump per selected address of this family; loopback only with localhostNodePorts", () => {
    const addresses = ["192.168.0.2", "192.168.1.2", "127.0.0.1", "2001:db8::1"];
    const off = generate([[sp, eps]], { nodePortAddresses: addresses, localhostNodePorts: false });
    expect(chainRules(off.text, "nat", "KUBE-SERVICES").filter((r) => r.endsWith("-j KUBE-NODEPORTS"))).toEqual([
      `-A KUBE-SERVICES ${jumpComment} -d 192.168.0.2 -j KUBE-NODEPORTS`,
      `-A KUBE-SERVICES ${jumpComment} -d 192.168.1.2 -j KUBE-NODEPORTS`,
    ]);
    expect(off.text).not.toContain("KUBE-FIREWALL");

    const on = generate([[sp, eps]], { nodePortAddresses: addresses, localhostNodePorts: true });
    expect(chainRules(on.text, "nat", "KUBE-SERVICES").filter((r) => r.endsWith("-j KUBE-NODEPORTS"))).toHaveLength(3);
    expect(chainRules(on.text, "filter", "KUBE-FIREWALL")).toHaveLength(1);

    // Without a loopback address selected, localhost NodePorts are off whatever the flag says.
    const noLoopback = generate([[sp, eps]], { nodePortAddresses: ["192.168.0.2"], localhostNodePorts: true });
    expect(noLoopback.text).not.toContain("KUBE-FIREWALL");
    expect(noLoopback.text).not.toContain("127.0.0.0/8 --dport");
  });
});

describe("masquerading", () => {
  const sp = servicePort("ns1", "svc1", "p80", { clusterIP: "172.30.0.41", port: 80 });
  const eps = [endpoint("10.180.0.1", 80)];
  const masqRule = (text: string) =>
    chainRules(text, "nat", "KUBE-SVC-XPGD46QRK7WJZT7O").filter((r) => r.endsWith("-j KUBE-MARK-MASQ"));

  test("masqueradeAll marks every ClusterIP packet", () => {
    expect(masqRule(generate([[sp, eps]], { masqueradeAll: true }).text)).toEqual([
      `-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-MARK-MASQ`,
    ]);
  });

  test("detect-local modes", () => {
    expect(masqRule(generate([[sp, eps]], { detectLocalMode: "NodeCIDR" }).text)[0]).toContain("! -s 10.0.0.0/24 -j");
    expect(
      masqRule(generate([[sp, eps]], { detectLocalMode: "BridgeInterface", bridgeInterface: "cbr0" }).text)[0],
    ).toContain("! -i cbr0 -j");
    expect(
      masqRule(generate([[sp, eps]], { detectLocalMode: "InterfaceNamePrefix", interfaceNamePrefix: "veth" }).text)[0],
    ).toContain("! -i veth+ -j");
    // Nothing to tell pods apart with: no ClusterIP masquerade rule, as upstream.
    expect(masqRule(generate([[sp, eps]], { clusterCIDRs: [] }).text)).toEqual([]);
  });

  test("masqueradeBit sets the mark everywhere", () => {
    expect(masqueradeMark(14)).toBe("0x4000");
    expect(masqueradeMark(0)).toBe("0x1");
    const text = generate([[sp, eps]], { masqueradeBit: 4 }).text;
    expect(text).toContain("-A KUBE-MARK-MASQ -j MARK --or-mark 0x10\n");
    expect(text).toContain("-A KUBE-POSTROUTING -m mark ! --mark 0x10/0x10 -j RETURN\n");
    expect(text).toContain("-A KUBE-POSTROUTING -j MARK --xor-mark 0x10\n");
    expect(text).toContain("--mark 0x10/0x10 -j ACCEPT\n");
    expect(text).not.toContain("0x4000");
  });

  test("random-fully and tcp_be_liberal", () => {
    const text = generate([[sp, eps]], { randomFully: true, conntrackTCPLiberal: true }).text;
    expect(text).toContain(`-j MASQUERADE --random-fully\n`);
    expect(text).not.toContain("--ctstate INVALID");
  });
});

describe("IPv6", () => {
  const sp = servicePort("ns1", "svc1", "p80", {
    type: "NodePort",
    clusterIP: "fd00:172:30::41",
    port: 80,
    nodePort: 3001,
  });
  const v4 = servicePort("ns2", "svc2", "p80", { clusterIP: "172.30.0.42", port: 80 });

  test("same rules with IPv6 addresses, bracketed DNAT targets and no localhost NodePorts", () => {
    const out = generate(
      [
        [sp, [endpoint("fd00:10:180::1", 80), endpoint("fd00:10:180::2:1", 80)]],
        [v4, [endpoint("10.180.0.2", 80)]],
      ],
      {},
      "IPv6",
    );
    expect(out.counts.servicePorts).toBe(1);
    expect(out.text).not.toContain("172.30.0.42");
    expect(out.text).toContain(
      `-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d fd00:172:30::41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O\n`,
    );
    expect(out.text).toContain(`! -s fd00:10::/64 -j KUBE-MARK-MASQ\n`);
    expect(out.text).toMatch(/-s fd00:10:180::1 -j KUBE-MARK-MASQ\n/);
    expect(out.text).toContain("-j DNAT --to-destination [fd00:10:180::1]:80\n");
    expect(out.text).toContain(`"ns1/svc1:p80 -> [fd00:10:180::2:1]:80"`);
    expect(chainRules(out.text, "nat", "KUBE-SERVICES").at(-1)).toContain("-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS");
    expect(out.text).not.toContain("KUBE-FIREWALL");
    expect(out.text).not.toContain("127.0.0.0/8");
    expectConsistentJumps(out.text);
  });
});

describe("large cluster mode", () => {
  test("above the threshold, per-endpoint rules lose their comments", () => {
    const sp = servicePort("ns1", "svc1", "p80", { clusterIP: "172.30.0.41", port: 80 });
    const eps = [endpoint("10.180.0.1", 80), endpoint("10.180.0.2", 80)];
    const small = generate([[sp, eps]], { largeClusterEndpointsThreshold: 2 });
    expect(small.counts.largeClusterMode).toBe(false);
    const large = generate([[sp, eps]], { largeClusterEndpointsThreshold: 1 });
    expect(large.counts.largeClusterMode).toBe(true);
    expect(large.text).toContain("-A KUBE-SEP-SXIVWICOYRO3J4NJ -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80\n");
    expect(large.text).toContain("-A KUBE-SEP-SXIVWICOYRO3J4NJ -s 10.180.0.1 -j KUBE-MARK-MASQ\n");
    expect(large.text).toContain("-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-SXIVWICOYRO3J4NJ\n");
    expect(large.text).not.toContain("->");
    // The ClusterIP rules keep theirs.
    expect(large.text).toContain(`"ns1/svc1:p80 cluster IP"`);
  });
});

describe("partial generation", () => {
  const entries: [ServicePort, Endpoint[]][] = [
    [servicePort("ns1", "svc1", "p80", { clusterIP: "172.30.0.41", port: 80 }), [endpoint("10.180.0.1", 80)]],
    [
      servicePort("ns2", "svc2", "p80", {
        type: "LoadBalancer",
        clusterIP: "172.30.0.42",
        port: 80,
        nodePort: 3001,
        loadBalancerIPs: ["1.2.3.4"],
        loadBalancerSourceRanges: ["192.168.0.0/16"],
        externalIPs: ["192.168.99.22"],
        externalPolicyLocal: true,
        healthCheckNodePort: 30000,
        sessionAffinity: { type: "ClientIP", timeoutSeconds: 60 },
      }),
      [endpoint("10.180.0.2", 80), local("10.180.0.3", 80)],
    ],
    [
      servicePort("ns3", "svc3", "dns", { clusterIP: "172.30.0.43", port: 53, protocol: "UDP", internalPolicyLocal: true }),
      [local("10.180.0.4", 53), endpoint("10.180.0.5", 53)],
    ],
    [
      servicePort("ns4", "svc4", "p80", { type: "NodePort", clusterIP: "172.30.0.44", port: 80, nodePort: 3004, externalIPs: ["192.168.99.44"] }),
      [endpoint("10.180.0.6", 80), endpoint("10.180.0.7", 80), endpoint("10.180.0.8", 80)],
    ],
    [servicePort("ns5", "svc5", "", { clusterIP: "172.30.0.45", port: 80 }), []],
  ];

  test("counts what stays in the kernel exactly as a full generation would", () => {
    for (const options of [{}, { clusterCIDRs: [] }, { nodeIPs: [] }, { masqueradeAll: true }]) {
      const whole = generate(entries, options);
      expectConsistentJumps(whole.text);
      for (const [sp] of entries) {
        const partial = generateRules(snapshot(entries), "IPv4", { ...fakeProxierOptions, ...options }, {
          ...full,
          changed: new Set([sp.key]),
        });
        expect(partial.counts.natRulesTotal).toBe(whole.counts.natRulesTotal);
        expect(partial.activeNatChains).toEqual(whole.activeNatChains);
      }
      const none = generateRules(snapshot(entries), "IPv4", { ...fakeProxierOptions, ...options }, {
        ...full,
        changed: new Set(),
      });
      expect(none.counts.natRulesTotal).toBe(whole.counts.natRulesTotal);
    }
  });

  test("one changed service port: top-level chains complete, only its own chains declared", () => {
    const [changedSp] = entries[1] ?? [];
    if (changedSp === undefined) throw new Error("fixture");
    const whole = generate(entries);
    const partial = generateRules(snapshot(entries), "IPv4", fakeProxierOptions, {
      ...full,
      changed: new Set([changedSp.key]),
      existingChains: whole.activeNatChains,
    });
    for (const table of ["filter", "nat"] as const) {
      for (const chain of ["KUBE-SERVICES", "KUBE-NODEPORTS"]) {
        expect(chainRules(partial.text, table, chain)).toEqual(chainRules(whole.text, table, chain));
      }
    }
    const declared = [...partial.text.matchAll(/^:(KUBE-(?:SVC|SVL|EXT|FW|SEP)-\S+)/gm)].map((m) => m[1]);
    expect(declared.toSorted()).toEqual(
      [
        "KUBE-SVC-GNZBNJ2PO5MGZ6GT",
        "KUBE-SVL-GNZBNJ2PO5MGZ6GT",
        "KUBE-EXT-GNZBNJ2PO5MGZ6GT",
        "KUBE-FW-GNZBNJ2PO5MGZ6GT",
        ...[...whole.activeNatChains].filter((c) => c.startsWith("KUBE-SEP-") && whole.text.includes(`-A ${c} -m comment --comment ns2/svc2:p80 `)),
      ].toSorted(),
    );
    // Every chain of the changed service is written with the same rules as in the full text.
    for (const chain of declared) expect(chainRules(partial.text, "nat", chain ?? "")).toEqual(chainRules(whole.text, "nat", chain ?? ""));
    expect(partial.deletedChains).toEqual([]);
    expect(partial.counts.natRules).toBeLessThan(whole.counts.natRules);
  });

  test("existing chains of other tables' owners are never deleted", () => {
    const out = generate(entries);
    const again = generateRules(snapshot(entries), "IPv4", fakeProxierOptions, {
      ...full,
      existingChains: [...out.activeNatChains, "DOCKER", "KUBE-MARK-DROP", "KUBE-SEP-STALESTALESTALE1", "KUBE-KUBELET-CANARY"],
    });
    expect(again.deletedChains).toEqual(["KUBE-SEP-STALESTALESTALE1"]);
    expect(again.text).toContain(":KUBE-SEP-STALESTALESTALE1 - [0:0]\n");
    expect(again.text).toContain("-X KUBE-SEP-STALESTALESTALE1\n");
    expect(again.counts.natRules).toBe(out.counts.natRules);
  });
});

describe("topLevelText", () => {
  test("holds exactly the top-level chains of the full text, in the same order", () => {
    const sps = [
      servicePort("ns1", "a", "p80", { type: "NodePort", clusterIP: "172.30.0.41", port: 80, nodePort: 3001, externalIPs: ["192.168.99.1"] }),
      servicePort("ns1", "b", "p80", { clusterIP: "172.30.0.42", port: 80 }),
      servicePort("ns1", "c", "p53", { clusterIP: "172.30.0.43", port: 53, protocol: "UDP", internalPolicyLocal: true }),
    ];
    const entries: [ServicePort, Endpoint[]][] = [
      [sps[0] as ServicePort, [endpoint("10.180.0.1", 80)]],
      [sps[1] as ServicePort, []],
      [sps[2] as ServicePort, [endpoint("10.180.0.2", 53)]],
    ];
    const topLevel = (chain: string) => !/^KUBE-(SVC|SVL|EXT|FW|SEP)-/.test(chain);
    for (const options of [{}, { localhostNodePorts: true, nodePortAddresses: "all" as const }, { masqueradeAll: true }]) {
      const out = generate(entries, options);
      const contents = chainContents(out.topLevelText(), topLevel);
      expect(contents).toEqual(chainContents(out.text, topLevel));
      expect(contents.get("nat KUBE-SERVICES")).toContain("172.30.0.41");
      expect([...chainContents(out.topLevelText(), () => true).keys()].filter((k) => !topLevel(k.split(" ")[1] ?? ""))).toEqual([]);
    }
  });
});

describe("reuse between generations", () => {
  const sp = servicePort("ns1", "svc1", "p80", { type: "NodePort", clusterIP: "172.30.0.41", port: 80, nodePort: 3001 });
  const options: RuleOptions = { ...fakeProxierOptions };

  test("a new endpoint list, node, options or large-cluster mode is reflected even for the same service port object", () => {
    const first = generateRules(snapshot([[sp, [endpoint("10.180.0.1", 80)]]]), "IPv4", options, full);
    const same = generateRules(snapshot([[sp, [endpoint("10.180.0.1", 80)]]]), "IPv4", options, full);
    expect(same.text).toBe(first.text);

    const moved = generateRules(snapshot([[sp, [endpoint("10.180.0.9", 80)]]]), "IPv4", options, full);
    expect(moved.text).toContain("--to-destination 10.180.0.9:80");
    expect(moved.text).not.toContain("10.180.0.1");

    const eps = [endpoint("10.180.0.1", 80)];
    const masqAll = generateRules(snapshot([[sp, eps]]), "IPv4", { ...options, masqueradeAll: true }, full);
    expect(masqAll.text).toContain("--dport 80 -j KUBE-MARK-MASQ\n");

    const nodeCIDR = { ...options, detectLocalMode: "NodeCIDR" as const };
    const a = generateRules(snapshot([[sp, eps]]), "IPv4", nodeCIDR, full);
    const b = generateRules(snapshot([[sp, eps]], { ...testNode, podCIDRs: ["10.9.0.0/24"] }), "IPv4", nodeCIDR, full);
    expect(a.text).toContain("! -s 10.0.0.0/24");
    expect(b.text).toContain("! -s 10.9.0.0/24");

    const large = generateRules(snapshot([[sp, eps]]), "IPv4", { ...options, largeClusterEndpointsThreshold: 0 }, full);
    expect(large.text).not.toContain("--comment ns1/svc1:p80 -s 10.180.0.1");
    expect(large.text).toContain("-s 10.180.0.1 -j KUBE-MARK-MASQ");
  });

  test("options compare by value", () => {
    expect(sameRuleOptions(options, { ...options, clusterCIDRs: [...options.clusterCIDRs] })).toBe(true);
    expect(sameRuleOptions(options, { ...options, nfacctCounters: { ...options.nfacctCounters } })).toBe(true);
    expect(sameRuleOptions(options, { ...options, clusterCIDRs: ["10.0.0.0/16"] })).toBe(false);
    expect(sameRuleOptions(options, { ...options, nodePortAddresses: ["192.168.0.2"] })).toBe(false);
    expect(sameRuleOptions(options, { ...options, nfacctCounters: { ...options.nfacctCounters, ctStateInvalidDropped: false } })).toBe(false);
    expect(sameRuleOptions(options, { ...options, masqueradeBit: 15 })).toBe(false);
  });

  test("the same endpoint IP with another port gets its own chain", () => {
    const a = generateRules(snapshot([[sp, [endpoint("10.180.0.1", 80)]]]), "IPv4", options, full);
    const b = generateRules(snapshot([[sp, [endpoint("10.180.0.1", 8080)]]]), "IPv4", options, full);
    expect(a.text).toContain("KUBE-SEP-SXIVWICOYRO3J4NJ");
    expect(b.text).not.toContain("KUBE-SEP-SXIVWICOYRO3J4NJ");
    expect(b.text).toContain("--to-destination 10.180.0.1:8080");
  });
});

describe("jump rules", () => {
  test("upstream's jumps from built-in chains, as data for the apply path", () => {
    const nat = JUMP_RULES.filter((j) => j.table === "nat").map((j) => [j.chain, ...j.args].join(" "));
    expect(nat).toEqual([
      "OUTPUT -m comment --comment kubernetes service portals -j KUBE-SERVICES",
      "PREROUTING -m comment --comment kubernetes service portals -j KUBE-SERVICES",
      "POSTROUTING -m comment --comment kubernetes postrouting rules -j KUBE-POSTROUTING",
    ]);
    const forwardExternal = JUMP_RULES.find((j) => j.table === "filter" && j.chain === "FORWARD" && j.target === "KUBE-EXTERNAL-SERVICES");
    expect(forwardExternal?.args).toEqual([
      "-m",
      "conntrack",
      "--ctstate",
      "NEW",
      "-m",
      "comment",
      "--comment",
      "kubernetes externally-visible service portals",
      "-j",
      "KUBE-EXTERNAL-SERVICES",
    ]);
    expect(JUMP_RULES).toHaveLength(12);
    for (const j of JUMP_RULES) expect(j.args.at(-1)).toBe(j.target);
    expect(KUBELET_JUMP_RULES.map((j) => j.args)).toEqual([
      ["-j", "KUBE-FIREWALL"],
      ["-j", "KUBE-FIREWALL"],
    ]);
  });
});

describe("released own-chain text", () => {
  test("is not kept after a generation; the same snapshot generates the same text again, and a partial one sees no change", () => {
    const sp = servicePort("ns", "web", "http", { clusterIP: "10.96.0.10", port: 80 });
    const world = snapshot([[sp, [endpoint("10.180.0.1", 80), endpoint("10.180.0.2", 80)]]]);
    const first = generateRules(world, "IPv4", fakeProxierOptions, full);
    const kept = first.memory.byKey.get(sp.key);
    expect(kept?.natRules).toBe("");
    expect(kept?.natChains).toBe("");
    expect(typeof kept?.natDigest).toBe("bigint");
    expect(generateRules(world, "IPv4", fakeProxierOptions, full).text).toBe(first.text);
    // An equal but new endpoint list: the rendering is compared by hash with the released one.
    const again = snapshot([[sp, [endpoint("10.180.0.1", 80), endpoint("10.180.0.2", 80)]]]);
    const partial = generateRules(again, "IPv4", fakeProxierOptions, { changed: new Set([sp.key]), previous: first.memory });
    expect(partial.text).toBe("");
    const moved = snapshot([[sp, [endpoint("10.180.0.1", 80), endpoint("10.180.0.3", 80)]]]);
    const changed = generateRules(moved, "IPv4", fakeProxierOptions, { changed: new Set([sp.key]), previous: partial.memory });
    expect(changed.text).toContain("--to-destination 10.180.0.3:80");
  });
});
