/**
 * Rule generation time for 10,000 service ports × 5 endpoints (the bound: under 150 ms):
 * - first run in a fresh process (JIT cold, nothing remembered);
 * - warm: the same snapshot again (a periodic full sync with nothing changed: the rules of each
 *   service port's own chains are built again, since their text is released once written; the
 *   rest of each service port's results is reused);
 * - rebuilt objects for the same services (per-service results rebuilt, service chain hashes cached,
 *   endpoint chain names hashed again);
 * - services never seen before in a warmed-up process (everything computed);
 * - a partial generation for one changed service port.
 * Endpoint selection is the model's real categorizeEndpoints, as in a sync. Wall and CPU time are
 * both printed: on a busy machine the CPU time is the steadier figure.
 *
 *   bun bench/iptables-rules.ts [services] [endpointsPerService]
 */
import { clearChainNameCache, defaultRuleOptions, generateRules } from "../src/backends/iptables/index.ts";
import type { Endpoint, ServicePort, Snapshot } from "../src/model/types.ts";

const services = Number(process.argv[2] ?? 10_000);
const perService = Number(process.argv[3] ?? 5);

function buildSnapshot(prefix = "ns"): Snapshot {
  const servicePorts = new Map<string, ServicePort>();
  const endpoints = new Map<string, Endpoint[]>();
  for (let i = 0; i < services; i++) {
    const ns = `${prefix}${i % 100}`;
    const name = `svc${i}`;
    const key = `IPv4/${ns}/${name}:http/TCP`;
    servicePorts.set(key, {
      key,
      namespace: ns,
      name,
      portName: "http",
      servicePortName: `${ns}/${name}:http`,
      protocol: "TCP",
      family: "IPv4",
      type: i % 10 === 0 ? "NodePort" : "ClusterIP",
      clusterIP: `10.96.${(i >> 8) & 255}.${i & 255}`,
      port: 80,
      nodePort: i % 10 === 0 ? 30000 + (i % 2000) : 0,
      targetPort: 8080,
      externalIPs: [],
      loadBalancerIPs: [],
      loadBalancerSourceRanges: [],
      externalPolicyLocal: false,
      internalPolicyLocal: false,
      healthCheckNodePort: 0,
      sessionAffinity: { type: "None" },
    });
    const eps: Endpoint[] = [];
    for (let j = 0; j < perService; j++) {
      const n = i * perService + j;
      eps.push({
        ip: `10.${64 + ((n >> 16) & 63)}.${(n >> 8) & 255}.${n & 255}`,
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        isLocal: false,
        nodeName: "other",
        zone: "",
        zoneHints: [],
        nodeHints: [],
      });
    }
    endpoints.set(key, eps);
  }
  return {
    services: servicePorts,
    endpoints,
    node: { name: "node", labels: {}, zone: "", podCIDRs: [], addresses: [], eligible: true },
  };
}

const snap = buildSnapshot();
const options = { ...defaultRuleOptions, clusterCIDRs: ["10.64.0.0/10"] };

interface Measured {
  readonly wallMs: number;
  readonly cpuMs: number;
  readonly lines: number;
  readonly bytes: number;
}

/** Wall and CPU time: on a busy machine the CPU time is the steadier figure. */
function measure(run: () => { text: string }): Measured {
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  const out = run();
  const wallMs = performance.now() - start;
  const cpu = process.cpuUsage(cpu0);
  let lines = 0;
  for (let i = out.text.indexOf("\n"); i >= 0; i = out.text.indexOf("\n", i + 1)) lines++;
  return { wallMs, cpuMs: (cpu.user + cpu.system) / 1000, lines, bytes: out.text.length };
}

function report(label: string, m: Measured): void {
  console.log(
    `${label.padEnd(40)} ${m.wallMs.toFixed(1).padStart(7)} ms wall ${m.cpuMs.toFixed(1).padStart(7)} ms cpu   ${m.lines.toLocaleString("en").padStart(8)} lines  ${(m.bytes / 1e6).toFixed(1)} MB`,
  );
}

function median(values: number[]): number {
  const sorted = values.toSorted((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

function summary(label: string, runs: readonly Measured[]): void {
  const first = runs[0];
  if (first === undefined) return;
  report(`${label} (median of ${runs.length})`, {
    wallMs: median(runs.map((m) => m.wallMs)),
    cpuMs: median(runs.map((m) => m.cpuMs)),
    lines: first.lines,
    bytes: first.bytes,
  });
}

console.log(`${services.toLocaleString("en")} service ports × ${perService} endpoints (bound: 150 ms)`);
clearChainNameCache();
report("full, first run (cold)", measure(() => generateRules(snap, "IPv4", options, {})));

// A fresh but equal options object each time, as the backend builds them per sync.
let last = generateRules(snap, "IPv4", { ...options }, {});
const warm: Measured[] = [];
for (let i = 0; i < 9; i++) warm.push(measure(() => (last = generateRules(snap, "IPv4", { ...options }, {}))));
summary("full, unchanged snapshot", warm);

const changedKey = snap.services.keys().next().value as string;
const partial: Measured[] = [];
for (let i = 0; i < 9; i++) {
  const context = { changed: new Set([changedKey]), existingChains: last.activeNatChains };
  partial.push(measure(() => generateRules(snap, "IPv4", options, context)));
}
summary("partial, 1 changed", partial);

Bun.gc(true);
const memory = process.memoryUsage();
console.log(
  `memory with one snapshot, its remembered rules and the last output: rss ${(memory.rss / 1e6).toFixed(0)} MB, heap ${(memory.heapUsed / 1e6).toFixed(0)} MB`,
);

// New objects for the same services (as after a re-list): per-service rules are rebuilt, service chain hashes are remembered.
const rebuilt = buildSnapshot();
report("full, new objects, same services", measure(() => generateRules(rebuilt, "IPv4", options, {})));
// Services never seen before, in a warmed-up process: everything is computed.
const fresh = buildSnapshot("other");
report("full, new services (JIT warm)", measure(() => generateRules(fresh, "IPv4", options, {})));
