/**
 * The iptables backend against bare iptables-restore, side by side in one run, for the legacy and
 * nft flavours, each measurement in a fresh network namespace:
 *
 * - rule generation for 10,000 services × 5 endpoints (the model's real snapshot and selection);
 * - full sync (kproxy: canaries, jumps, restore; nft in bottom-up pieces) vs the bare restore of
 *   the same text, into an empty namespace and again over the existing rules (the periodic sync);
 * - one endpoint changed among 10,000 services: partial sync vs the bare restore of its input;
 * - event → rules in the kernel at 1,000 services with minSyncPeriod 0 (model + sync loop + backend);
 * - resident memory with 10,000 services loaded and synced.
 *
 * nft's unpieced `--noflush` restore of 10,000 services takes minutes (quadratic), so it is measured
 * at 2,000 services only. Runs as root; the orchestrator re-runs this file inside each namespace.
 *
 *   bun bench/iptables-sync.ts [services] [--only=part,...]
 *
 * Parts: sync-legacy, sync-nft, nft-small, latency-legacy, latency-nft, latency-legacy-noaffinity, rss
 * (default: all); partial-legacy and partial-nft run only the one-endpoint partial syncs.
 */
import { IptablesBackend } from "../src/backends/iptables/backend.ts";
import { splitRestoreInput } from "../src/backends/iptables/chunks.ts";
import { cleanupIptables } from "../src/backends/iptables/cleanup.ts";
import { defaultRuleOptions, generateRules } from "../src/backends/iptables/index.ts";
import { silentLogger } from "../src/log.ts";
import { createMetrics } from "../src/metrics.ts";
import { categorizeEndpoints } from "../src/model/topology.ts";
import { ProxyModel } from "../src/model/tracker.ts";
import type { ChangeSet } from "../src/model/types.ts";
import { ProxierHealth } from "../src/server/health.ts";
import { SyncLoop } from "../src/sync/loop.ts";
import { realClock } from "../src/system/clock.ts";
import { bunExec, type Exec, runChecked } from "../src/system/exec.ts";
import { iptablesCommands, type IptablesFlavour } from "../src/system/iptables.ts";
import { type ClusterSpec, serviceObject, sliceObject } from "./fixtures/cluster.ts";

const NODE = "bench-node";
const ruleOptions = { ...defaultRuleOptions, clusterCIDRs: ["10.128.0.0/9"] };

function loadModel(services: number, affinityEvery?: number): { model: ProxyModel; spec: ClusterSpec } {
  const spec: ClusterSpec = { services, localNode: NODE, ...(affinityEvery === undefined ? {} : { affinityEvery }) };
  const model = new ProxyModel({ nodeName: NODE, logger: silentLogger });
  for (let i = 0; i < services; i++) model.apply({ type: "upsert", kind: "Service", object: serviceObject(spec, i) });
  for (let j = 0; j < services; j++) model.apply({ type: "upsert", kind: "EndpointSlice", object: sliceObject(spec, j) });
  model.apply({ type: "synced" });
  return { model, spec };
}

/** An Exec that remembers the last restore input, so the bare reference can restore the very same text. */
function recordingExec(): Exec & { lastRestore: string[] } {
  const rec = {
    lastRestore: [] as string[],
    async run(argv: readonly string[], options?: Parameters<Exec["run"]>[1]) {
      if (argv[0]?.endsWith("-restore") && typeof options?.stdin === "string") rec.lastRestore.push(options.stdin);
      return bunExec.run(argv, options);
    },
  };
  return rec;
}

function backendFor(exec: Exec, flavour: IptablesFlavour): IptablesBackend {
  return new IptablesBackend({
    exec,
    flavour,
    ruleOptions,
    nodePortAddresses: [],
    localAddresses: () => [],
    metrics: createMetrics({ proc: null }),
    logger: silentLogger,
    // As configured by default (half of the 30 s syncPeriod).
    canaryCheckIntervalMs: 15_000,
  });
}

async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const start = performance.now();
  const value = await fn();
  return [performance.now() - start, value];
}

async function bareRestore(flavour: IptablesFlavour, text: string, noflush = true): Promise<number> {
  const argv = [iptablesCommands("IPv4", flavour).restore, "-w", "5"];
  if (noflush) argv.push("--noflush");
  const [ms] = await timed(() => runChecked(bunExec, argv, { stdin: text, timeoutMs: 900_000 }));
  return ms;
}

async function wipe(flavour: IptablesFlavour): Promise<void> {
  await cleanupIptables({ exec: bunExec, logger: silentLogger, flavours: [flavour], families: ["IPv4"] });
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
const percentile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))] ?? NaN;
const full: ChangeSet = { changed: new Set(), full: true, triggerTimes: [] };

/** Inside a namespace: full and partial syncs at `services`, and RSS. Prints one JSON line. */
async function workerSync(
  flavour: IptablesFlavour,
  services: number,
  bareUnpieced: boolean,
  partialOnly = false,
): Promise<Record<string, unknown>> {
  const { model, spec } = loadModel(services);
  model.takeChanges();
  const snapshot = model.snapshot();
  const out: Record<string, unknown> = { flavour, services };

  const genMs: number[] = [];
  let text = "";
  for (let i = 0; i < 5; i++) {
    const [ms, g] = await timed(async () => generateRules(snapshot, "IPv4", ruleOptions, { categorize: categorizeEndpoints }));
    genMs.push(ms);
    text = g.text;
  }
  out["generateMs"] = median(genMs);
  out["lines"] = text.split("\n").length;

  // Into an empty namespace: bare restore of the text, then (after removing it) kproxy's first sync.
  if (partialOnly) {
    const exec = recordingExec();
    const backend = backendFor(exec, flavour);
    await backend.sync(snapshot, full);
    return { ...out, ...(await partialSyncs(flavour, backend, exec, model, spec)) };
  }
  if (bareUnpieced) out["bareFreshMs"] = await bareRestore(flavour, text);
  if (flavour === "nft") {
    await wipe(flavour);
    const [ms] = await timed(async () => {
      for (const piece of splitRestoreInput(text)) await bareRestore(flavour, piece);
    });
    out["barePiecesFreshMs"] = ms;
    await wipe(flavour);
    out["bareWholeTableFreshMs"] = await bareRestore(flavour, text, false);
  }
  await wipe(flavour);
  const exec = recordingExec();
  const backend = backendFor(exec, flavour);
  [out["kproxyFreshMs"]] = await timed(() => backend.sync(snapshot, full));

  // Over existing rules (the periodic full sync).
  [out["kproxySteadyMs"]] = await timed(() => backend.sync(snapshot, full));
  if (bareUnpieced) out["bareSteadyMs"] = await bareRestore(flavour, text);
  if (flavour === "nft") {
    const [ms] = await timed(async () => {
      for (const piece of splitRestoreInput(text)) await bareRestore(flavour, piece);
    });
    out["barePiecesSteadyMs"] = ms;
  }
  await backend.sync(snapshot, full);
  return { ...out, ...(await partialSyncs(flavour, backend, exec, model, spec)) };
}

/** One endpoint flips readiness: kproxy's partial sync vs the bare restore of the very input it wrote. */
async function partialSyncs(
  flavour: IptablesFlavour,
  backend: IptablesBackend,
  exec: ReturnType<typeof recordingExec>,
  model: ProxyModel,
  spec: ClusterSpec,
): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  const partial: number[] = [];
  const bare: number[] = [];
  const partialLines: number[] = [];
  // Legacy rewrites its whole table per restore (seconds at 10,000 services), so it gets fewer rounds.
  const rounds = flavour === "nft" ? 9 : 3;
  for (let r = 1; r <= 2 * rounds; r += 2) {
    model.apply({ type: "upsert", kind: "EndpointSlice", object: sliceObject(spec, 17, r) });
    const changes = model.takeChanges();
    const snap = model.snapshot();
    exec.lastRestore.length = 0;
    const [ms, result] = await timed(() => backend.sync(snap, changes));
    if (!result.partial) throw new Error("expected a partial sync");
    partial.push(ms);
    const input = exec.lastRestore.join("");
    partialLines.push(input.split("\n").length);
    bare.push(await bareRestore(flavour, input));
  }
  out["partialMs"] = median(partial);
  out["partialRuns"] = partial.length;
  out["barePartialMs"] = median(bare);
  out["partialLines"] = median(partialLines);
  return out;
}

const rssMB = () => {
  Bun.gc(true);
  return Math.round(process.memoryUsage().rss / 1e5) / 10;
};

/** Inside a namespace: resident memory of what a kproxy process holds (model, backend state) after a full sync. */
async function workerRss(flavour: IptablesFlavour, services: number): Promise<Record<string, unknown>> {
  const baselineMB = rssMB();
  const { model } = loadModel(services);
  const modelMB = rssMB();
  const backend = backendFor(bunExec, flavour);
  await backend.sync(model.snapshot(), model.takeChanges());
  const syncedMB = rssMB();
  // The allocator hands freed pages back to the system on a timer; this is what a running kproxy holds.
  await Bun.sleep(5000);
  const settledMB = rssMB();
  // Both stay referenced up to here, as in a running kproxy; otherwise the collections in rssMB()
  // could free them and "settled" would measure an empty process.
  const held = `${model.snapshot().services.size} service ports, ${backend.mode}`;
  return { flavour, services, baselineMB, modelMB, syncedMB, settledMB, held, heapMB: Math.round(process.memoryUsage().heapUsed / 1e5) / 10 };
}

/** Inside a namespace: event → rules restored, through the model and the sync loop. */
async function workerLatency(
  flavour: IptablesFlavour,
  services: number,
  samples: number,
  affinityEvery?: number,
): Promise<Record<string, unknown>> {
  const { model, spec } = loadModel(services, affinityEvery);
  const exec = recordingExec();
  const backend = backendFor(exec, flavour);
  // Time inside the backend per sync, to tell the loop's and the model's share from the restore's.
  const backendSync = backend.sync.bind(backend);
  const syncMs: number[] = [];
  backend.sync = async (snapshot, changes) => {
    const [ms, result] = await timed(() => backendSync(snapshot, changes));
    syncMs.push(ms);
    return result;
  };
  let synced: (() => void) | undefined;
  const loop = new SyncLoop({
    model,
    backend,
    health: new ProxierHealth({ healthTimeoutMs: 60_000, clock: realClock }),
    metrics: createMetrics({ proc: null }),
    clock: realClock,
    logger: silentLogger,
    minSyncPeriodMs: 0,
    syncPeriodMs: 3_600_000,
    onSynced: (o) => {
      if (!o.ok) throw o.error;
      synced?.();
    },
  });
  const stop = new AbortController();
  let first = new Promise<void>((resolve) => (synced = resolve));
  const running = loop.start(stop.signal);
  await first;
  const latencies: number[] = [];
  syncMs.length = 0;
  exec.lastRestore.length = 0;
  for (let r = 1; r <= samples; r++) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const done = new Promise<void>((resolve, reject) => {
      synced = resolve;
      timer = setTimeout(() => reject(new Error("no sync within 10 s")), 10_000);
    }).finally(() => clearTimeout(timer));
    const start = performance.now();
    // An odd revision flips one endpoint's readiness against revision 0, so every event is a real change.
    model.apply({ type: "upsert", kind: "EndpointSlice", object: sliceObject(spec, r % services, 2 * r + 1) });
    await done;
    latencies.push(performance.now() - start);
  }
  stop.abort();
  await running;
  first = Promise.resolve();
  // The floor: the bare restore of each input kproxy wrote, again, over the same rules.
  const bare: number[] = [];
  for (const input of exec.lastRestore) bare.push(await bareRestore(flavour, input));
  return {
    flavour,
    services,
    samples,
    p50Ms: percentile(latencies, 0.5),
    p99Ms: percentile(latencies, 0.99),
    maxMs: Math.max(...latencies),
    syncP50Ms: percentile(syncMs, 0.5),
    syncP99Ms: percentile(syncMs, 0.99),
    bareP50Ms: percentile(bare, 0.5),
    bareP99Ms: percentile(bare, 0.99),
  };
}

// ---- orchestration -----------------------------------------------------------------------------

let nsCounter = 0;

async function inFreshNamespace(args: string[]): Promise<Record<string, unknown>> {
  const name = `kp-bench-${process.pid}-${nsCounter++}`;
  await runChecked(bunExec, ["ip", "netns", "add", name]);
  try {
    await runChecked(bunExec, ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"]);
    const result = await runChecked(bunExec, ["ip", "netns", "exec", name, process.execPath, import.meta.path, "--worker", ...args], {
      timeoutMs: 1_800_000,
    });
    return JSON.parse(result.stdout.trim().split("\n").at(-1) ?? "{}") as Record<string, unknown>;
  } finally {
    await bunExec.run(["ip", "netns", "del", name]);
  }
}

const fmt = (ms: unknown) => (typeof ms === "number" ? (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`) : "—");
/** A plain figure, or a dash for a part that was not run. */
const plain = (value: unknown) => (typeof value === "number" ? String(value) : "—");
const ratio = (a: unknown, b: unknown) => (typeof a === "number" && typeof b === "number" ? `${(a / b).toFixed(2)}×` : "—");

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === "--worker") {
    const [, kind, flavour, services, extra, affinityEvery] = argv;
    const result =
      kind === "sync"
        ? await workerSync(flavour as IptablesFlavour, Number(services), extra === "bare", extra === "partial")
        : kind === "rss"
          ? await workerRss(flavour as IptablesFlavour, Number(services))
          : await workerLatency(
              flavour as IptablesFlavour,
              Number(services),
              Number(extra),
              affinityEvery === undefined ? undefined : Number(affinityEvery),
            );
    console.log(JSON.stringify(result));
    return;
  }
  if (process.getuid?.() !== 0) throw new Error("run as root: the benchmark creates network namespaces");
  const only = argv.find((a) => a.startsWith("--only="))?.slice("--only=".length).split(",");
  const services = Number(argv.find((a) => !a.startsWith("--")) ?? 10_000);
  const started = performance.now();
  const part = async (name: string, args: string[]): Promise<Record<string, unknown>> =>
    only === undefined || only.includes(name) ? inFreshNamespace(args) : {};

  // partial-legacy / partial-nft: only the one-endpoint partial syncs (after one full sync).
  const legacy = only?.includes("partial-legacy")
    ? await inFreshNamespace(["sync", "legacy", String(services), "partial"])
    : await part("sync-legacy", ["sync", "legacy", String(services), "bare"]);
  const nft = only?.includes("partial-nft")
    ? await inFreshNamespace(["sync", "nft", String(services), "pieces"].with(3, "partial"))
    : await part("sync-nft", ["sync", "nft", String(services), "pieces"]);
  const nftSmall = await part("nft-small", ["sync", "nft", "2000", "bare"]);
  const latLegacy = await part("latency-legacy", ["latency", "legacy", "1000", "200"]);
  const latNft = await part("latency-nft", ["latency", "nft", "1000", "200"]);
  // Legacy checks every `recent` rule against every recent table on each whole-table replace
  // (a linear lookup in xt_recent), so session-affinity services weigh on every restore; this run
  // shows the same latency with none of them.
  const latLegacyPlain = await part("latency-legacy-noaffinity", ["latency", "legacy", "1000", "200", "0"]);
  const rss = await part("rss", ["rss", "legacy", String(services)]);

  const rows: [string, string, string, string][] = [
    ["", "legacy", "nft", "goal"],
    [`generation, ${services} services × 5 endpoints`, fmt(legacy["generateMs"]), fmt(nft["generateMs"]), "< 150 ms"],
    [`restore input lines`, plain(legacy["lines"]), plain(nft["lines"]), ""],
    [`bare restore --noflush, empty ns`, fmt(legacy["bareFreshMs"]), "skipped (minutes)", ""],
    [`bare restore in pieces, empty ns`, "—", fmt(nft["barePiecesFreshMs"]), ""],
    [`bare whole-table restore (no --noflush), empty ns`, "—", fmt(nft["bareWholeTableFreshMs"]), ""],
    [`kproxy first full sync, empty ns`, fmt(legacy["kproxyFreshMs"]), fmt(nft["kproxyFreshMs"]), ""],
    [
      `  ratio to bare (legacy: --noflush; nft: same pieces)`,
      ratio(legacy["kproxyFreshMs"], legacy["bareFreshMs"]),
      ratio(nft["kproxyFreshMs"], nft["barePiecesFreshMs"]),
      "≤ 1.1",
    ],
    [`kproxy full sync over existing rules`, fmt(legacy["kproxySteadyMs"]), fmt(nft["kproxySteadyMs"]), ""],
    [
      `  ratio to bare over existing rules`,
      ratio(legacy["kproxySteadyMs"], legacy["bareSteadyMs"]),
      ratio(nft["kproxySteadyMs"], nft["barePiecesSteadyMs"]),
      "≤ 1.1",
    ],
    [`nft 2,000 services: bare --noflush in one piece`, "", fmt(nftSmall["bareFreshMs"]), ""],
    [`nft 2,000 services: kproxy first full sync (pieces)`, "", fmt(nftSmall["kproxyFreshMs"]), ""],
    [`  speed-up of pieces`, "", ratio(nftSmall["bareFreshMs"], nftSmall["kproxyFreshMs"]), ""],
    [`one endpoint changed: partial sync (median of ${legacy["partialRuns"] ?? "—"} / ${nft["partialRuns"] ?? "—"})`, fmt(legacy["partialMs"]), fmt(nft["partialMs"]), ""],
    [`  bare restore of the very input kproxy wrote (${legacy["partialLines"] ?? "—"} / ${nft["partialLines"] ?? "—"} lines)`, fmt(legacy["barePartialMs"]), fmt(nft["barePartialMs"]), ""],
    [`  ratio`, ratio(legacy["partialMs"], legacy["barePartialMs"]), ratio(nft["partialMs"], nft["barePartialMs"]), "≤ 1.2"],
    [`event → rules, 1,000 services, p50`, fmt(latLegacy["p50Ms"]), fmt(latNft["p50Ms"]), ""],
    [`event → rules, 1,000 services, p99`, fmt(latLegacy["p99Ms"]), fmt(latNft["p99Ms"]), "< 100 ms"],
    [`  of which backend sync, p50 / p99`, `${fmt(latLegacy["syncP50Ms"])} / ${fmt(latLegacy["syncP99Ms"])}`, `${fmt(latNft["syncP50Ms"])} / ${fmt(latNft["syncP99Ms"])}`, ""],
    [`  bare restore of the same inputs, p50 / p99`, `${fmt(latLegacy["bareP50Ms"])} / ${fmt(latLegacy["bareP99Ms"])}`, `${fmt(latNft["bareP50Ms"])} / ${fmt(latNft["bareP99Ms"])}`, ""],
    [`  same without session-affinity services, p50 / p99`, `${fmt(latLegacyPlain["p50Ms"])} / ${fmt(latLegacyPlain["p99Ms"])}`, "", ""],
    [`    its bare restores, p50 / p99`, `${fmt(latLegacyPlain["bareP50Ms"])} / ${fmt(latLegacyPlain["bareP99Ms"])}`, "", ""],
    [
      `RSS: bun alone / model loaded / after full sync / 5 s later`,
      `${plain(rss["baselineMB"])} / ${plain(rss["modelMB"])} / ${plain(rss["syncedMB"])} / ${plain(rss["settledMB"])} MB`,
      "",
      "< 150 MB",
    ],
  ];
  const widths = [0, 1, 2, 3].map((c) => Math.max(...rows.map((r) => r[c]?.length ?? 0)));
  for (const row of rows) console.log(row.map((cell, c) => cell.padEnd(widths[c] ?? 0)).join("  "));
  console.log(`\n(benchmark wall time ${((performance.now() - started) / 1000).toFixed(0)} s)`);
}

await main();
