/**
 * Runs inside the IPVS guest (see bench/ipvs-sync.ts): the ipvs backend against the bare tools
 * applying the very same input, in one run.
 *
 * - full sync of N services × 5 endpoints into an empty IPVS table, each side in a fresh network
 *   namespace (kproxy: read the kernel, plan, diff, `ipset restore` + `ipvsadm -R` + `ip -batch` for kube-ipvs0 + companion rules) vs bare
 *   `ipvsadm -R` + `ipset restore` of the batches kproxy wrote;
 * - one endpoint changed among them (a pod turning not-ready: its real servers drain at weight 0),
 *   partial sync vs bare `ipvsadm -R` (+ `ipset restore` when kproxy wrote one) of the same batch
 *   on the same starting state, the reference running first in half of the rounds; kproxy's own
 *   time (the sync minus the commands it ran) is reported too;
 * - a periodic full sync with nothing to change (reads and diffs only), absolute;
 * - resident memory with the cluster loaded and synced.
 *
 * Each measurement is repeated and the median reported, with the median of the per-round ratios.
 * Rounds after the first alternate which side goes first. Prints one JSON line at the end.
 *
 *   bun bench/ipvs/guest.ts [services] [rounds]
 */
import { IpvsBackend } from "../../src/backends/ipvs/backend.ts";
import { defaultRuleOptions } from "../../src/backends/iptables/options.ts";
import { silentLogger } from "../../src/log.ts";
import { createMetrics } from "../../src/metrics.ts";
import { ProxyModel } from "../../src/model/tracker.ts";
import type { ChangeSet, Snapshot } from "../../src/model/types.ts";
import { realClock } from "../../src/system/clock.ts";
import { bunExec, type Exec, runChecked } from "../../src/system/exec.ts";
import { diffIpvs, parseHostPort, type StartedCommand, type StreamingExec, streamingExec, type VirtualServer } from "../../src/system/ipvs.ts";
import { procSysctl } from "../../src/system/sysctl.ts";
import { type ClusterSpec, serviceObject, sliceObject } from "../fixtures/cluster.ts";

const SERVICES = Number(process.argv[2] ?? 10_000);
const ROUNDS = Number(process.argv[3] ?? 3);
/** One-endpoint changes measured (each a flip to not-ready or back). */
const CHANGES = 20;
/**
 * `partial`: skip the full-sync comparison (minutes at 10,000 services under emulation); `full`:
 * only the full-sync comparison. Either keeps a 10,000-service run within a few minutes.
 */
const PARTIAL_ONLY = process.argv[4] === "partial";
const FULL_ONLY = process.argv[4] === "full";
const NODE = "bench-node";

/**
 * Records what went to ipvsadm -R and ipset restore, so the reference applies the same bytes, and
 * how long commands ran (kproxy's own time is a sync's time minus that).
 */
class RecordingExec implements StreamingExec {
  readonly writes: { tool: string; stdin: string }[] = [];
  commandMs = 0;
  /** Commands started first and fed later (kproxy's partial syncs), as the real binary runs them; only in the guest's own namespace. */
  private readonly streaming = streamingExec(bunExec);
  constructor(private readonly inner: Exec = bunExec) {}
  start(argv: readonly string[], options?: { readonly timeoutMs?: number }): StartedCommand {
    if (this.inner !== bunExec) throw new Error("streaming only in the guest's own namespace");
    const t = performance.now();
    const started = this.streaming.start(argv, options);
    let stdin = "";
    return {
      write: (text) => {
        stdin += text;
        started.write(text);
      },
      finish: async () => {
        if (stdin !== "") this.writes.push({ tool: argv[0] ?? "", stdin });
        try {
          return await started.finish();
        } finally {
          this.commandMs += performance.now() - t;
        }
      },
    };
  }
  async run(argv: readonly string[], options?: Parameters<Exec["run"]>[1]) {
    const tool = argv[0] ?? "";
    if ((tool === "ipvsadm" && argv[1] === "-R") || (tool === "ipset" && argv[1] === "restore")) {
      this.writes.push({ tool, stdin: typeof options?.stdin === "string" ? options.stdin : "" });
    }
    const t = performance.now();
    try {
      return await this.inner.run(argv, options);
    } finally {
      this.commandMs += performance.now() - t;
    }
  }
}

const sameWrites = (a: readonly { tool: string; stdin: string }[], b: readonly { tool: string; stdin: string }[]) =>
  a.length === b.length && a.every((w, i) => w.tool === b[i]?.tool && w.stdin === b[i]?.stdin);

let namespaces = 0;
const live: string[] = [];
/**
 * Empties and deletes the namespaces made so far. A node's other namespaces hold no virtual
 * servers; while ours do, the guest's own /proc/net/ip_vs is incomplete (the kernel loses its
 * place in the shared table), and kproxy would fall back to the slower `ipvsadm -S`.
 */
async function dropNamespaces(): Promise<void> {
  for (const name of live.splice(0)) {
    await sh(["ip", "netns", "exec", name, "ipvsadm", "-C"]);
    await sh(["ip", "netns", "del", name]);
  }
}
/**
 * A fresh network namespace with a node address, and an Exec running commands inside it. IPVS
 * keeps deleted real servers in a per-namespace trash list for minutes and searches it on every
 * add, so a measurement after another one's clear-out would pay for it: each gets its own.
 */
async function freshNamespace(): Promise<Exec> {
  const name = `bench${namespaces++}`;
  await sh(["ip", "netns", "add", name]);
  live.push(name);
  const exec: Exec = { run: (argv, options) => bunExec.run(["ip", "netns", "exec", name, ...argv], options) };
  const batch = ["link set lo up", "link add bench0 type dummy", "addr add 192.168.50.2/24 dev bench0", "link set bench0 up"];
  await runChecked(exec, ["ip", "-batch", "-"], { stdin: `${batch.join("\n")}\n` });
  return exec;
}

const sh = (argv: string[], stdin?: string) => runChecked(bunExec, argv, stdin === undefined ? { timeoutMs: 600_000 } : { stdin, timeoutMs: 600_000 });

/** Times `fn` after a full collection, so neither side pays for the other's garbage. */
async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  Bun.gc(true);
  const t = performance.now();
  const value = await fn();
  return [performance.now() - t, value];
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

/** The listed virtual servers ("-t 10.96.0.27:80"), with their real servers' weights, from `ipvsadm -L -n -t …`. */
async function readServers(keys: ReadonlySet<string>): Promise<VirtualServer[]> {
  const out: VirtualServer[] = [];
  for (const key of keys) {
    const [flag, hostPort] = key.split(" ") as [string, string];
    const listed = await bunExec.run(["ipvsadm", "-L", "-n", flag, hostPort]);
    if (listed.code !== 0) continue;
    let vs: VirtualServer | undefined;
    const reals: VirtualServer["realServers"][number][] = [];
    for (const line of listed.stdout.split("\n")) {
      const head = /^(TCP|UDP)\s+(\S+)\s+(\S+)(?:\s+persistent\s+(\d+))?/.exec(line);
      if (head) {
        const { address, port } = parseHostPort(head[2] as string);
        vs = { protocol: head[1] === "UDP" ? "udp" : "tcp", address, port, scheduler: head[3] as string, persistenceTimeout: Number(head[4] ?? 0), flags: [], realServers: reals };
      }
      const rs = /^\s+->\s+(\S+)\s+Masq\s+(\d+)/.exec(line);
      if (rs) reals.push({ ...parseHostPort(rs[1] as string), forwarding: "masq", weight: Number(rs[2]) });
    }
    if (vs) out.push(vs);
  }
  return out;
}

async function applyUntimed(lines: readonly string[]): Promise<void> {
  if (lines.length > 0) await sh(["ipvsadm", "-R"], `${lines.join("\n")}\n`);
}

/** The bare tools on the same input, one after the other, or both at once (as kproxy runs them). */
async function reference(writes: readonly { tool: string; stdin: string }[], concurrent = false, exec: Exec = bunExec): Promise<number> {
  Bun.gc(true);
  const t = performance.now();
  const apply = (w: { tool: string; stdin: string }) =>
    runChecked(exec, w.tool === "ipvsadm" ? ["ipvsadm", "-R"] : ["ipset", "restore"], { stdin: w.stdin, timeoutMs: 600_000 });
  if (concurrent) await Promise.all(writes.map(apply));
  else for (const w of writes) await apply(w);
  return performance.now() - t;
}

const t0 = performance.now();
/** Progress on stderr (the guest's stderr file), for watching a long run. */
function progress(what: string): void {
  console.error(`${((performance.now() - t0) / 1000).toFixed(1)} s: ${what}`);
}

async function main(): Promise<void> {
  // A node address for the NodePorts (the guest has no network card).
  await sh(["ip", "link", "add", "bench0", "type", "dummy"]);
  await sh(["ip", "addr", "add", "192.168.50.2/24", "dev", "bench0"]);
  await sh(["ip", "link", "set", "bench0", "up"]);

  const spec: ClusterSpec = { services: SERVICES, localNode: NODE };
  const model = new ProxyModel({ nodeName: NODE, logger: silentLogger });
  for (let i = 0; i < SERVICES; i++) model.apply({ type: "upsert", kind: "Service", object: serviceObject(spec, i) });
  for (let j = 0; j < SERVICES; j++) model.apply({ type: "upsert", kind: "EndpointSlice", object: sliceObject(spec, j) });
  model.apply({ type: "synced" });
  model.takeChanges();
  const loaded = model.snapshot();
  const empty: Snapshot = { services: new Map(), endpoints: new Map(), node: loaded.node };

  progress(`model loaded (${SERVICES} services)`);
  const newBackend = (exec: Exec) =>
    new IpvsBackend({
    exec,
    clock: realClock,
    logger: silentLogger,
    metrics: createMetrics({ mode: "ipvs" }),
    flavour: "nft",
    ruleOptions: { ...defaultRuleOptions, clusterCIDRs: ["10.128.0.0/9"] },
    nodePortAddresses: [],
    scheduler: "",
    excludeCIDRs: [],
    strictARP: false,
    timeouts: { tcp: 0, tcpFin: 0, udp: 0 },
    sysctl: procSysctl(),
    drainCheckIntervalMs: 600_000,
  });
  const full: ChangeSet = { changed: new Set(), full: true, triggerTimes: [] };

  const fullOurs: number[] = [];
  const fullRef: number[] = [];
  const fullRefConcurrent: number[] = [];
  const fullPairRatios: number[] = [];
  let batchLines = { ipvs: 0, ipset: 0 };
  let recorded: { startUp: { tool: string; stdin: string }[]; writes: { tool: string; stdin: string }[] } | undefined;
  /** The bare tools, each in a namespace of its own brought to the same starting point (the sets exist). */
  const references = async (startUp: { tool: string; stdin: string }[], writes: { tool: string; stdin: string }[]) => {
    for (const concurrent of [false, true]) {
      const exec = await freshNamespace();
      await reference(startUp, false, exec);
      (concurrent ? fullRefConcurrent : fullRef).push(await reference(writes, concurrent, exec));
    }
    progress(`reference ${Math.round(fullRef.at(-1) ?? 0)} ms, concurrent ${Math.round(fullRefConcurrent.at(-1) ?? 0)} ms`);
  };
  for (let r = 0; r < (PARTIAL_ONLY ? 0 : ROUNDS); r++) {
    // Every other round the reference goes first (with the batches the first round recorded), so
    // neither side always runs on a machine the other has just warmed or loaded.
    const referenceFirst = recorded !== undefined && r % 2 === 1;
    if (referenceFirst && recorded) await references(recorded.startUp, recorded.writes);
    // kproxy in its own namespace: start-up (sysctls, kube-ipvs0, the empty sets, the companion
    // chains) first, then the measured sync of the whole cluster.
    const oursExec = new RecordingExec(await freshNamespace());
    const ours = newBackend(oursExec);
    await ours.sync(empty, full);
    const startUp = [...oursExec.writes];
    oursExec.writes.length = 0;
    const [ms] = await timed(() => ours.sync(loaded, full));
    await ours.settled();
    await ours.close();
    fullOurs.push(ms);
    progress(`full sync ${Math.round(ms)} ms`);
    const writes = [...oursExec.writes];
    if (recorded && !(sameWrites(recorded.startUp, startUp) && sameWrites(recorded.writes, writes))) throw new Error("full sync wrote different batches in another round");
    recorded ??= { startUp, writes };
    batchLines = {
      ipvs: writes.filter((w) => w.tool === "ipvsadm").reduce((n, w) => n + w.stdin.split("\n").length - 1, 0),
      ipset: writes.filter((w) => w.tool === "ipset").reduce((n, w) => n + w.stdin.split("\n").length - 1, 0),
    };
    if (!referenceFirst) await references(startUp, writes);
    fullPairRatios.push(ms / (fullRef.at(-1) as number));
    await dropNamespaces();
  }
  const f = (ms: number) => Math.round(ms);
  const fullResult = () => ({
    full: {
      oursMs: f(median(fullOurs)),
      referenceMs: f(median(fullRef)),
      ratio: +(median(fullOurs) / median(fullRef)).toFixed(2),
      concurrentReferenceMs: f(median(fullRefConcurrent)),
      concurrentRatio: +(median(fullOurs) / median(fullRefConcurrent)).toFixed(2),
      pairRatio: fullPairRatios.length > 0 ? +median(fullPairRatios).toFixed(2) : null,
      samples: { ours: fullOurs.map(f), reference: fullRef.map(f), concurrentReference: fullRefConcurrent.map(f) },
      },
  });
  if (FULL_ONLY) {
    Bun.gc(true);
    console.log(JSON.stringify({ services: SERVICES, servicePorts: loaded.services.size, batchLines, ...fullResult() }));
    return;
  }
  // The rest runs in the guest's own namespace with the cluster loaded.
  const exec = new RecordingExec();
  const backend = newBackend(exec);
  await backend.sync(empty, full);
  await backend.sync(loaded, full);
  await backend.settled();
  progress("cluster loaded for the partial syncs");
  // (ipvsadm -S would take most of a minute at 10,000 services; no other namespace holds any now)
  const virtualServers = (await sh(["cat", "/proc/net/ip_vs"])).stdout.split("\n").filter((l) => /^(TCP|UDP|SCTP) /.test(l)).length;

  const [steadyMs] = await timed(() => backend.sync(loaded, full));
  await backend.settled();
  progress(`steady full sync ${Math.round(steadyMs)} ms`);

  // One endpoint of service 17 turns not-ready (odd revision) and back (even revision). The batch
  // of each direction is always the same (weight 0 for the leaving endpoint, which the drain check
  // then deletes; an add when it returns), recorded in the warm-up.
  const changeOurs: number[] = [];
  const changeRef: number[] = [];
  const changePairRatios: number[] = [];
  const changeOwnMs: number[] = [];
  const changeBatches: string[] = [];
  const batchOf = new Map<number, { tool: string; stdin: string }[]>();
  // The first flip and back are warm-up (first runs of the partial path), not measured.
  for (let r = 1; r <= CHANGES + 2; r++) {
    const warmUp = r <= 2;
    // Half of the measured rounds of each direction run the reference first.
    const referenceFirst = !warmUp && r % 4 >= 2;
    // Revisions 1, 2, 11, 12, 21, …: the odd ones all flip the same endpoint (revision % 5).
    const revision = 10 * Math.floor((r - 1) / 2) + (r % 2 === 1 ? 1 : 2);
    model.apply({ type: "upsert", kind: "EndpointSlice", object: sliceObject(spec, 17, revision) });
    const changes = model.takeChanges();
    const snap = model.snapshot();
    const keys = new Set<string>();
    for (const key of changes.changed) {
      const sp = snap.services.get(key) ?? loaded.services.get(key);
      if (sp) keys.add(`${sp.protocol === "UDP" ? "-u" : "-t"} ${sp.clusterIP}:${sp.port}`);
    }
    const before = await readServers(keys);
    let refMs = 0;
    if (referenceFirst) {
      // The same batch on the same starting state, which is then put back.
      refMs = await reference(batchOf.get(r % 2) ?? []);
      await applyUntimed(diffIpvs(await readServers(keys), before));
    }
    exec.writes.length = 0;
    exec.commandMs = 0;
    const [ms] = await timed(() => backend.sync(snap, changes));
    const ownMs = ms - exec.commandMs;
    const writes = [...exec.writes];
    await backend.checkDraining();
    await backend.settled();
    if (warmUp) {
      batchOf.set(r % 2, writes);
      continue;
    }
    if (!sameWrites(writes, batchOf.get(r % 2) ?? [])) throw new Error(`round ${r} wrote ${JSON.stringify(writes)}, not the recorded ${JSON.stringify(batchOf.get(r % 2))}`);
    if (!referenceFirst) {
      const after = await readServers(keys);
      await applyUntimed(diffIpvs(after, before));
      refMs = await reference(writes);
      await applyUntimed(diffIpvs(await readServers(keys), after));
    }
    changeOurs.push(ms);
    changeRef.push(refMs);
    changePairRatios.push(ms / refMs);
    changeOwnMs.push(ownMs);
    if (changeBatches.length < 2) changeBatches.push(writes.map((w) => `${w.tool}: ${w.stdin.trim()}`).join(" | "));
    progress(`one endpoint: ${Math.round(ms)} ms (own ${ownMs.toFixed(1)} ms), reference ${Math.round(refMs)} ms${referenceFirst ? " (ran first)" : ""}`);
  }

  Bun.gc(true);
  const memory = process.memoryUsage();
  console.log(
    JSON.stringify({
      services: SERVICES,
      servicePorts: loaded.services.size,
      virtualServers,
      batchLines,
      ...fullResult(),
      oneEndpoint: {
        oursMs: f(median(changeOurs)),
        referenceMs: f(median(changeRef)),
        ratio: +(median(changeOurs) / median(changeRef)).toFixed(2),
        pairRatio: +median(changePairRatios).toFixed(2),
        ownMs: +median(changeOwnMs).toFixed(1),
        samples: { ours: changeOurs.map(f), reference: changeRef.map(f) },
        batches: changeBatches.slice(0, 2),
      },
      steadyFullSyncMs: f(steadyMs),
      rssMiB: +(memory.rss / 2 ** 20).toFixed(1),
      heapUsedMiB: +(memory.heapUsed / 2 ** 20).toFixed(1),
    }),
  );
  await backend.close();
}

await main();
process.exit(0);
