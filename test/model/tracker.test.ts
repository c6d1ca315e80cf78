import { describe, expect, test } from "bun:test";
import { memoryLogger } from "../../src/log.ts";
import { parseTriggerTime } from "../../src/model/endpoints.ts";
import { ProxyModel } from "../../src/model/tracker.ts";
import type { ObjectKind } from "../../src/source/types.ts";
import { service, slice } from "./builders.ts";

const START = Date.UTC(2026, 0, 1);

function model() {
  const logger = memoryLogger();
  const m = new ProxyModel({ nodeName: "node-1", logger, now: () => START });
  const up = (kind: ObjectKind, object: unknown) => m.apply({ type: "upsert", kind, object });
  const del = (kind: ObjectKind, object: unknown) => m.apply({ type: "delete", kind, object });
  const warnings = () => logger.lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l["warning"]);
  return { m, up, del, warnings };
}

const sorted = (s: ReadonlySet<string>) => [...s].sort();

describe("ProxyModel change sets", () => {
  test("the first take is full and lists everything added", () => {
    const { m, up } = model();
    up("Service", service("web"));
    up("EndpointSlice", slice("web-1", "web", [{ ip: "10.1.0.1" }]));
    const c = m.takeChanges();
    expect(c.full).toBe(true);
    expect(sorted(c.changed)).toEqual(["IPv4/ns/web:http/TCP"]);
    const again = m.takeChanges();
    expect(again.full).toBe(false);
    expect(again.changed.size).toBe(0);
  });

  test("add, update and delete of a service", () => {
    const { m, up, del } = model();
    up("Service", service("a"));
    up("Service", service("b", { clusterIP: "10.96.0.11" }));
    m.takeChanges();

    up("Service", service("a", { ports: [{ name: "http", port: 81 }] }));
    expect(sorted(m.takeChanges().changed)).toEqual(["IPv4/ns/a:http/TCP"]);
    expect(m.snapshot().services.get("IPv4/ns/a:http/TCP")?.port).toBe(81);

    // Renaming a port removes the old key and adds the new one.
    up("Service", service("a", { ports: [{ name: "web", port: 81 }] }));
    expect(sorted(m.takeChanges().changed)).toEqual(["IPv4/ns/a:http/TCP", "IPv4/ns/a:web/TCP"]);

    del("Service", service("b"));
    expect(sorted(m.takeChanges().changed)).toEqual(["IPv4/ns/b:http/TCP"]);
    expect(m.snapshot().services.has("IPv4/ns/b:http/TCP")).toBe(false);
    expect(m.snapshot().services.size).toBe(1);
  });

  test("a no-op update is no change, and a change undone before the take is none either", () => {
    const { m, up, del } = model();
    const changes: number[] = [];
    m.onChange(() => changes.push(1));
    up("Service", service("a"));
    m.takeChanges();
    const before = changes.length;
    up("Service", { ...service("a"), metadata: { name: "a", namespace: "ns", resourceVersion: "99", labels: { x: "y" } } });
    expect(changes.length).toBe(before);
    expect(m.takeChanges().changed.size).toBe(0);

    up("Service", service("tmp", { clusterIP: "10.96.0.99" }));
    del("Service", service("tmp"));
    expect(m.takeChanges().changed.size).toBe(0);
  });

  test("an endpoint change marks only that service's ports", () => {
    const { m, up } = model();
    up("Service", service("a"));
    up("Service", service("b", { clusterIP: "10.96.0.11" }));
    up("EndpointSlice", slice("a-1", "a", [{ ip: "10.1.0.1" }]));
    up("EndpointSlice", slice("b-1", "b", [{ ip: "10.1.0.2" }]));
    m.takeChanges();
    up("EndpointSlice", slice("a-1", "a", [{ ip: "10.1.0.1" }, { ip: "10.1.0.3" }]));
    const c = m.takeChanges();
    expect(c.full).toBe(false);
    expect(sorted(c.changed)).toEqual(["IPv4/ns/a:http/TCP"]);
    expect(m.snapshot().endpoints.get("IPv4/ns/a:http/TCP")?.map((e) => e.ip)).toEqual(["10.1.0.1", "10.1.0.3"]);
    expect(m.counts()).toMatchObject({ endpointChangesPending: 0, endpointChangesTotal: 3 });
  });

  test("deleting the last slice removes the endpoints and reports the key", () => {
    const { m, up, del } = model();
    up("EndpointSlice", slice("a-1", "a", [{ ip: "10.1.0.1" }]));
    m.takeChanges();
    del("EndpointSlice", { metadata: { name: "a-1", namespace: "ns" } });
    expect(sorted(m.takeChanges().changed)).toEqual(["IPv4/ns/a:http/TCP"]);
    expect(m.snapshot().endpoints.size).toBe(0);
  });

  test("a slice whose service-name label changes moves to the other service", () => {
    const { m, up } = model();
    up("EndpointSlice", slice("s", "a", [{ ip: "10.1.0.1" }]));
    m.takeChanges();
    up("EndpointSlice", slice("s", "b", [{ ip: "10.1.0.1" }]));
    expect(sorted(m.takeChanges().changed)).toEqual(["IPv4/ns/a:http/TCP", "IPv4/ns/b:http/TCP"]);
    expect([...m.snapshot().endpoints.keys()]).toEqual(["IPv4/ns/b:http/TCP"]);
  });

  test("counts for the change metrics", () => {
    const { m, up } = model();
    up("Service", service("a"));
    up("Service", service("a"));
    up("EndpointSlice", slice("a-1", "a", [{ ip: "10.1.0.1" }]));
    expect(m.counts()).toEqual({ serviceChangesTotal: 2, serviceChangesPending: 1, endpointChangesTotal: 1, endpointChangesPending: 1 });
    m.takeChanges();
    expect(m.counts()).toMatchObject({ serviceChangesPending: 0, endpointChangesPending: 0 });
  });
});

describe("ProxyModel endpoints", () => {
  test("addresses are deduplicated across slices, preferring the non-terminating copy", () => {
    const { m, up } = model();
    up("EndpointSlice", slice("a-1", "a", [{ ip: "10.1.0.1", ready: false, serving: true, terminating: true }, { ip: "10.1.0.2" }]));
    up("EndpointSlice", slice("a-2", "a", [{ ip: "10.1.0.1", ready: true }]));
    up("EndpointSlice", slice("a-3", "a", [{ ip: "10.1.0.1", ready: false, serving: true, terminating: true }]));
    const eps = m.snapshot().endpoints.get("IPv4/ns/a:http/TCP") ?? [];
    expect(eps.map((e) => [e.ip, e.ready, e.terminating])).toEqual([
      ["10.1.0.1", true, false],
      ["10.1.0.2", true, false],
    ]);
  });

  test("missing conditions mean ready, serving, not terminating", () => {
    const { m, up } = model();
    up("EndpointSlice", slice("a-1", "a", [{ ip: "10.1.0.1" }, { ip: "10.1.0.2", ready: null, serving: null, terminating: null }, { ip: "10.1.0.3", ready: false }]));
    const eps = m.snapshot().endpoints.get("IPv4/ns/a:http/TCP") ?? [];
    expect(eps.map((e) => [e.ready, e.serving, e.terminating])).toEqual([
      [true, true, false],
      [true, true, false],
      // As upstream: serving is read on its own, nil meaning true.
      [false, true, false],
    ]);
  });

  test("ports matched by name and protocol; locality, zone and hints carried", () => {
    const { m, up } = model();
    up(
      "EndpointSlice",
      slice("a-1", "a", [{ ip: "10.1.0.1", nodeName: "node-1", zone: "z1", forZones: ["z1"], forNodes: ["node-1"] }, { ip: "10.1.0.2", nodeName: "node-2" }], {
        ports: [
          { name: "http", protocol: "TCP", port: 8080 },
          { name: "dns", protocol: "UDP", port: 5353 },
          { name: "dns", protocol: "TCP", port: 5354 },
          { name: "nil-port" },
        ],
      }),
    );
    const snap = m.snapshot();
    expect(sorted(new Set(snap.endpoints.keys()))).toEqual(["IPv4/ns/a:dns/TCP", "IPv4/ns/a:dns/UDP", "IPv4/ns/a:http/TCP"]);
    const [local, remote] = snap.endpoints.get("IPv4/ns/a:dns/UDP") ?? [];
    expect(local).toMatchObject({ port: 5353, isLocal: true, nodeName: "node-1", zone: "z1", zoneHints: ["z1"], nodeHints: ["node-1"] });
    expect(remote).toMatchObject({ isLocal: false, zoneHints: [], nodeHints: [] });
  });

  test("IPv6 slices key the IPv6 family with canonical addresses; FQDN slices are ignored", () => {
    const { m, up } = model();
    up("EndpointSlice", slice("a-v6", "a", [{ ip: "FD00:0:0::0001" }], { addressType: "IPv6" }));
    up("EndpointSlice", { ...slice("a-fqdn", "a", []), addressType: "FQDN", endpoints: [{ addresses: ["example.com"] }] });
    const snap = m.snapshot();
    expect([...snap.endpoints.keys()]).toEqual(["IPv6/ns/a:http/TCP"]);
    expect(snap.endpoints.get("IPv6/ns/a:http/TCP")?.[0]?.ip).toBe("fd00::1");
  });
});

describe("ProxyModel trigger times", () => {
  test("parses RFC 3339 and ignores junk", () => {
    expect(parseTriggerTime("2026-01-01T00:00:05Z")).toBe(START + 5000);
    expect(parseTriggerTime("2026-01-01T01:00:05.5+01:00")).toBe(START + 5500);
    expect(parseTriggerTime("yesterday")).toBeUndefined();
    expect(parseTriggerTime("")).toBeUndefined();
    expect(parseTriggerTime(undefined)).toBeUndefined();
  });

  test("changed slices report their trigger times; older than start and deletes do not", () => {
    const { m, up, del } = model();
    const at = (s: string) => ({ annotations: { "endpoints.kubernetes.io/last-change-trigger-time": s } });
    up("EndpointSlice", slice("a-1", "a", [{ ip: "10.1.0.1" }], at("2026-01-01T00:00:05Z")));
    up("EndpointSlice", slice("b-1", "b", [{ ip: "10.1.0.2" }], at("2025-12-31T23:00:00Z")));
    expect(m.takeChanges().triggerTimes).toEqual([START + 5000]);
    up("EndpointSlice", slice("a-1", "a", [{ ip: "10.1.0.3" }], at("2026-01-01T00:00:07Z")));
    del("EndpointSlice", slice("a-1", "a", []));
    expect(m.takeChanges().triggerTimes).toEqual([]);
  });
});

describe("ProxyModel invalid objects", () => {
  test("a bad object is skipped with one warning naming it; others are unaffected", () => {
    const { m, up, warnings } = model();
    const bad = service("bad", { ports: [{ port: 99999 }] });
    up("Service", bad);
    up("Service", bad);
    up("Service", service("good"));
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]).toMatchObject({ kind: "Service", object: "ns/bad" });
    expect(String(warnings()[0]?.["reason"])).toContain("spec.ports[0].port");
    expect([...m.snapshot().services.keys()]).toEqual(["IPv4/ns/good:http/TCP"]);
  });

  test("a bad update keeps the last valid version; a later valid one replaces it", () => {
    const { m, up, warnings } = model();
    up("Service", service("a"));
    m.takeChanges();
    up("Service", service("a", { clusterIP: "not-an-ip" }));
    expect(m.takeChanges().changed.size).toBe(0);
    expect(m.snapshot().services.get("IPv4/ns/a:http/TCP")?.clusterIP).toBe("10.96.0.10");
    expect(String(warnings()[0]?.["msg"])).toContain("keeping its last valid version");
    up("Service", service("a", { clusterIP: "10.96.0.50" }));
    expect(m.snapshot().services.get("IPv4/ns/a:http/TCP")?.clusterIP).toBe("10.96.0.50");
    // Bad again after a good version: warned again.
    up("Service", service("a", { clusterIP: "not-an-ip" }));
    expect(warnings()).toHaveLength(2);
  });

  test("bad slices and nodes warn the same way", () => {
    const { m, up, warnings } = model();
    up("EndpointSlice", slice("s", "a", [{ ip: "300.1.1.1" }]));
    up("Node", { metadata: { name: "node-1" }, spec: { podCIDRs: ["x"] } });
    expect(warnings().map((w) => [w["kind"], w["object"]])).toEqual([
      ["EndpointSlice", "ns/s"],
      ["Node", "node-1"],
    ]);
    expect(m.snapshot().endpoints.size).toBe(0);
  });
});

describe("ProxyModel node and sync state", () => {
  test("node facts; a node change makes the next take full; other nodes are ignored", () => {
    const { m, up, del } = model();
    m.takeChanges();
    up("Node", { metadata: { name: "node-2", labels: { "topology.kubernetes.io/zone": "z9" } } });
    expect(m.snapshot().node.zone).toBe("");
    up("Node", {
      metadata: { name: "node-1", labels: { "topology.kubernetes.io/zone": "z1" } },
      spec: { podCIDR: "10.244.1.0/24" },
      status: { addresses: [{ type: "Hostname", address: "node-1" }, { type: "ExternalIP", address: "203.0.113.5" }, { type: "InternalIP", address: "192.168.1.5" }] },
    });
    const node = m.snapshot().node;
    expect(node).toMatchObject({ name: "node-1", zone: "z1", podCIDRs: ["10.244.1.0/24"], addresses: ["192.168.1.5", "203.0.113.5"], eligible: true });
    expect(m.takeChanges().full).toBe(true);

    up("Node", { metadata: { name: "node-1", labels: { "topology.kubernetes.io/zone": "z1" }, deletionTimestamp: "2026-01-01T00:00:00Z" } });
    expect(m.snapshot().node.eligible).toBe(false);
    del("Node", { metadata: { name: "node-1" } });
    expect(m.snapshot().node).toMatchObject({ eligible: false, zone: "" });
  });

  test("endpoints on this node are local", () => {
    const { m, up } = model();
    up("EndpointSlice", slice("a-1", "a", [{ ip: "10.1.0.1", nodeName: "node-1" }, { ip: "10.1.0.2", nodeName: "node-10" }]));
    expect(m.snapshot().endpoints.get("IPv4/ns/a:http/TCP")?.map((e) => e.isLocal)).toEqual([true, false]);
  });

  test("isSynced after the source says so, and listeners hear it", () => {
    const { m } = model();
    let heard = 0;
    const stop = m.onChange(() => heard++);
    expect(m.isSynced()).toBe(false);
    m.apply({ type: "synced" });
    expect(m.isSynced()).toBe(true);
    expect(heard).toBe(1);
    stop();
    m.apply({ type: "upsert", kind: "Service", object: service("a") });
    expect(heard).toBe(1);
  });

  test("snapshots are immutable and shared until something changes", () => {
    const { m, up } = model();
    up("Service", service("a"));
    const first = m.snapshot();
    expect(m.snapshot()).toBe(first);
    up("Service", service("b", { clusterIP: "10.96.0.11" }));
    up("Service", service("a", { ports: [{ name: "http", port: 9 }] }));
    const second = m.snapshot();
    expect(first.services.size).toBe(1);
    expect(first.services.get("IPv4/ns/a:http/TCP")?.port).toBe(80);
    expect(second.services.size).toBe(2);
    expect(second.services.get("IPv4/ns/a:http/TCP")?.port).toBe(9);
    expect(Object.isFrozen(second)).toBe(true);
  });
});
