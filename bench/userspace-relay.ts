/**
 * The userspace relay against its references, side by side in one run on loopback: a direct
 * connection, kproxy's TCP relay (its own process) and HAProxy (one process, mode tcp). Measures iperf3
 * throughput (one stream, and two at once), wrk requests/s with keep-alive and with a new connection per request, the p99 latency
 * the proxy adds, and the proxy's resident memory with 1,000 idle relayed connections.
 *
 *   bun bench/userspace-relay.ts [--seconds 2] [--rounds 3] [--connections 50] [--idle 1000] [--threads N]
 *                                [--bun-threads] [--reuseport] [--no-rebalance] [--no-main-thread]
 *                                [--also-threads 1,4] [--server bun|nginx]
 *
 * The HTTP server is nginx as Debian configures it (a worker per CPU; Debian package nginx-light),
 * the server of the reference figures in the design notes: a server in C keeps the server's own cost
 * per request small next to the proxies'. Without nginx, or with `--server bun`, it is kproxy's small
 * Bun server (bench/relay/http-server.ts), which costs about as much per request as the proxies and
 * reacts to how requests bunch up, so the proxies' differences show less there.
 *
 * kproxy runs as it does by default in userspace mode: N relay threads accepting on one shared
 * listening socket, each on the epoll relay, the accepting thread passing a connection on to the
 * thread with fewer and a saturated thread handing busy ones to an idle one (N defaults to the number of CPUs, as kproxy's does; HAProxy likewise runs one thread per CPU by
 * default). That row, marked "(default)", is the one the goal is
 * judged on. For reference it also runs relaying on its main thread with Bun's sockets (the fallback
 * when threads cannot start; `--no-main-thread` leaves it out), with `--reuseport` N threads each with its
 * own SO_REUSEPORT listener, with `--no-rebalance` N threads that keep each connection on the thread
 * that accepted it (no passing on at accept, no hand-over of busy connections), and with `--bun-threads` N threads on Bun's sockets. Each figure is the
 * median of `rounds` runs, the targets taking turns within a round so that load from elsewhere on the
 * machine hits them alike; each round's ratio to HAProxy is printed too, with its spread.
 *
 * HAProxy runs as Debian ships it plus only what the bench needs: mode tcp, one process, its default
 * thread count, no splicing (not on by default), no logging (no log line).
 * Needs iperf3, wrk and haproxy (and nginx, see above) on PATH or in /usr/sbin. Everything it starts
 * is stopped by PID in `finally`.
 */
import type { Subprocess } from "bun";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

const args = parseArgs(process.argv.slice(2));
const seconds = Number(args["seconds"] ?? 2);
const rounds = Number(args["rounds"] ?? 3);
const connections = Number(args["connections"] ?? 50);
const idleConnections = Number(args["idle"] ?? 1000);
const threads = Number(args["threads"] ?? navigator.hardwareConcurrency);
const bunThreads = args["bun-threads"] !== undefined;
const reusePortRow = args["reuseport"] !== undefined;
/** A row of the default relay with rebalancing off, to show what moving connections between threads is worth. */
const noRebalanceRow = args["no-rebalance"] !== undefined;
const mainThreadRow = args["no-main-thread"] === undefined;
/** Thread counts for extra rows of the default relay, e.g. `--also-threads 1,4`. */
const alsoThreads = (args["also-threads"] ?? "").split(",").filter((x) => x !== "").map(Number);
/** The HTTP server behind every path: nginx where installed, else kproxy's own small Bun server. */
const server = args["server"] ?? (Bun.which("nginx") || existsSync("/usr/sbin/nginx") ? "nginx" : "bun");
if (server !== "bun" && server !== "nginx") throw new Error(`--server: bun or nginx, not ${server}`);
const HOST = "127.0.0.1";
const benchDir = import.meta.dir;
const bun = process.execPath;

interface Target {
  readonly name: string;
  readonly httpPort: number;
  readonly iperfPort: number;
  /** The proxy process whose memory is read; none for the direct path. */
  readonly pid: number | undefined;
}

interface Row {
  throughputGbps: number[];
  /** Two parallel streams: whether the proxy spreads long-lived busy connections over its cores. */
  twoStreamsGbps: number[];
  keepAliveRps: number[];
  keepAliveP99Ms: number[];
  newConnRps: number[];
  newConnP99Ms: number[];
  /** One connection, one request at a time: the latency a hop adds without queueing behind others. */
  singleP99Ms: number[];
  singleP50Ms: number[];
  idleRssMiB: number | undefined;
  baseRssMiB: number | undefined;
}

const started: Subprocess[] = [];
const loadAtStart = loadAverage();

/** The 1, 5 and 15 minute load averages: others share the machine, and the figures say how much. */
function loadAverage(): string {
  return (require("node:fs").readFileSync("/proc/loadavg", "utf8") as string).split(" ").slice(0, 3).join(" ");
}
let tempDir: string | undefined;

try {
  const benchStart = Date.now();
  tempDir = await mkdtemp(join(tmpdir(), "kproxy-bench-relay-"));
  let httpPort: number;
  if (server === "nginx") {
    httpPort = await freePort();
    const conf = join(tempDir, "nginx.conf");
    await writeFile(conf, nginxConfig(httpPort, tempDir));
    spawnTracked([findNginx(), "-p", tempDir, "-c", conf]);
    await waitForPort(httpPort);
  } else {
    const http = spawnTracked([bun, join(benchDir, "relay/http-server.ts")]);
    httpPort = ((await firstJsonLine(http)) as { port: number }).port;
  }

  const iperfPort = await freePort();
  spawnTracked(["iperf3", "-s", "-B", HOST, "-p", String(iperfPort)]);
  await waitForPort(iperfPort);

  const kproxyTargets: Target[] = [];
  const variants: { name: string; threads: number; engine: string; accept?: string; noRebalance?: boolean }[] = [
    { name: `kproxy ${threads} threads (default)`, threads, engine: "epoll" },
  ];
  if (noRebalanceRow) variants.push({ name: `kproxy ${threads} threads, no rebalancing`, threads, engine: "epoll", noRebalance: true });
  if (reusePortRow) variants.push({ name: `kproxy ${threads} threads, reuseport`, threads, engine: "epoll", accept: "reuseport" });
  for (const n of alsoThreads) variants.push({ name: `kproxy ${n} threads`, threads: n, engine: "epoll" });
  if (mainThreadRow) variants.push({ name: "kproxy main thread, bun sockets", threads: 0, engine: "bun" });
  if (bunThreads) variants.push({ name: `kproxy ${threads} threads, bun sockets`, threads, engine: "bun" });
  for (const { name, threads: n, engine, accept, noRebalance } of variants) {
    const argv = [bun, join(benchDir, "relay/kproxy-relay.ts"), `http=${HOST}:${httpPort}`, `iperf=${HOST}:${iperfPort}`, `--threads=${n}`, `--engine=${engine}`];
    if (accept) argv.push(`--accept=${accept}`);
    if (noRebalance) argv.push("--no-rebalance");
    const p = spawnTracked(argv);
    const ports = ((await firstJsonLine(p)) as { ports: Record<string, number> }).ports;
    kproxyTargets.push({ name, httpPort: req(ports["http"]), iperfPort: req(ports["iperf"]), pid: p.pid });
  }

  const haHttp = await freePort();
  const haIperf = await freePort();
  const cfg = join(tempDir, "haproxy.cfg");
  await writeFile(cfg, haproxyConfig(haHttp, httpPort, haIperf, iperfPort));
  const haproxy = spawnTracked([findHaproxy(), "-db", "-f", cfg]);
  await waitForPort(haHttp);
  await waitForPort(haIperf);

  const targets: Target[] = [
    { name: "direct", httpPort, iperfPort, pid: undefined },
    ...kproxyTargets,
    { name: "haproxy", httpPort: haHttp, iperfPort: haIperf, pid: haproxy.pid },
  ];
  const rows = new Map<string, Row>();
  for (const t of targets) {
    rows.set(t.name, {
      throughputGbps: [],
      twoStreamsGbps: [],
      keepAliveRps: [],
      keepAliveP99Ms: [],
      newConnRps: [],
      newConnP99Ms: [],
      singleP99Ms: [],
      singleP50Ms: [],
      idleRssMiB: undefined,
      baseRssMiB: undefined,
    });
  }
  const row = (t: Target) => rows.get(t.name) as Row;

  for (const t of targets) row(t).baseRssMiB = t.pid === undefined ? undefined : rssMiB(t.pid);
  // Warm up each path once so the first measured target is not the one paying for it.
  for (const t of targets) await wrk(t.httpPort, 1, false, 4);
  for (let r = 0; r < rounds; r++) {
    // Each round starts with a different target, so a burst of load from elsewhere does not always
    // land on the same one.
    const order = targets.map((_, i) => targets[(i + r) % targets.length] as Target);
    for (const t of order) row(t).throughputGbps.push(await iperf(t.iperfPort, seconds));
    for (const t of order) row(t).twoStreamsGbps.push(await iperf(t.iperfPort, seconds, 2));
    for (const t of order) {
      const k = await wrk(t.httpPort, seconds, false, connections);
      row(t).keepAliveRps.push(k.rps);
      row(t).keepAliveP99Ms.push(k.p99Ms);
      const c = await wrk(t.httpPort, seconds, true, connections);
      row(t).newConnRps.push(c.rps);
      row(t).newConnP99Ms.push(c.p99Ms);
      const one = await wrk(t.httpPort, seconds, false, 1);
      row(t).singleP99Ms.push(one.p99Ms);
      row(t).singleP50Ms.push(one.p50Ms);
    }
  }
  for (const t of targets) {
    if (t.pid === undefined) continue;
    row(t).idleRssMiB = await rssWithIdleConnections(t.httpPort, t.pid, idleConnections);
  }
  printTable(targets, rows, (Date.now() - benchStart) / 1000);
} finally {
  for (const p of started.reverse()) {
    try {
      p.kill("SIGTERM");
    } catch {
      // already gone
    }
  }
  await Promise.all(
    started.map((p) =>
      Promise.race([
        p.exited,
        Bun.sleep(2000).then(() => {
          p.kill("SIGKILL");
        }),
      ]),
    ),
  );
  if (tempDir) await rm(tempDir, { recursive: true, force: true });
}

function median(xs: readonly number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

function printTable(targets: Target[], rows: Map<string, Row>, elapsedS: number): void {
  const get = (name: string) => rows.get(name) as Row;
  const d = get("direct");
  const h = get("haproxy");
  const kNames = targets.map((t) => t.name).filter((n) => n.startsWith("kproxy"));
  const all = targets.map((t) => get(t.name));
  const ratio = (a: number, b: number) => (b > 0 ? `${(a / b).toFixed(2)}×` : "-");
  const ratios = (pick: (r: Row) => number) => kNames.flatMap((n) => [ratio(pick(get(n)), pick(h)), ratio(pick(get(n)), pick(d))]);
  const blank = kNames.flatMap(() => ["", ""]);
  const tp = (r: Row) => median(r.throughputGbps);
  const tp2 = (r: Row) => median(r.twoStreamsGbps);
  const ka = (r: Row) => median(r.keepAliveRps);
  const nc = (r: Row) => median(r.newConnRps);
  const kaP99 = (r: Row) => median(r.keepAliveP99Ms);
  const ncP99 = (r: Row) => median(r.newConnP99Ms);
  const p99One = (r: Row) => median(r.singleP99Ms);
  const p50One = (r: Row) => median(r.singleP50Ms);
  const lines: string[][] = [
    ["metric (median)", ...targets.map((t) => t.name), ...kNames.flatMap((n) => [`${n} / haproxy`, `${n} / direct`])],
    ["iperf3 throughput (Gbit/s)", ...all.map((r) => tp(r).toFixed(1)), ...ratios(tp)],
    ["iperf3 throughput, 2 streams (Gbit/s)", ...all.map((r) => tp2(r).toFixed(1)), ...ratios(tp2)],
    ["wrk keep-alive (req/s)", ...all.map((r) => fmtK(ka(r))), ...ratios(ka)],
    ["wrk new conn per request (req/s)", ...all.map((r) => fmtK(nc(r))), ...ratios(nc)],
    ["p50 / p99, 1 conn serial (µs)", ...all.map((r) => `${(1000 * p50One(r)).toFixed(0)} / ${(1000 * p99One(r)).toFixed(0)}`), ...blank],
    [
      "added p50 / p99, 1 conn serial (µs)",
      ...all.map((r) => (r === d ? "-" : `${(1000 * (p50One(r) - p50One(d))).toFixed(0)} / ${(1000 * (p99One(r) - p99One(d))).toFixed(0)}`)),
      ...blank,
    ],
    [`added p99, ${connections} conns keep-alive (ms)`, ...all.map((r) => (r === d ? "-" : (kaP99(r) - kaP99(d)).toFixed(2))), ...blank],
    [`added p99, ${connections} conns new conn (ms)`, ...all.map((r) => (r === d ? "-" : (ncP99(r) - ncP99(d)).toFixed(2))), ...blank],
    ["RSS at rest (MiB)", ...all.map((r) => fmtMiB(r.baseRssMiB)), ...blank],
    [
      `RSS, ${idleConnections} idle conns (MiB)`,
      ...all.map((r) => fmtMiB(r.idleRssMiB)),
      ...kNames.flatMap((n) => [ratio(get(n).idleRssMiB ?? 0, h.idleRssMiB ?? 0), ""]),
    ],
  ];
  const widths = lines[0]!.map((_, i) => Math.max(...lines.map((l) => (l[i] ?? "").length)));
  const fmt = (l: string[]) => "| " + l.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ") + " |";
  console.log(
    `\nuserspace relay, loopback, ${navigator.hardwareConcurrency} cores; median of ${rounds} rounds of ${seconds} s; ` +
      `wrk ${connections} connections against ${server === "nginx" ? "nginx" : "a Bun HTTP server"}; HAProxy ${haproxyVersion()}; ${elapsedS.toFixed(0)} s in all; ` +
      `load average at start ${loadAtStart}, at end ${loadAverage()}`,
  );
  console.log(fmt(lines[0]!));
  console.log("|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|");
  for (const l of lines.slice(1)) console.log(fmt(l));
  console.log("\nraw runs (Gbit/s | 2 streams Gbit/s | keep-alive req/s | new-conn req/s):");
  for (const t of targets) {
    const r = get(t.name);
    console.log(`  ${t.name}: ${r.throughputGbps.map((x) => x.toFixed(1)).join(" ")} | ${r.twoStreamsGbps.map((x) => x.toFixed(1)).join(" ")} | ${r.keepAliveRps.map(fmtK).join(" ")} | ${r.newConnRps.map(fmtK).join(" ")}`);
  }
  // Each round's figure over HAProxy's in the same round: load from elsewhere on the machine moves both
  // alike, so the spread of these says how far the medians above can be trusted.
  console.log("\nper-round ratios to haproxy: median [lowest-highest] (rounds >= 1.00x)");
  const perRound = (k: readonly number[], ref: readonly number[]) => {
    const rs = k.map((x, i) => x / (ref[i] ?? Number.NaN)).filter((x) => Number.isFinite(x));
    const lo = Math.min(...rs);
    const hi = Math.max(...rs);
    return `${median(rs).toFixed(2)}x [${lo.toFixed(2)}-${hi.toFixed(2)}] (${rs.filter((x) => x >= 1).length}/${rs.length})`;
  };
  for (const n of kNames) {
    const k = get(n);
    console.log(
      `  ${n}: throughput ${perRound(k.throughputGbps, h.throughputGbps)} | 2 streams ${perRound(k.twoStreamsGbps, h.twoStreamsGbps)} | keep-alive ${perRound(k.keepAliveRps, h.keepAliveRps)} | ` +
        `new conn ${perRound(k.newConnRps, h.newConnRps)}`,
    );
  }
}

function haproxyVersion(): string {
  const out = Bun.spawnSync([findHaproxy(), "-v"]).stdout.toString();
  return /version (\S+)/.exec(out)?.[1] ?? "?";
}

function fmtK(n: number): string {
  return n >= 1000 ? `${(n / 1000).toFixed(1)}k` : n.toFixed(0);
}

function fmtMiB(n: number | undefined): string {
  return n === undefined ? "-" : n.toFixed(1);
}

async function iperf(port: number, secs: number, streams = 1): Promise<number> {
  const out = await run(["iperf3", "-c", HOST, "-p", String(port), "-t", String(secs), "-P", String(streams), "-J"]);
  const json = JSON.parse(out) as { end?: { sum_received?: { bits_per_second?: number } }; error?: string };
  const bps = json.end?.sum_received?.bits_per_second;
  if (bps === undefined) throw new Error(`iperf3 gave no result: ${json.error ?? out.slice(0, 200)}`);
  return bps / 1e9;
}

async function wrk(port: number, secs: number, newConnection: boolean, conns: number): Promise<{ rps: number; p99Ms: number; p50Ms: number }> {
  const argv = ["wrk", "-t", String(Math.min(2, conns)), "-c", String(conns), "-d", `${secs}s`, "--latency"];
  if (newConnection) argv.push("-H", "Connection: close");
  argv.push(`http://${HOST}:${port}/`);
  const out = await run(argv);
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
  const p99 = /^\s+99%\s+([\d.]+)(us|ms|s)\s*$/m.exec(out);
  const p50 = /^\s+50%\s+([\d.]+)(us|ms|s)\s*$/m.exec(out);
  if (!rps || !p99 || !p50) throw new Error(`cannot parse wrk output:\n${out}`);
  const ms = (m: RegExpExecArray) => Number(m[1]) * (m[2] === "us" ? 0.001 : m[2] === "ms" ? 1 : 1000);
  return { rps: Number(rps[1]), p99Ms: ms(p99), p50Ms: ms(p50) };
}

/** Opens `count` relayed HTTP connections, proves each went through with one request, then reads RSS. */
async function rssWithIdleConnections(port: number, pid: number, count: number): Promise<number> {
  const request = `GET / HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
  const sockets: { end(): void }[] = [];
  try {
    let answered = 0;
    const allAnswered = Promise.withResolvers<void>();
    const handlers = {
      data(s: { data: { seen: boolean } }) {
        if (s.data.seen) return;
        s.data.seen = true;
        if (++answered === count) allAnswered.resolve();
      },
    };
    const batch = 100;
    for (let i = 0; i < count; i += batch) {
      const opened = await Promise.all(
        Array.from({ length: Math.min(batch, count - i) }, () =>
          Bun.connect<{ seen: boolean }>({ hostname: HOST, port, data: { seen: false }, socket: handlers }),
        ),
      );
      for (const s of opened) {
        s.write(request);
        sockets.push(s);
      }
    }
    await Promise.race([
      allAnswered.promise,
      Bun.sleep(15_000).then(() => {
        throw new Error(`only ${answered}/${count} idle connections answered`);
      }),
    ]);
    await Bun.sleep(200);
    return rssMiB(pid);
  } finally {
    for (const s of sockets) s.end();
  }
}

function rssMiB(pid: number): number {
  const status = require("node:fs").readFileSync(`/proc/${pid}/status`, "utf8") as string;
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) / 1024;
}

function haproxyConfig(httpPort: number, httpTarget: number, iperfPort: number, iperfTarget: number): string {
  return `global
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 2m
    timeout server 2m
frontend http_in
    bind ${HOST}:${httpPort}
    default_backend http_out
backend http_out
    server s1 ${HOST}:${httpTarget}
frontend iperf_in
    bind ${HOST}:${iperfPort}
    default_backend iperf_out
backend iperf_out
    server s1 ${HOST}:${iperfTarget}
`;
}

/**
 * nginx as Debian configures it (a worker per CPU) answering every request itself with a small body;
 * keep-alive connections are not closed after a request count, so keep-alive runs measure keep-alive.
 */
function nginxConfig(port: number, dir: string): string {
  return `worker_processes auto;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/nginx-error.log warn;
events {
    worker_connections 8192;
}
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path ${dir}/body;
    server {
        listen ${HOST}:${port} backlog=4096;
        location / {
            return 200 "kproxy relay benchmark\n";
        }
    }
}
`;
}

function findNginx(): string {
  return Bun.which("nginx") ?? "/usr/sbin/nginx";
}

function findHaproxy(): string {
  return Bun.which("haproxy") ?? "/usr/sbin/haproxy";
}

function spawnTracked(argv: string[]): Subprocess<"ignore", "pipe", "inherit"> {
  const p = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "inherit" });
  started.push(p);
  return p;
}

async function firstJsonLine(p: Subprocess<"ignore", "pipe", "inherit">): Promise<unknown> {
  const reader = p.stdout.getReader();
  let text = "";
  const deadline = Date.now() + 10_000;
  while (!text.includes("\n")) {
    if (Date.now() > deadline) throw new Error("child did not report its port");
    const { value, done } = await reader.read();
    if (done) throw new Error(`child exited before reporting its port: ${text}`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return JSON.parse(text.slice(0, text.indexOf("\n")));
}

async function run(argv: string[]): Promise<string> {
  const p = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0) throw new Error(`${argv.join(" ")} exited ${code}: ${err || out}`);
  return out;
}

async function freePort(): Promise<number> {
  const l = Bun.listen({ hostname: HOST, port: 0, socket: { data() {} } });
  const port = l.port;
  l.stop(true);
  return port;
}

/** Waits until something listens on the port, without connecting (a probe connection upsets iperf3). */
async function waitForPort(port: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const out = await run(["ss", "-Hltn", `sport = :${port}`]);
    if (out.trim() !== "") return;
    if (Date.now() > deadline) throw new Error(`port ${port} never opened`);
    await Bun.sleep(20);
  }
}

function req<T>(v: T | undefined): T {
  if (v === undefined) throw new Error("missing value");
  return v;
}

function parseArgs(argv: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (!a.startsWith("--")) continue;
    const eq = a.indexOf("=");
    if (eq > 0) out[a.slice(2, eq)] = a.slice(eq + 1);
    else if (argv[i + 1] === undefined || argv[i + 1]!.startsWith("--")) out[a.slice(2)] = "";
    else out[a.slice(2)] = argv[++i] as string;
  }
  return out;
}
