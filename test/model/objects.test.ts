import { describe, expect, test } from "bun:test";
import { objectId, parseEndpointSlice, parseNode, parseService } from "../../src/model/objects.ts";
import { service, slice } from "./builders.ts";

function withSpec(patch: Record<string, unknown>): Record<string, unknown> {
  const svc = service("web");
  return { ...svc, spec: { ...(svc["spec"] as object), ...patch } };
}

describe("parseService", () => {
  test("accepts a minimal service and fills defaults", () => {
    const r = parseService({ metadata: { name: "a" }, spec: { clusterIP: "10.0.0.1", ports: [{ port: 53 }] } });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.value.metadata.namespace).toBe("default");
    expect(r.value.spec.type).toBe("ClusterIP");
    expect(r.value.spec.sessionAffinity).toBe("None");
    expect(r.value.spec.ports?.[0]?.protocol).toBe("TCP");
  });

  test("accepts unknown fields (and drops them)", () => {
    const r = parseService({ ...service("web"), futureField: { x: 1 }, spec: { ...(service("web")["spec"] as object), newThing: true } });
    expect(r.ok).toBe(true);
    if (r.ok) expect((r.value as Record<string, unknown>)["futureField"]).toBeUndefined();
  });

  const bad: [string, Record<string, unknown>, string][] = [
    ["invalid cluster IP", withSpec({ clusterIP: "10.0.0.300" }), 'spec.clusterIP: '],
    ["port out of range", withSpec({ ports: [{ port: 70000 }] }), "spec.ports[0].port"],
    ["port zero", withSpec({ ports: [{ port: 0 }] }), "spec.ports[0].port"],
    ["fractional port", withSpec({ ports: [{ port: 80.5 }] }), "spec.ports[0].port"],
    ["unknown protocol", withSpec({ ports: [{ port: 80, protocol: "ICMP" }] }), 'spec.ports[0].protocol'],
    ["invalid external IP", withSpec({ externalIPs: ["1.2.3.4", "nope"] }), 'spec.externalIPs[1]'],
    ["invalid source range", withSpec({ loadBalancerSourceRanges: ["10.0.0.0/33"] }), "spec.loadBalancerSourceRanges[0]"],
    ["unknown type", withSpec({ type: "Magic" }), "spec.type"],
    ["too many ports", withSpec({ ports: Array.from({ length: 1001 }, (_, i) => ({ name: `p${i}`, port: (i % 60000) + 1 })) }), "spec.ports"],
    ["duplicate port names", withSpec({ ports: [{ name: "a", port: 1 }, { name: "a", port: 2 }] }), "spec.ports[1].name"],
    ["unnamed port among several", withSpec({ ports: [{ name: "a", port: 1 }, { port: 2 }] }), "spec.ports[1].name"],
    ["affinity timeout out of range", withSpec({ sessionAffinity: "ClientIP", sessionAffinityConfig: { clientIP: { timeoutSeconds: 0 } } }), "timeoutSeconds"],
    ["missing name", { metadata: { namespace: "ns" }, spec: {} }, "metadata.name"],
    ["giant name", { metadata: { name: "x".repeat(5000), namespace: "ns" }, spec: {} }, "metadata.name"],
    ["missing spec", { metadata: { name: "a", namespace: "ns" } }, "spec"],
    ["invalid ingress IP", { ...service("web"), status: { loadBalancer: { ingress: [{ ip: "1.2.3" }] } } }, "status.loadBalancer.ingress[0].ip"],
  ];
  for (const [name, obj, path] of bad) {
    test(`rejects ${name} with a reason naming the field`, () => {
      const r = parseService(obj);
      expect(r.ok).toBe(false);
      if (r.ok) return;
      expect(r.reason).toContain(path);
      expect(r.reason.includes("\n")).toBe(false);
    });
  }

  test("the reason shows the offending value and the id names the object", () => {
    const r = parseService(withSpec({ ports: [{ port: 70000 }] }));
    expect(r).toMatchObject({ ok: false, id: "ns/web" });
    if (!r.ok) expect(r.reason).toContain("70000");
  });

  test("an object without usable metadata is <unknown>", () => {
    const r = parseService({ spec: {} });
    expect(r).toMatchObject({ ok: false, id: "<unknown>" });
    expect(parseService("text")).toMatchObject({ ok: false, id: "<unknown>" });
    expect(objectId(null)).toBe("<unknown>");
  });

  test("a giant string value is described, not echoed", () => {
    const r = parseService(withSpec({ clusterIP: "9".repeat(100000) }));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason.length).toBeLessThan(300);
  });
});

describe("parseEndpointSlice", () => {
  test("accepts a slice and defaults the port protocol", () => {
    const r = parseEndpointSlice(slice("web-1", "web", [{ ip: "10.1.0.1" }], { ports: [{ name: "http", port: 8080 }] }));
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.value.ports?.[0]?.protocol).toBe("TCP");
  });

  test("tolerates null endpoints and ports", () => {
    const s = { ...slice("web-1", "web", []), endpoints: null, ports: null };
    expect(parseEndpointSlice(s).ok).toBe(true);
  });

  const bad: [string, Record<string, unknown>, string][] = [
    ["missing service-name label", { ...slice("s", "web", []), metadata: { name: "s", namespace: "ns" } }, "kubernetes.io/service-name"],
    ["IPv6 address in an IPv4 slice", slice("s", "web", [{ ip: "fd00::1" }]), "endpoints[0].addresses[0]"],
    ["invalid address", slice("s", "web", [{ ip: "10.0.0.1" }, { ip: "garbage" }]), "endpoints[1].addresses[0]"],
    ["unknown address type", slice("s", "web", [], { addressType: "IPv5" }), "addressType"],
    ["endpoint without addresses", { ...slice("s", "web", []), endpoints: [{ addresses: [] }] }, "endpoints[0].addresses"],
    ["port out of range", slice("s", "web", [], { ports: [{ name: "x", port: 65536 }] }), "ports[0].port"],
    ["too many endpoints", { ...slice("s", "web", []), endpoints: Array.from({ length: 10001 }, () => ({ addresses: ["10.0.0.1"] })) }, "endpoints"],
    ["non-boolean condition", { ...slice("s", "web", []), endpoints: [{ addresses: ["10.0.0.1"], conditions: { ready: "yes" } }] }, "endpoints[0].conditions.ready"],
  ];
  for (const [name, obj, path] of bad) {
    test(`rejects ${name}`, () => {
      const r = parseEndpointSlice(obj);
      expect(r.ok).toBe(false);
      if (!r.ok) {
        expect(r.reason).toContain(path);
        expect(r.id).toBe("ns/s");
      }
    });
  }
});

describe("parseNode", () => {
  test("accepts a node and names it without a namespace", () => {
    expect(parseNode({ metadata: { name: "n1", labels: { a: "b" } }, spec: { podCIDRs: ["10.244.0.0/24"] } }).ok).toBe(true);
    const bad = parseNode({ metadata: { name: "n1" }, spec: { podCIDRs: ["10.244.0.0/99"] } });
    expect(bad).toMatchObject({ ok: false, id: "n1" });
  });
});
