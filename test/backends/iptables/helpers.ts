/**
 * Builders for snapshots in the shape of upstream's proxier tests, and the same ordering
 * normalisation upstream's golden tests apply (upstream walks a Go map of services, so only the order
 * within a chain is meaningful). Endpoint selection is the model's real `categorizeEndpoints`.
 */
import type { Endpoint, IPFamily, NodeInfo, Protocol, ServicePort, Snapshot } from "../../../src/model/types.ts";
import type { RuleOptions } from "../../../src/backends/iptables/index.ts";
import { defaultRuleOptions } from "../../../src/backends/iptables/index.ts";

export const testNodeName = "test-node";
export const testNodeIP = "192.168.0.2";

type ServicePortInit = Partial<Omit<ServicePort, "key" | "namespace" | "name" | "portName" | "servicePortName">> & {
  readonly clusterIP: string;
  readonly port: number;
};

export function servicePort(namespace: string, name: string, portName: string, init: ServicePortInit): ServicePort {
  const protocol: Protocol = init.protocol ?? "TCP";
  const family: IPFamily = init.family ?? (init.clusterIP.includes(":") ? "IPv6" : "IPv4");
  return {
    type: "ClusterIP",
    nodePort: 0,
    targetPort: init.port,
    externalIPs: [],
    loadBalancerIPs: [],
    loadBalancerSourceRanges: [],
    externalPolicyLocal: false,
    internalPolicyLocal: false,
    healthCheckNodePort: 0,
    sessionAffinity: { type: "None" },
    ...init,
    protocol,
    family,
    key: `${family}/${namespace}/${name}:${portName}/${protocol}`,
    namespace,
    name,
    portName,
    servicePortName: portName === "" ? `${namespace}/${name}` : `${namespace}/${name}:${portName}`,
  };
}

export function endpoint(ip: string, port: number, init: Partial<Endpoint> = {}): Endpoint {
  const isLocal = init.isLocal ?? init.nodeName === testNodeName;
  return {
    ready: true,
    serving: true,
    terminating: false,
    nodeName: isLocal ? testNodeName : "",
    zone: "",
    zoneHints: [],
    nodeHints: [],
    ...init,
    ip,
    port,
    isLocal,
  };
}

export const testNode: NodeInfo = {
  name: testNodeName,
  labels: {},
  zone: "",
  podCIDRs: ["10.0.0.0/24", "fd00:10::/64"],
  addresses: [testNodeIP],
  eligible: true,
};

export function snapshot(entries: readonly (readonly [ServicePort, readonly Endpoint[]])[], node = testNode): Snapshot {
  return {
    services: new Map(entries.map(([sp]) => [sp.key, sp])),
    endpoints: new Map(entries.filter(([, eps]) => eps.length > 0).map(([sp, eps]) => [sp.key, eps])),
    node,
  };
}

/** Options matching upstream's NewFakeProxier (pod CIDR 10.0.0.0/8, node IP 192.168.0.2, nfacct counters present). */
export const fakeProxierOptions: RuleOptions = {
  ...defaultRuleOptions,
  clusterCIDRs: ["10.0.0.0/8", "fd00:10::/64"],
  nodeIPs: [testNodeIP, "2001:db8::1"],
  nfacctCounters: { ctStateInvalidDropped: true, localhostNodePortsAccepted: true },
};

interface ParsedTable {
  readonly name: string;
  readonly chains: string[];
  readonly rules: Map<string, string[]>;
  readonly deletions: string[];
}

function commentServiceName(rule: string): string | undefined {
  const m = / -m comment --comment ("[^"]*"|\S+)/.exec(rule);
  if (m?.[1] === undefined) return undefined;
  const value = m[1].startsWith('"') ? m[1].slice(1, -1) : m[1];
  const cut = value.search(/[ :]/);
  return cut === -1 ? value : value.slice(0, cut);
}

function byServiceName(a: string, b: string): number {
  const na = commentServiceName(a);
  const nb = commentServiceName(b);
  if (na === undefined || nb === undefined) return 0;
  return na < nb ? -1 : na > nb ? 1 : 0;
}

function chainOrder(a: string, b: string): number {
  const rank = (c: string): number => (c === "KUBE-NODEPORTS" ? 0 : c === "KUBE-SERVICES" ? 1 : c.startsWith("KUBE-") ? 2 : 3);
  const ra = rank(a);
  const rb = rank(b);
  if (ra !== rb) return ra - rb;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Upstream's sortIPTablesRules: tables by name, chains in a fixed order, KUBE-SERVICES/KUBE-NODEPORTS rules by service. */
export function sortRestoreText(text: string): string {
  const tables: ParsedTable[] = [];
  let current: ParsedTable | undefined;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "") continue;
    if (line.startsWith("*")) {
      current = { name: line.slice(1), chains: [], rules: new Map(), deletions: [] };
      tables.push(current);
    } else if (current === undefined) {
      throw new Error(`line outside a table: ${line}`);
    } else if (line === "COMMIT") {
      current = undefined;
    } else if (line.startsWith(":")) {
      const chain = line.slice(1).split(" ")[0] ?? "";
      current.chains.push(chain);
      current.rules.set(chain, []);
    } else if (line.startsWith("-A ")) {
      const chain = line.split(" ")[1] ?? "";
      const rules = current.rules.get(chain);
      if (rules === undefined) throw new Error(`rule for undeclared chain ${chain}: ${line}`);
      rules.push(line);
    } else if (line.startsWith("-X ")) {
      current.deletions.push(line);
    } else {
      throw new Error(`unexpected line: ${line}`);
    }
  }
  tables.sort((a, b) => (a.name < b.name ? -1 : 1));
  const out: string[] = [];
  for (const table of tables) {
    out.push(`*${table.name}`);
    table.chains.sort(chainOrder);
    for (const chain of table.chains) out.push(`:${chain} - [0:0]`);
    for (const chain of table.chains) {
      const rules = table.rules.get(chain) ?? [];
      if (chain === "KUBE-NODEPORTS") rules.sort(byServiceName);
      if (chain === "KUBE-SERVICES") {
        rules.sort((a, b) => {
          const lastA = table.name === "nat" && a.includes("must be the last rule");
          const lastB = table.name === "nat" && b.includes("must be the last rule");
          if (lastA !== lastB) return lastA ? 1 : -1;
          return byServiceName(a, b);
        });
      }
      out.push(...rules);
    }
    out.push(...table.deletions.sort());
    out.push("COMMIT");
  }
  return `${out.join("\n")}\n`;
}

/** Strips the indentation of a template literal golden, as Go's dedent does. */
export function dedent(text: string): string {
  return `${text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "")
    .join("\n")}\n`;
}

/** Lines of one chain in one table of a restore text. */
export function chainRules(text: string, table: "filter" | "nat", chain: string): string[] {
  const start = text.indexOf(`*${table}\n`);
  const end = text.indexOf("COMMIT", start);
  return text
    .slice(start, end)
    .split("\n")
    .filter((l) => l.startsWith(`-A ${chain} `) || l === `-A ${chain}`);
}
