/**
 * Rule generation time for 10,000 service ports × 5 endpoints (the bound: under 150 ms):
 * - first run in a fresh process (JIT cold, nothing remembered);
 * - warm: the same snapshot again (a periodic full sync with nothing changed: per-service results reused);
 * - rebuilt objects for the same services (per-service results rebuilt, chain-name hashes cached);
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
  readonly text: string;
}

/** Wall and CPU time: on a busy machine the CPU time is the steadier figure. */
function measure(run: () => { text: string }): Measured {
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  const out = run();
  const wallMs = performance.now() - start;
  const cpu = process.cpuUsage(cpu0);
  return { wallMs, cpuMs: (cpu.user + cpu.system) / 1000, text: out.text };
}

function report(label: string, m: Measured): void {
  const lines = m.text.split("\n").length - 1;
  console.log(
    `${label.padEnd(36)} ${m.wallMs.toFixed(1).padStart(7)} ms wall ${m.cpuMs.toFixed(1).padStart(7)} ms cpu   ${lines.toLocaleString("en").padStart(8)} lines  ${(m.text.length / 1e6).toFixed(1)} MB`,
  );
}

function median(values: number[]): number {
  const sorted = values.toSorted((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

console.log(`${services.toLocaleString("en")} service ports × ${perService} endpoints`);
clearChainNameCache();
report("full, first run (cold)", measure(() => generateRules(snap, "IPv4", options, {})));

const warm: Measured[] = [];
let last = generateRules(snap, "IPv4", options, {});
// A fresh but equal options object each time, as the backend builds them per sync.
for (let i = 0; i < 9; i++) warm.push(measure(() => (last = generateRules(snap, "IPv4", { ...options }, {}))));
report("full, warm (median of 9)", {
  wallMs: median(warm.map((m) => m.wallMs)),
  cpuMs: median(warm.map((m) => m.cpuMs)),
  text: last.text,
});
console.log(`${"full, warm (best of 9)".padEnd(36)} ${Math.min(...warm.map((m) => m.wallMs)).toFixed(1).padStart(7)} ms wall`);

const changedKey = snap.services.keys().next().value as string;
const partial: Measured[] = [];
for (let i = 0; i < 9; i++) {
  partial.push(
    measure(() =>
      generateRules(snap, "IPv4", options, {
        changed: new Set([changedKey]),
        existingChains: last.activeNatChains,
      }),
    ),
  );
}
// New objects for the same services (as after a re-list): per-service results are rebuilt, chain-name hashes come from the cache.
const rebuilt = buildSnapshot();
report("full, rebuilt objects, names cached", measure(() => generateRules(rebuilt, "IPv4", options, {})));
// Services never seen before, in a warmed-up process: everything is computed.
const fresh = buildSnapshot("other");
report("full, new services (JIT warm)", measure(() => generateRules(fresh, "IPv4", options, {})));

report("partial, 1 changed (median of 9)", {
  wallMs: median(partial.map((m) => m.wallMs)),
  cpuMs: median(partial.map((m) => m.cpuMs)),
  text: partial[0]?.text ?? "",
});
