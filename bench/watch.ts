/**
 * Control-plane benchmark, end to end over TLS: a fake API server (own process) holds 10,000
 * Services and 10,000 EndpointSlices with 50,000 endpoints; kproxy's ApiSource lists and watches
 * them into the ProxyModel.
 *   - initial list → first snapshot, against the reference: the same paginated LIST requests with a
 *     bare fetch + JSON.parse (the floor any client pays), as a ratio
 *   - 10,000 watch events (one endpoint's readiness flips), one at a time: time from the server
 *     writing the event to the model holding it (p50/p99: TLS, HTTP, decoding, validation, model),
 *     and from asking the server for the update (adds the server's own work)
 *   - resident memory with the cluster loaded
 *
 * Usage: bun bench/watch.ts [--services N] [--endpoints N] [--events N] [--list-garbage-every N]
 * (`--list-garbage-every` overrides kproxy's collection interval during the initial lists; 0 turns it off.)
 */
import { loadavg } from "node:os";
import { KubeClient } from "../src/kube/client.ts";
import type { RestConfig } from "../src/kube/kubeconfig.ts";
import { staticToken } from "../src/kube/token.ts";
import { silentLogger } from "../src/log.ts";
import { ProxyModel } from "../src/model/tracker.ts";
import { ApiSource } from "../src/source/api.ts";
import type { ClusterSpec } from "./fixtures/cluster.ts";
import { spawnApiServer } from "./watch/spawn.ts";

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

const NODE = "bench-node";
const spec: ClusterSpec = { services: arg("services", 10000), endpoints: arg("endpoints", 50000), localNode: NODE };
const eventCount = arg("events", 10000);
const PAGE = 500;

const { process: server, url, caPem, token } = await spawnApiServer(spec);

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

try {
  // Reference: the same paginated LIST requests, fetched and parsed, nothing else.
  async function bareList(path: string): Promise<number> {
    let cont = "";
    let items = 0;
    do {
      const q = new URLSearchParams({ limit: String(PAGE), labelSelector: "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless" });
      if (cont) q.set("continue", cont);
      const res = await fetch(`${url}${path}?${q}`, { headers: { Authorization: `Bearer ${token}`, Accept: "application/json" }, tls: { ca: caPem } });
      const body = (await res.json()) as { items: unknown[]; metadata: { continue?: string } };
      items += body.items.length;
      cont = body.metadata.continue ?? "";
    } while (cont);
    return items;
  }
  const config: RestConfig = { server: url, tls: { ca: caPem, insecureSkipVerify: false }, auth: { kind: "token", token: staticToken(token) }, origin: "bench" };
  const client = new KubeClient({ config, qps: 0, logger: silentLogger });
  const listGarbageEvery = process.argv.includes("--list-garbage-every") ? { listGarbageEvery: arg("list-garbage-every", 500) } : {};
  const source = new ApiSource({ client, nodeName: NODE, logger: silentLogger, postStartingEvent: false, reflector: { pageSize: PAGE }, ...listGarbageEvery });
  const model = new ProxyModel({ nodeName: NODE, logger: silentLogger });
  let changes = 0;
  let onChange: (() => void) | undefined;
  model.onChange(() => {
    changes++;
    onChange?.();
  });
  const ac = new AbortController();
  const listStart = performance.now();
  // Time from the server writing an event to the model holding it: the watch path inside kproxy
  // (TLS, HTTP chunking, line decoding, JSON, validation, model update) without the server's own work.
  const onWire: number[] = [];
  const running = source.start((e) => {
    model.apply(e);
    if (e.type !== "upsert") return;
    const sentAt = (e.object as { metadata?: { annotations?: Record<string, string> } }).metadata?.annotations?.["bench.kproxy/sent-at"];
    if (sentAt !== undefined) onWire.push(performance.timeOrigin + performance.now() - Number(sentAt));
  }, ac.signal);
  while (!model.isSynced()) await Bun.sleep(1);
  const snapshot = model.snapshot();
  model.takeChanges();
  const listMs = performance.now() - listStart;

  Bun.gc(true);
  await Bun.sleep(300);
  Bun.gc(true);
  const rssMB = process.memoryUsage().rss / 1024 / 1024;
  const heapMB = process.memoryUsage().heapUsed / 1024 / 1024;

  // The reference runs after the memory reading so its garbage does not count against kproxy.
  const refStart = performance.now();
  const [refServices, refSlices] = await Promise.all([bareList("/api/v1/services"), bareList("/apis/discovery.k8s.io/v1/endpointslices")]);
  const referenceMs = performance.now() - refStart;

  const latencies: number[] = [];
  for (let i = 0; i < eventCount; i++) {
    const j = i % 10000;
    const applied = new Promise<void>((resolve) => (onChange = resolve));
    const t0 = performance.now();
    server.stdin.write(`update ${j} ${2 * Math.floor(i / 10000) + 1 + (i % 2 ? 2 : 0)}\n`);
    server.stdin.flush();
    await applied;
    latencies.push(performance.now() - t0);
    model.takeChanges();
    model.snapshot();
  }
  onChange = undefined;
  latencies.sort((a, b) => a - b);
  onWire.sort((a, b) => a - b);
  ac.abort();
  await running;

  const rows: [string, string, string, string][] = [
    ["initial list → first snapshot", `${listMs.toFixed(0)} ms`, `bare paginated LIST ${referenceMs.toFixed(0)} ms (×${(listMs / referenceMs).toFixed(2)})`, "< 1 s"],
    ["event written by the server → model updated, p50", `${percentile(onWire, 50).toFixed(3)} ms`, "", ""],
    ["event written by the server → model updated, p99", `${percentile(onWire, 99).toFixed(3)} ms`, "", "< 1 ms"],
    ["update requested → model updated, p50", `${percentile(latencies, 50).toFixed(3)} ms`, "adds the server's own work and a pipe", ""],
    ["update requested → model updated, p99", `${percentile(latencies, 99).toFixed(3)} ms`, "adds the server's own work and a pipe", ""],
    ["resident memory, cluster loaded", `${rssMB.toFixed(0)} MB`, `JS heap in use ${heapMB.toFixed(0)} MB`, "< 150 MB"],
  ];
  console.log(`cluster: ${refServices} services, ${refSlices} slices, ${snapshot.services.size} service ports, ${eventCount} events; load average ${loadavg()[0]!.toFixed(2)}`);
  console.log("| measure | kproxy | reference | goal |\n|---|---|---|---|");
  for (const r of rows) console.log(`| ${r.join(" | ")} |`);
  if (changes < eventCount) console.log(`note: only ${changes} model changes for ${eventCount} events`);
} finally {
  server.stdin.write("quit\n");
  server.stdin.flush();
  const timer = setTimeout(() => server.kill("SIGKILL"), 5000);
  await server.exited;
  clearTimeout(timer);
}
