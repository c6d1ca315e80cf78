import { describe, expect, test } from "bun:test";
import { parseService } from "../../src/model/objects.ts";
import { servicePortsOf } from "../../src/model/service.ts";
import type { ServicePort } from "../../src/model/types.ts";
import { service } from "./builders.ts";

function ports(obj: Record<string, unknown>): ServicePort[] {
  const r = parseService(obj);
  if (!r.ok) throw new Error(r.reason);
  return servicePortsOf(r.value);
}

describe("servicePortsOf", () => {
  test("a ClusterIP service with one named port", () => {
    const [p, ...rest] = ports(service("web"));
    expect(rest).toHaveLength(0);
    expect(p).toMatchObject({
      key: "IPv4/ns/web:http/TCP",
      servicePortName: "ns/web:http",
      portName: "http",
      family: "IPv4",
      type: "ClusterIP",
      clusterIP: "10.96.0.10",
      port: 80,
      nodePort: 0,
      targetPort: 8080,
      externalPolicyLocal: false,
      internalPolicyLocal: false,
      healthCheckNodePort: 0,
      sessionAffinity: { type: "None" },
    });
  });

  test("an unnamed port uses ns/name as the service port name", () => {
    const [p] = ports(service("dns", { ports: [{ protocol: "UDP", port: 53 }] }));
    expect(p?.key).toBe("IPv4/ns/dns:/UDP");
    expect(p?.servicePortName).toBe("ns/dns");
    expect(p?.targetPort).toBe(53);
  });

  test("dual-stack: one service port per family with that family's addresses", () => {
    const list = ports(
      service(
        "dual",
        {
          clusterIP: "10.96.0.20",
          clusterIPs: ["10.96.0.20", "FD00::0020"],
          ipFamilies: ["IPv4", "IPv6"],
          externalIPs: ["192.0.2.1", "2001:db8::1"],
          loadBalancerSourceRanges: [" 192.0.2.0/24", "2001:db8::/64"],
          type: "LoadBalancer",
          ports: [{ name: "http", port: 80, nodePort: 30080 }],
        },
        { status: { loadBalancer: { ingress: [{ ip: "198.51.100.1" }, { ip: "2001:db8::2", ipMode: "VIP" }] } } },
      ),
    );
    expect(list.map((p) => p.key)).toEqual(["IPv4/ns/dual:http/TCP", "IPv6/ns/dual:http/TCP"]);
    const [v4, v6] = list;
    expect(v4).toMatchObject({ clusterIP: "10.96.0.20", externalIPs: ["192.0.2.1"], loadBalancerIPs: ["198.51.100.1"], loadBalancerSourceRanges: ["192.0.2.0/24"] });
    expect(v6).toMatchObject({ clusterIP: "fd00::20", externalIPs: ["2001:db8::1"], loadBalancerIPs: ["2001:db8::2"], loadBalancerSourceRanges: ["2001:db8::/64"] });
    expect(v6?.nodePort).toBe(30080);
  });

  test("a single-stack IPv6 service has only an IPv6 port", () => {
    expect(ports(service("v6", { clusterIP: "fd00::10" })).map((p) => p.family)).toEqual(["IPv6"]);
  });

  test("load-balancer ingress with ipMode Proxy or only a hostname is ignored", () => {
    const [p] = ports(
      service("lb", { type: "LoadBalancer" }, { status: { loadBalancer: { ingress: [{ ip: "203.0.113.1", ipMode: "Proxy" }, { hostname: "lb.example" }, { ip: "203.0.113.2" }] } } }),
    );
    expect(p?.loadBalancerIPs).toEqual(["203.0.113.2"]);
  });

  test("source ranges come from the annotation only when the spec has none", () => {
    const annotated = { metadata: { annotations: { "service.beta.kubernetes.io/load-balancer-source-ranges": "10.0.0.0/8, 192.168.0.0/16,bogus" } } };
    expect(ports(service("a", { type: "LoadBalancer" }, annotated))[0]?.loadBalancerSourceRanges).toEqual(["10.0.0.0/8", "192.168.0.0/16"]);
    expect(ports(service("b", { type: "LoadBalancer", loadBalancerSourceRanges: ["172.16.0.0/12"] }, annotated))[0]?.loadBalancerSourceRanges).toEqual([
      "172.16.0.0/12",
    ]);
  });

  test("named target ports are kept as names", () => {
    expect(ports(service("n", { ports: [{ name: "dns", protocol: "UDP", port: 53, targetPort: "dns-udp" }] }))[0]?.targetPort).toBe("dns-udp");
  });

  test("traffic policies and health check node port", () => {
    const [lb] = ports(service("lb", { type: "LoadBalancer", externalTrafficPolicy: "Local", internalTrafficPolicy: "Local", healthCheckNodePort: 32000 }));
    expect(lb).toMatchObject({ externalPolicyLocal: true, internalPolicyLocal: true, healthCheckNodePort: 32000 });
    // externalTrafficPolicy means nothing for a service no external traffic reaches.
    const [internal] = ports(service("c", { externalTrafficPolicy: "Local", healthCheckNodePort: 32001 }));
    expect(internal).toMatchObject({ externalPolicyLocal: false, healthCheckNodePort: 0 });
    // ...but a ClusterIP service with external IPs is reachable from outside.
    expect(ports(service("e", { externalTrafficPolicy: "Local", externalIPs: ["192.0.2.9"] }))[0]?.externalPolicyLocal).toBe(true);
    // NodePort with Local policy: no health check port (only LoadBalancer needs one).
    expect(ports(service("np", { type: "NodePort", externalTrafficPolicy: "Local", healthCheckNodePort: 32002 }))[0]?.healthCheckNodePort).toBe(0);
  });

  test("ClientIP affinity defaults its timeout to 10800 s", () => {
    expect(ports(service("a", { sessionAffinity: "ClientIP" }))[0]?.sessionAffinity).toEqual({ type: "ClientIP", timeoutSeconds: 10800 });
    expect(ports(service("b", { sessionAffinity: "ClientIP", sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } } }))[0]?.sessionAffinity).toEqual({
      type: "ClientIP",
      timeoutSeconds: 60,
    });
  });

  test("headless, ExternalName and IP-less services have no ports", () => {
    expect(ports(service("h", { clusterIP: "None" }))).toEqual([]);
    expect(ports(service("h2", { clusterIP: "None", clusterIPs: ["None"] }))).toEqual([]);
    expect(ports(service("x", { type: "ExternalName", externalName: "example.com", clusterIP: "" }))).toEqual([]);
    expect(ports(service("none", { clusterIP: undefined }))).toEqual([]);
  });

  test("multiple ports each get their own key", () => {
    const list = ports(service("m", { ports: [{ name: "http", port: 80 }, { name: "dns", protocol: "UDP", port: 53 }] }));
    expect(list.map((p) => p.key)).toEqual(["IPv4/ns/m:http/TCP", "IPv4/ns/m:dns/UDP"]);
  });
});

test("an ipMode kproxy does not know is accepted and treated as not VIP", () => {
  const [p] = ports(service("lb", { type: "LoadBalancer" }, { status: { loadBalancer: { ingress: [{ ip: "203.0.113.1", ipMode: "Passthrough" }] } } }));
  expect(p?.loadBalancerIPs).toEqual([]);
});
