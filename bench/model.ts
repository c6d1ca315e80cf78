/**
 * Model benchmark: a 10,000-service cluster (10,000 EndpointSlices, 50,000 endpoints) through the
 * proxy model as a source would deliver it.
 *   (a) initial list → first snapshot and change set
 *   (c) resident memory with that cluster loaded (after a full GC)
 *   (b) 10,000 watch events, each applied and followed by takeChanges() + snapshot(), as a sync would
 * There is no external reference to compare with here, so the table shows each figure against its goal.
 *
 * Usage: bun bench/model.ts [--services N] [--endpoints N] [--events N]
 */
import { loadavg } from "node:os";
import { silentLogger } from "../src/log.ts";
import { ProxyModel } from "../src/model/tracker.ts";
import type { SourceEvent } from "../src/source/types.ts";
import { type ClusterSpec, serviceObject, services, sliceObject, slices } from "./fixtures/cluster.ts";

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

const NODE = "bench-node";
const spec: ClusterSpec = { services: arg("services", 10000), endpoints: arg("endpoints", 50000), localNode: NODE };
const eventCount = arg("events", 10000);

function rssMB(): number {
  Bun.gc(true);
  return process.memoryUsage().rss / 1024 / 1024;
}

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

const baselineRss = rssMB();
const model = new ProxyModel({ nodeName: NODE, logger: silentLogger });

// (a) initial list → first snapshot. The objects arrive in pages of 500, as a reflector's list
// does; building a page (the JSON decoding a reflector would do) is not timed, applying it is.
const PAGE = 500;
let initialMs = 0;
let initialCpuMs = 0;
function applyPages(kind: "Service" | "EndpointSlice", objects: Generator<Record<string, unknown>>): void {
  for (;;) {
    const page: Record<string, unknown>[] = [];
    for (let r = objects.next(); !r.done; r = objects.next()) {
      page.push(r.value);
      if (page.length === PAGE) break;
    }
    if (page.length === 0) return;
    const start = performance.now();
    const cpu = process.cpuUsage();
    for (const object of page) model.apply({ type: "upsert", kind, object });
    initialMs += performance.now() - start;
    const used = process.cpuUsage(cpu);
    initialCpuMs += (used.user + used.system) / 1000;
  }
}
applyPages("Service", services(spec));
applyPages("EndpointSlice", slices(spec));
const t0 = performance.now();
model.apply({ type: "synced" });
const first = model.snapshot();
const firstChanges = model.takeChanges();
initialMs += performance.now() - t0;
let endpointCount = 0;
for (const list of first.endpoints.values()) endpointCount += list.length;

// (c) memory with the cluster loaded: right after the load (garbage collected, but pages the
// allocator has not yet handed back still count), and once its scavenger has returned them.
const peakRss = rssMB();
let loadedRss = peakRss;
for (let i = 0; i < 5; i++) {
  await Bun.sleep(300);
  loadedRss = Math.min(loadedRss, rssMB());
}

// (b) watch events: mostly endpoint churn (a pod turning ready / terminating), some service edits,
// some service deletes and re-creates — pre-generated so JSON construction is not timed.
const sliceCount = spec.slices ?? spec.services;
const events: SourceEvent[] = [];
const triggerBase = new Date(Date.now() + 1000);
for (let i = 0; i < eventCount; i++) {
  const pick = (i * 7919) % spec.services;
  const kind = i % 10;
  if (kind < 7) {
    events.push({ type: "upsert", kind: "EndpointSlice", object: sliceObject(spec, (i * 104729) % sliceCount, i + 1, triggerBase) });
  } else if (kind < 9) {
    events.push({ type: "upsert", kind: "Service", object: serviceObject(spec, pick, i + 1) });
  } else if (i % 20 === 9) {
    events.push({ type: "delete", kind: "Service", object: serviceObject(spec, pick) });
  } else {
    events.push({ type: "upsert", kind: "Service", object: serviceObject(spec, (((i - 10) * 7919) % spec.services + spec.services) % spec.services) });
  }
}
const perEvent: number[] = [];
const byType = new Map<string, number[]>();
let changedTotal = 0;
for (const event of events) {
  const start = performance.now();
  model.apply(event);
  const changes = model.takeChanges();
  model.snapshot();
  const took = performance.now() - start;
  perEvent.push(took);
  const type = event.type === "synced" ? "synced" : `${event.type} ${event.kind}`;
  let list = byType.get(type);
  if (!list) byType.set(type, (list = []));
  list.push(took);
  changedTotal += changes.changed.size;
}
perEvent.sort((a, b) => a - b);
const p50 = percentile(perEvent, 50);
const p99 = percentile(perEvent, 99);
const max = perEvent[perEvent.length - 1] ?? NaN;

const rows: [string, string, string, string][] = [
  ["initial list → first snapshot", `${initialMs.toFixed(0)} ms`, "< 1000 ms", initialMs < 1000 ? "ok" : "MISSED"],
  ["initial list, CPU time of all threads (JIT, GC)", `${initialCpuMs.toFixed(0)} ms`, "", ""],
  ["event → model + changes + snapshot, p50", `${(p50 * 1000).toFixed(0)} µs`, "", ""],
  ["event → model + changes + snapshot, p99", `${(p99 * 1000).toFixed(0)} µs`, "< 1000 µs", p99 < 1 ? "ok" : "MISSED"],
  ["event → model + changes + snapshot, max", `${(max * 1000).toFixed(0)} µs`, "", ""],
  ["resident memory, cluster loaded", `${loadedRss.toFixed(0)} MB`, "< 150 MB", loadedRss < 150 ? "ok" : "MISSED"],
  ["resident memory, right after the load", `${peakRss.toFixed(0)} MB`, "", ""],
  ["resident memory, empty process", `${baselineRss.toFixed(0)} MB`, "", ""],
];
const widths = [0, 1, 2, 3].map((c) => Math.max(...rows.map((r) => r[c]!.length), ["measure", "value", "goal", ""][c]!.length));
const line = (r: readonly string[]) => r.map((v, c) => (c === 0 ? v.padEnd(widths[c]!) : v.padStart(widths[c]!))).join("  ");
console.log(
  `model: ${spec.services} services, ${sliceCount} slices, ${endpointCount} endpoints, ${first.services.size} service ports; ` +
    `first change set ${firstChanges.changed.size} keys (full=${firstChanges.full}); ${events.length} events changed ${changedTotal} keys; ` +
    // Wall-clock figures stretch when other processes compete for the CPU; the load says how much.
    `load average ${loadavg()[0]!.toFixed(2)}`,
);
console.log(line(["measure", "value", "goal", ""]));
for (const r of rows) console.log(line(r));
for (const [type, list] of byType) {
  list.sort((a, b) => a - b);
  console.log(`  ${type}: ${list.length} events, p50 ${(percentile(list, 50) * 1000).toFixed(0)} µs, p99 ${(percentile(list, 99) * 1000).toFixed(0)} µs`);
}
