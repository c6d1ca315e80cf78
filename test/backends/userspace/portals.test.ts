import { describe, expect, test } from "bun:test";
import { KUBE_NODEPORT_CONTAINER, KUBE_PORTALS_CONTAINER, PORTAL_JUMPS, type PortalTarget, portalRules } from "../../../src/backends/userspace/portals.ts";

const web: PortalTarget = {
  servicePortName: "ns1/web:http",
  protocol: "TCP",
  clusterIP: "10.96.0.10",
  port: 80,
  externalIPs: [],
  loadBalancerIPs: [],
  nodePort: 30080,
  proxyPort: 40001,
  externalProxyPort: 40001,
};

const dns: PortalTarget = {
  servicePortName: "kube-system/dns:dns",
  protocol: "UDP",
  clusterIP: "10.96.0.53",
  port: 53,
  externalIPs: [],
  loadBalancerIPs: [],
  nodePort: 0,
  proxyPort: 40002,
  externalProxyPort: 40002,
};

const lb: PortalTarget = {
  servicePortName: "ns2/lb",
  protocol: "TCP",
  clusterIP: "10.96.0.20",
  port: 443,
  externalIPs: ["203.0.113.7"],
  loadBalancerIPs: ["198.51.100.9"],
  nodePort: 31443,
  proxyPort: 40003,
  externalProxyPort: 40004,
};

describe("portal rules", () => {
  test("ClusterIP, externalIP, LoadBalancer IP and NodePort rules, relays on every address (upstream's layout)", () => {
    const rules = portalRules([web, lb, dns], { family: "IPv4", listenIP: "0.0.0.0", hostIP: "172.30.0.1" });
    expect(rules.text).toBe(
      [
        "*nat",
        ":KUBE-PORTALS-CONTAINER - [0:0]",
        ":KUBE-PORTALS-HOST - [0:0]",
        ":KUBE-NODEPORT-CONTAINER - [0:0]",
        ":KUBE-NODEPORT-HOST - [0:0]",
        '-A KUBE-PORTALS-CONTAINER -m comment --comment "kube-system/dns:dns" -p udp -m udp --dport 53 -d 10.96.0.53/32 -j REDIRECT --to-ports 40002',
        '-A KUBE-PORTALS-CONTAINER -m comment --comment "ns1/web:http" -p tcp -m tcp --dport 80 -d 10.96.0.10/32 -j REDIRECT --to-ports 40001',
        '-A KUBE-PORTALS-CONTAINER -m comment --comment "ns2/lb" -p tcp -m tcp --dport 443 -d 10.96.0.20/32 -j REDIRECT --to-ports 40003',
        '-A KUBE-PORTALS-CONTAINER -m comment --comment "ns2/lb" -p tcp -m tcp --dport 443 -d 203.0.113.7/32 -m physdev ! --physdev-is-in -j REDIRECT --to-ports 40004',
        '-A KUBE-PORTALS-CONTAINER -m comment --comment "ns2/lb" -p tcp -m tcp --dport 443 -d 203.0.113.7/32 -m addrtype --dst-type LOCAL -j REDIRECT --to-ports 40004',
        '-A KUBE-PORTALS-CONTAINER -m comment --comment "ns2/lb" -p tcp -m tcp --dport 443 -d 198.51.100.9/32 -j REDIRECT --to-ports 40004',
        '-A KUBE-PORTALS-HOST -m comment --comment "kube-system/dns:dns" -p udp -m udp --dport 53 -d 10.96.0.53/32 -j DNAT --to-destination 172.30.0.1:40002',
        '-A KUBE-PORTALS-HOST -m comment --comment "ns1/web:http" -p tcp -m tcp --dport 80 -d 10.96.0.10/32 -j DNAT --to-destination 172.30.0.1:40001',
        '-A KUBE-PORTALS-HOST -m comment --comment "ns2/lb" -p tcp -m tcp --dport 443 -d 10.96.0.20/32 -j DNAT --to-destination 172.30.0.1:40003',
        '-A KUBE-PORTALS-HOST -m comment --comment "ns2/lb" -p tcp -m tcp --dport 443 -d 203.0.113.7/32 -m addrtype --dst-type LOCAL -j DNAT --to-destination 172.30.0.1:40004',
        '-A KUBE-PORTALS-HOST -m comment --comment "ns2/lb" -p tcp -m tcp --dport 443 -d 198.51.100.9/32 -j DNAT --to-destination 172.30.0.1:40004',
        '-A KUBE-NODEPORT-CONTAINER -m comment --comment "ns1/web:http" -p tcp -m tcp --dport 30080 -j REDIRECT --to-ports 40001',
        '-A KUBE-NODEPORT-CONTAINER -m comment --comment "ns2/lb" -p tcp -m tcp --dport 31443 -j REDIRECT --to-ports 40004',
        '-A KUBE-NODEPORT-HOST -m comment --comment "ns1/web:http" -p tcp -m tcp --dport 30080 -j DNAT --to-destination 172.30.0.1:40001',
        '-A KUBE-NODEPORT-HOST -m comment --comment "ns2/lb" -p tcp -m tcp --dport 31443 -j DNAT --to-destination 172.30.0.1:40004',
        "COMMIT",
        "*filter",
        ":KUBE-NODEPORT-NON-LOCAL - [0:0]",
        '-A KUBE-NODEPORT-NON-LOCAL -m comment --comment "ns1/web:http" -p tcp -m tcp --dport 40001 -m state --state NEW -j ACCEPT',
        '-A KUBE-NODEPORT-NON-LOCAL -m comment --comment "ns2/lb" -p tcp -m tcp --dport 40004 -m state --state NEW -j ACCEPT',
        "COMMIT",
        "",
      ].join("\n"),
    );
    expect(rules.natRules).toBe(15);
    expect(rules.filterRules).toBe(2);
  });

  test("relays bound to one address are DNATed to it from containers and from the host", () => {
    const { text } = portalRules([web], { family: "IPv4", listenIP: "192.168.0.2", hostIP: "172.30.0.1" });
    expect(text).toContain('-A KUBE-PORTALS-CONTAINER -m comment --comment "ns1/web:http" -p tcp -m tcp --dport 80 -d 10.96.0.10/32 -j DNAT --to-destination 192.168.0.2:40001\n');
    expect(text).toContain('-A KUBE-PORTALS-HOST -m comment --comment "ns1/web:http" -p tcp -m tcp --dport 80 -d 10.96.0.10/32 -j DNAT --to-destination 192.168.0.2:40001\n');
    expect(text).not.toContain("REDIRECT");
  });

  test("IPv6: /128 destinations and bracketed DNAT targets", () => {
    const v6: PortalTarget = { ...web, servicePortName: "ns1/web6:http", clusterIP: "fd00:96::10" };
    const { text } = portalRules([v6], { family: "IPv6", listenIP: "::", hostIP: "fd00:30::1" });
    expect(text).toContain("--dport 80 -d fd00:96::10/128 -j REDIRECT --to-ports 40001\n");
    expect(text).toContain("--dport 80 -d fd00:96::10/128 -j DNAT --to-destination [fd00:30::1]:40001\n");
    expect(text).toContain("--dport 30080 -j DNAT --to-destination [fd00:30::1]:40001\n");
  });

  test("no services still declares (and so empties) every chain", () => {
    const { text, natRules, filterRules } = portalRules([], { family: "IPv4", listenIP: "0.0.0.0", hostIP: "10.0.0.1" });
    expect(text).toBe(
      "*nat\n:KUBE-PORTALS-CONTAINER - [0:0]\n:KUBE-PORTALS-HOST - [0:0]\n:KUBE-NODEPORT-CONTAINER - [0:0]\n:KUBE-NODEPORT-HOST - [0:0]\nCOMMIT\n*filter\n:KUBE-NODEPORT-NON-LOCAL - [0:0]\nCOMMIT\n",
    );
    expect([natRules, filterRules]).toEqual([0, 0]);
  });

  test("a service without a ClusterIP gets only its NodePort rules", () => {
    const { text } = portalRules([{ ...web, clusterIP: "None" }], { family: "IPv4", listenIP: "0.0.0.0", hostIP: "10.0.0.1" });
    expect(text).not.toContain("KUBE-PORTALS-CONTAINER -m");
    expect(text).toContain(`-A ${KUBE_NODEPORT_CONTAINER} `);
  });

  test("jumps: portals first in PREROUTING/OUTPUT, NodePorts appended last, non-local accept first in INPUT", () => {
    expect(PORTAL_JUMPS.map((j) => `${j.table} ${j.position} ${j.chain} ${j.args.join(" ")}`)).toEqual([
      `nat prepend PREROUTING -m comment --comment handle ClusterIPs; NOTE: this must be before the NodePort rules -j ${KUBE_PORTALS_CONTAINER}`,
      "nat prepend OUTPUT -m comment --comment handle ClusterIPs; NOTE: this must be before the NodePort rules -j KUBE-PORTALS-HOST",
      "nat append PREROUTING -m addrtype --dst-type LOCAL -m comment --comment handle service NodePorts; NOTE: this must be the last rule in the chain -j KUBE-NODEPORT-CONTAINER",
      "nat append OUTPUT -m addrtype --dst-type LOCAL -m comment --comment handle service NodePorts; NOTE: this must be the last rule in the chain -j KUBE-NODEPORT-HOST",
      "filter prepend INPUT -m comment --comment Ensure that non-local NodePort traffic can flow -j KUBE-NODEPORT-NON-LOCAL",
    ]);
  });
});
