/**
 * Cases follow upstream's TestCategorizeEndpoints (pkg/proxy/topology_test.go): the same endpoints,
 * node labels and expected sets, plus the PreferSameNode cases of the current rules.
 */
import { describe, expect, test } from "bun:test";
import { categorizeEndpoints } from "../../src/model/topology.ts";
import type { Endpoint, ServicePort } from "../../src/model/types.ts";

interface EP {
  ready?: boolean;
  serving?: boolean;
  terminating?: boolean;
  isLocal?: boolean;
  zoneHints?: string[];
  nodeHints?: string[];
}

function ep(addr: string, o: EP = {}): Endpoint {
  const [ip, port] = addr.split(":");
  const ready = o.ready ?? false;
  return {
    ip: ip!,
    port: Number(port),
    ready,
    serving: o.serving ?? ready,
    terminating: o.terminating ?? false,
    isLocal: o.isLocal ?? false,
    nodeName: o.isLocal ? "node-1" : "other",
    zone: "",
    zoneHints: o.zoneHints ?? [],
    nodeHints: o.nodeHints ?? [],
  };
}

function svc(o: Partial<Pick<ServicePort, "internalPolicyLocal" | "externalPolicyLocal" | "nodePort">> = {}): ServicePort {
  return {
    key: "IPv4/ns/svc:/TCP",
    namespace: "ns",
    name: "svc",
    portName: "",
    servicePortName: "ns/svc",
    protocol: "TCP",
    family: "IPv4",
    type: o.nodePort ? "NodePort" : "ClusterIP",
    clusterIP: "172.30.0.1",
    port: 80,
    nodePort: o.nodePort ?? 0,
    targetPort: 80,
    externalIPs: [],
    loadBalancerIPs: [],
    loadBalancerSourceRanges: [],
    externalPolicyLocal: o.externalPolicyLocal ?? false,
    internalPolicyLocal: o.internalPolicyLocal ?? false,
    healthCheckNodePort: 0,
    sessionAffinity: { type: "None" },
  };
}

interface Case {
  name: string;
  zone?: string;
  nodeName?: string;
  preferSameNode?: boolean;
  service: ServicePort;
  endpoints: Endpoint[];
  cluster: string[];
  local: string[];
  /** Defaults to cluster ∪ local. */
  all?: string[];
  /** hasAnyEndpoints though nothing is reachable from this node. */
  onlyRemote?: boolean;
}

const z = (...zones: string[]) => ({ zoneHints: zones, ready: true });

const cases: Case[] = [
  {
    name: "zone hints: only this zone's endpoints",
    zone: "zone-a",
    service: svc(),
    endpoints: [ep("10.1.2.3:80", z("zone-a")), ep("10.1.2.4:80", z("zone-b")), ep("10.1.2.5:80", z("zone-c")), ep("10.1.2.6:80", z("zone-a"))],
    cluster: ["10.1.2.3:80", "10.1.2.6:80"],
    local: [],
  },
  {
    name: "externalTrafficPolicy: Local, topology ignored for Local endpoints",
    zone: "zone-a",
    service: svc({ externalPolicyLocal: true, nodePort: 8080 }),
    endpoints: [
      ep("10.1.2.3:80", { ...z("zone-a"), isLocal: true }),
      ep("10.1.2.4:80", { ...z("zone-b"), isLocal: true }),
      ep("10.1.2.5:80", z("zone-c")),
      ep("10.1.2.6:80", z("zone-a")),
    ],
    cluster: ["10.1.2.3:80", "10.1.2.6:80"],
    local: ["10.1.2.3:80", "10.1.2.4:80"],
    all: ["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"],
  },
  {
    name: "internalTrafficPolicy: Local, topology ignored for Local endpoints",
    zone: "zone-a",
    service: svc({ internalPolicyLocal: true, nodePort: 8080 }),
    endpoints: [
      ep("10.1.2.3:80", { ...z("zone-a"), isLocal: true }),
      ep("10.1.2.4:80", { ...z("zone-b"), isLocal: true }),
      ep("10.1.2.5:80", z("zone-c")),
      ep("10.1.2.6:80", z("zone-a")),
    ],
    cluster: ["10.1.2.3:80", "10.1.2.6:80"],
    local: ["10.1.2.3:80", "10.1.2.4:80"],
    all: ["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"],
  },
  { name: "empty node labels", zone: "", service: svc(), endpoints: [ep("10.1.2.3:80", z("zone-a"))], cluster: ["10.1.2.3:80"], local: [] },
  { name: "node in different zone, no filtering", zone: "zone-b", service: svc(), endpoints: [ep("10.1.2.3:80", z("zone-a"))], cluster: ["10.1.2.3:80"], local: [] },
  {
    name: "unready endpoint",
    zone: "zone-a",
    service: svc(),
    endpoints: [ep("10.1.2.3:80", z("zone-a")), ep("10.1.2.4:80", z("zone-b")), ep("10.1.2.5:80", z("zone-c")), ep("10.1.2.6:80", { zoneHints: ["zone-a"], ready: false })],
    cluster: ["10.1.2.3:80"],
    local: [],
  },
  {
    name: "only unready endpoints in same zone (should not filter)",
    zone: "zone-a",
    service: svc(),
    endpoints: [
      ep("10.1.2.3:80", { zoneHints: ["zone-a"], ready: false }),
      ep("10.1.2.4:80", z("zone-b")),
      ep("10.1.2.5:80", z("zone-c")),
      ep("10.1.2.6:80", { zoneHints: ["zone-a"], ready: false }),
    ],
    cluster: ["10.1.2.4:80", "10.1.2.5:80"],
    local: [],
  },
  {
    name: "missing hints, no filtering applied",
    zone: "zone-a",
    service: svc(),
    endpoints: [ep("10.1.2.3:80", z("zone-a")), ep("10.1.2.4:80", z("zone-b")), ep("10.1.2.5:80", { ready: true }), ep("10.1.2.6:80", z("zone-a"))],
    cluster: ["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"],
    local: [],
  },
  {
    name: "multiple hints per endpoint, filtering includes any endpoint with zone included",
    zone: "zone-c",
    service: svc(),
    endpoints: [
      ep("10.1.2.3:80", z("zone-a", "zone-b", "zone-c")),
      ep("10.1.2.4:80", z("zone-b", "zone-c")),
      ep("10.1.2.5:80", z("zone-b", "zone-d")),
      ep("10.1.2.6:80", z("zone-c")),
    ],
    cluster: ["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"],
    local: [],
  },
  {
    name: "conflicting topology and localness require merging allEndpoints",
    zone: "zone-a",
    service: svc({ externalPolicyLocal: true, nodePort: 8080 }),
    endpoints: [
      ep("10.0.0.0:80", { ...z("zone-a"), isLocal: true }),
      ep("10.0.0.1:80", { ...z("zone-b"), isLocal: true }),
      ep("10.0.0.2:80", z("zone-a")),
      ep("10.0.0.3:80", z("zone-b")),
    ],
    cluster: ["10.0.0.0:80", "10.0.0.2:80"],
    local: ["10.0.0.0:80", "10.0.0.1:80"],
    all: ["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"],
  },
  { name: "internalTrafficPolicy: Local, with empty endpoints", service: svc({ internalPolicyLocal: true }), endpoints: [], cluster: [], local: [] },
  {
    name: "internalTrafficPolicy: Local, but all endpoints are remote",
    service: svc({ internalPolicyLocal: true }),
    endpoints: [ep("10.0.0.0:80", { ready: true }), ep("10.0.0.1:80", { ready: true })],
    cluster: [],
    local: [],
    onlyRemote: true,
  },
  {
    name: "internalTrafficPolicy: Local, all endpoints are local",
    service: svc({ internalPolicyLocal: true }),
    endpoints: [ep("10.0.0.0:80", { ready: true, isLocal: true }), ep("10.0.0.1:80", { ready: true, isLocal: true })],
    cluster: [],
    local: ["10.0.0.0:80", "10.0.0.1:80"],
  },
  {
    name: "internalTrafficPolicy: Local, some endpoints are local",
    service: svc({ internalPolicyLocal: true }),
    endpoints: [ep("10.0.0.0:80", { ready: true, isLocal: true }), ep("10.0.0.1:80", { ready: true })],
    cluster: [],
    local: ["10.0.0.0:80"],
  },
  {
    name: "Cluster traffic policy, endpoints not Ready",
    service: svc(),
    endpoints: [ep("10.0.0.0:80"), ep("10.0.0.1:80")],
    cluster: [],
    local: [],
  },
  {
    name: "Cluster traffic policy, some endpoints are Ready",
    service: svc(),
    endpoints: [ep("10.0.0.0:80"), ep("10.0.0.1:80", { ready: true })],
    cluster: ["10.0.0.1:80"],
    local: [],
  },
  {
    name: "Cluster traffic policy, all endpoints are terminating",
    service: svc(),
    endpoints: [ep("10.0.0.0:80", { serving: true, terminating: true, isLocal: true }), ep("10.0.0.1:80", { serving: true, terminating: true })],
    cluster: ["10.0.0.0:80", "10.0.0.1:80"],
    local: [],
  },
  {
    name: "iTP: Local, eTP: Cluster, some endpoints local",
    service: svc({ internalPolicyLocal: true, nodePort: 8080 }),
    endpoints: [ep("10.0.0.0:80", { ready: true, isLocal: true }), ep("10.0.0.1:80", { ready: true })],
    cluster: ["10.0.0.0:80", "10.0.0.1:80"],
    local: ["10.0.0.0:80"],
    all: ["10.0.0.0:80", "10.0.0.1:80"],
  },
  {
    name: "iTP: Cluster, eTP: Local, some endpoints local",
    service: svc({ externalPolicyLocal: true, nodePort: 8080 }),
    endpoints: [ep("10.0.0.0:80", { ready: true, isLocal: true }), ep("10.0.0.1:80", { ready: true })],
    cluster: ["10.0.0.0:80", "10.0.0.1:80"],
    local: ["10.0.0.0:80"],
    all: ["10.0.0.0:80", "10.0.0.1:80"],
  },
  {
    name: "iTP: Local, eTP: Local, all endpoints remote",
    service: svc({ internalPolicyLocal: true, externalPolicyLocal: true, nodePort: 8080 }),
    endpoints: [ep("10.0.0.0:80", { ready: true }), ep("10.0.0.1:80", { ready: true })],
    cluster: ["10.0.0.0:80", "10.0.0.1:80"],
    local: [],
    all: ["10.0.0.0:80", "10.0.0.1:80"],
  },
  {
    name: "iTP: Local, eTP: Local, all endpoints remote and terminating",
    service: svc({ internalPolicyLocal: true, externalPolicyLocal: true, nodePort: 8080 }),
    endpoints: [ep("10.0.0.0:80", { serving: true, terminating: true }), ep("10.0.0.1:80", { serving: true, terminating: true })],
    cluster: ["10.0.0.0:80", "10.0.0.1:80"],
    local: [],
    all: ["10.0.0.0:80", "10.0.0.1:80"],
  },
  {
    name: "iTP: Cluster, eTP: Local, with terminating endpoints",
    service: svc({ externalPolicyLocal: true, nodePort: 8080 }),
    endpoints: [
      ep("10.0.0.0:80", { ready: true }),
      ep("10.0.0.1:80", { serving: false, isLocal: true }),
      ep("10.0.0.2:80", { serving: true, terminating: true, isLocal: true }),
      ep("10.0.0.3:80", { serving: true, terminating: true }),
    ],
    cluster: ["10.0.0.0:80"],
    local: ["10.0.0.2:80"],
    all: ["10.0.0.0:80", "10.0.0.2:80"],
  },
  {
    name: "externalTrafficPolicy ignored if not externally accessible",
    service: svc({ externalPolicyLocal: true }),
    endpoints: [ep("10.0.0.0:80", { ready: true }), ep("10.0.0.1:80", { ready: true, isLocal: true })],
    cluster: ["10.0.0.0:80", "10.0.0.1:80"],
    local: [],
  },
  {
    name: "no cluster endpoints for iTP:Local internal-only service",
    service: svc({ internalPolicyLocal: true }),
    endpoints: [ep("10.0.0.0:80", { ready: true }), ep("10.0.0.1:80", { ready: true, isLocal: true })],
    cluster: [],
    local: ["10.0.0.1:80"],
  },
  // PreferSameNode (trafficDistribution), on by default as upstream's gate is now.
  {
    name: "node hints: only endpoints hinted for this node",
    zone: "zone-a",
    service: svc(),
    endpoints: [
      ep("10.1.2.3:80", { ready: true, nodeHints: ["node-1"], zoneHints: ["zone-a"] }),
      ep("10.1.2.4:80", { ready: true, nodeHints: ["node-2"], zoneHints: ["zone-a"] }),
      ep("10.1.2.5:80", { ready: true, nodeHints: ["node-3"], zoneHints: ["zone-b"] }),
    ],
    cluster: ["10.1.2.3:80"],
    local: [],
  },
  {
    name: "node hints for other nodes only: fall back to zone hints",
    zone: "zone-a",
    service: svc(),
    endpoints: [
      ep("10.1.2.3:80", { ready: true, nodeHints: ["node-2"], zoneHints: ["zone-a"] }),
      ep("10.1.2.4:80", { ready: true, nodeHints: ["node-3"], zoneHints: ["zone-a"] }),
      ep("10.1.2.5:80", { ready: true, nodeHints: ["node-4"], zoneHints: ["zone-b"] }),
    ],
    cluster: ["10.1.2.3:80", "10.1.2.4:80"],
    local: [],
  },
  {
    name: "an endpoint without node hints disables node filtering",
    zone: "zone-x",
    service: svc(),
    endpoints: [ep("10.1.2.3:80", { ready: true, nodeHints: ["node-1"] }), ep("10.1.2.4:80", { ready: true })],
    cluster: ["10.1.2.3:80", "10.1.2.4:80"],
    local: [],
  },
  {
    name: "node hints ignored when PreferSameNode is off",
    zone: "zone-b",
    preferSameNode: false,
    service: svc(),
    endpoints: [ep("10.1.2.3:80", { ready: true, nodeHints: ["node-1"], zoneHints: ["zone-a"] }), ep("10.1.2.4:80", { ready: true, nodeHints: ["node-2"], zoneHints: ["zone-b"] })],
    cluster: ["10.1.2.4:80"],
    local: [],
  },
];

const sorted = (eps: readonly Endpoint[]) => eps.map((e) => `${e.ip}:${e.port}`).sort();

describe("categorizeEndpoints", () => {
  for (const c of cases) {
    test(c.name, () => {
      const result = categorizeEndpoints(c.service, c.endpoints, { name: c.nodeName ?? "node-1", zone: c.zone ?? "" }, c.preferSameNode === undefined ? {} : { preferSameNode: c.preferSameNode });
      expect(sorted(result.clusterEndpoints)).toEqual([...c.cluster].sort());
      expect(sorted(result.localEndpoints)).toEqual([...c.local].sort());
      const all = c.all ?? [...new Set([...c.cluster, ...c.local])];
      expect(sorted(result.allReachableEndpoints)).toEqual([...all].sort());
      expect(result.hasAnyEndpoints).toBe(all.length > 0 || c.onlyRemote === true);
    });
  }
});
