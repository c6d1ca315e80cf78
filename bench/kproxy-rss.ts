/**
 * Resident memory of a whole kproxy process in iptables mode with 10,000 services × 5 endpoints:
 * the API client and reflectors, the model, the iptables backend and the servers, as a node runs it.
 * A fake API server (bench/watch/server.ts) and kproxy run in a fresh network namespace; kproxy lists
 * and watches the cluster over TLS and writes its rules into that namespace's tables.
 *
 * Reported: RSS once the first full sync has landed; RSS sampled every half second for the next
 * minute, which holds two periodic full syncs of the default 30 s syncPeriod (median and highest
 * sample: what an operator watching the node sees); and the peak since start (VmHWM), which the
 * first full sync sets.
 *
 *   bun bench/kproxy-rss.ts [--services N] [--flavour nft|legacy] [--binary dist/kproxy] [--runs 3] [--sample-seconds 60]
 *                           [--bun-flags "--smol"] [--series]
 *
 * `--series` also prints each run's RSS every 2 s (to stderr).
 *
 * Without --binary, kproxy runs from source on this Bun. Runs as root; everything it starts is
 * stopped by PID and the namespace is deleted in `finally`.
 */
import type { Subprocess } from "bun";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { ClusterSpec } from "./fixtures/cluster.ts";
import { spawnApiServer } from "./watch/spawn.ts";

const ROOT = join(import.meta.dir, "..");
const NODE = "bench-node";
const METRICS = "127.0.0.1:10249";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

const services = Number(arg("services", "10000"));
const flavour = arg("flavour", "nft");
const binary = arg("binary", "");
const runs = Number(arg("runs", "3"));
const sampleSeconds = Number(arg("sample-seconds", "60"));
/** Extra Bun runtime flags for the from-source run (e.g. --smol), to compare memory settings. */
const bunFlags = arg("bun-flags", "").split(" ").filter((f) => f !== "");
const printSeries = process.argv.includes("--series");

interface Sample {
  firstSyncS: number;
  syncedMB: number;
  medianMB: number;
  lowestMB: number;
  highestMB: number;
  peakMB: number;
  fullSyncs: number;
  /** Mean wall time of a full sync (the first one included). */
  fullSyncS: number;
}

function statusMB(pid: number, field: "VmRSS" | "VmHWM"): number {
  const status = require("node:fs").readFileSync(`/proc/${pid}/status`, "utf8") as string;
  const kb = Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1]);
  return Math.round(kb / 102.4) / 10;
}

async function metric(name: string): Promise<number | undefined> {
  try {
    const text = await (await fetch(`http://${METRICS}/metrics`)).text();
    const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
    return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(" ") + 1));
  } catch {
    return undefined;
  }
}

async function waitFor<T>(what: string, deadlineMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(100);
  }
}

const fullSyncsDone = () => metric("kubeproxy_sync_full_proxy_rules_duration_seconds_count");

/** Inside the namespace: one fake API server, one kproxy, one sample. */
async function worker(): Promise<Sample> {
  const started: Subprocess[] = [];
  const dir = await mkdtemp(join(tmpdir(), "kproxy-rss-"));
  try {
    const spec: ClusterSpec = { services, endpoints: services * 5, localNode: NODE };
    const { process: server, url, caPem, token } = await spawnApiServer(spec);
    started.push(server);

    await writeFile(join(dir, "ca.pem"), caPem);
    await writeFile(
      join(dir, "kubeconfig"),
      [
        "apiVersion: v1",
        "kind: Config",
        "clusters: [{ name: bench, cluster: { server: " + JSON.stringify(url) + `, certificate-authority: ${join(dir, "ca.pem")} } }]`,
        `users: [{ name: bench, user: { token: ${JSON.stringify(token)} } }]`,
        "contexts: [{ name: bench, context: { cluster: bench, user: bench } }]",
        "current-context: bench",
        "",
      ].join("\n"),
    );
    await writeFile(
      join(dir, "config.yaml"),
      [
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1",
        "kind: KubeProxyConfiguration",
        "mode: iptables",
        `hostnameOverride: ${NODE}`,
        `clientConnection: { kubeconfig: ${join(dir, "kubeconfig")} }`,
        "clusterCIDR: 10.128.0.0/9",
        "healthzBindAddress: 127.0.0.1:10256",
        `metricsBindAddress: ${METRICS}`,
        // nf_conntrack_max is global to the host: leave it alone.
        "conntrack: { maxPerCore: 0 }",
        `iptables: { syncPeriod: 30s, minSyncPeriod: 1s, flavour: ${flavour} }`,
        "",
      ].join("\n"),
    );
    const argv = binary ? [resolve(binary)] : [process.execPath, ...bunFlags, join(ROOT, "src/main.ts")];
    const start = performance.now();
    const kproxy = Bun.spawn([...argv, "--config", join(dir, "config.yaml")], { cwd: dir, stdout: "ignore", stderr: "ignore" });
    started.push(kproxy);

    await waitFor("the first full sync", 300_000, async () => ((await fullSyncsDone()) ?? 0) >= 1 || undefined);
    const firstSyncS = Math.round((performance.now() - start) / 100) / 10;
    const syncedMB = statusMB(kproxy.pid, "VmRSS");
    const samples: number[] = [];
    const t0 = performance.now();
    const until = t0 + sampleSeconds * 1000;
    const series: string[] = [];
    while (performance.now() < until) {
      const mb = statusMB(kproxy.pid, "VmRSS");
      if (samples.length % 4 === 0) series.push(`${Math.round((performance.now() - t0) / 1000)}s:${Math.round(mb)}`);
      samples.push(mb);
      await Bun.sleep(500);
    }
    // Every 2 s, to see where the full syncs fall and how memory comes back after each.
    if (printSeries) console.error(`RSS series (MB): ${series.join(" ")}`);
    samples.sort((a, b) => a - b);
    const medianMB = samples[Math.floor(samples.length / 2)] ?? NaN;
    const highestMB = samples.at(-1) ?? NaN;
    const peakMB = statusMB(kproxy.pid, "VmHWM");
    const fullSyncs = (await fullSyncsDone()) ?? 0;
    const fullSyncSeconds = ((await metric("kubeproxy_sync_full_proxy_rules_duration_seconds_sum")) ?? NaN) / fullSyncs;
    server.stdin.write("quit\n");
    const lowestMB = samples[0] ?? NaN;
    return { firstSyncS, syncedMB, medianMB, lowestMB, highestMB, peakMB, fullSyncs, fullSyncS: Math.round(fullSyncSeconds * 10) / 10 };
  } finally {
    for (const p of started.reverse()) {
      p.kill("SIGTERM");
      await Promise.race([p.exited, Bun.sleep(10_000)]);
      if (p.exitCode === null) p.kill("SIGKILL");
    }
    await rm(dir, { recursive: true, force: true });
  }
}

async function inFreshNamespace(): Promise<Sample> {
  const name = `kp-rss-${process.pid}`;
  const run = (argv: string[]) => Bun.spawnSync(argv, { stderr: "pipe" });
  if (run(["ip", "netns", "add", name]).exitCode !== 0) throw new Error(`cannot create namespace ${name}`);
  try {
    run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"]);
    const args = process.argv.slice(2);
    const result = Bun.spawnSync(["ip", "netns", "exec", name, process.execPath, import.meta.path, "--worker", ...args], {
      stderr: "inherit",
    });
    if (result.exitCode !== 0) throw new Error(`the worker failed (exit ${result.exitCode})`);
    return JSON.parse(result.stdout.toString().trim().split("\n").at(-1) ?? "{}") as Sample;
  } finally {
    run(["ip", "netns", "del", name]);
  }
}

if (process.argv.includes("--worker")) {
  console.log(JSON.stringify(await worker()));
} else {
  if (process.getuid?.() !== 0) throw new Error("run as root: the benchmark creates a network namespace");
  const samples: Sample[] = [];
  for (let i = 0; i < runs; i++) samples.push(await inFreshNamespace());
  const range = (pick: (s: Sample) => number | undefined) => {
    const xs = samples.map(pick).filter((x): x is number => x !== undefined);
    return xs.length === 0 ? "—" : `${Math.min(...xs)}–${Math.max(...xs)}`;
  };
  console.log(`kproxy ${binary ? resolve(binary) : `from source ${bunFlags.join(" ")}`}, iptables ${flavour}, ${services} services × 5 endpoints, ${runs} runs, load ${loadavg()[0]?.toFixed(2)}`);
  console.log(`first full sync after start      ${range((s) => s.firstSyncS)} s`);
  console.log(`RSS after the first full sync    ${range((s) => s.syncedMB)} MB`);
  console.log(`RSS over the next ${sampleSeconds} s, median  ${range((s) => s.medianMB)} MB   (goal < 150 MB)`);
  console.log(`RSS over the next ${sampleSeconds} s, lowest  ${range((s) => s.lowestMB)} MB   (between full syncs)`);
  console.log(`RSS over the next ${sampleSeconds} s, highest ${range((s) => s.highestMB)} MB`);
  console.log(`peak RSS since start (VmHWM)      ${range((s) => s.peakMB)} MB`);
  console.log(`full syncs by the end             ${range((s) => s.fullSyncs)}, each ${range((s) => s.fullSyncS)} s`);
}
