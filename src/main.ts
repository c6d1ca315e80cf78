/**
 * kproxy's entry point: flags → configuration → wiring → signals. Nothing else reads process
 * arguments or the environment.
 */
import { writeFile } from "node:fs/promises";
import type { Backend } from "./backends/backend.ts";
import { DryRunBackend } from "./backends/dry-run.ts";
import { iptablesBackendFromConfig } from "./backends/iptables/backend.ts";
import { cleanupIptables } from "./backends/iptables/cleanup.ts";
import { hostAddresses } from "./backends/iptables-options.ts";
import { cleanupIpvs } from "./backends/ipvs/cleanup.ts";
import { ipvsBackendFromConfig, ipvsUnavailableReason } from "./backends/ipvs/backend.ts";
import { plannerFor } from "./backends/planners.ts";
import { userspaceBackendFromConfig } from "./backends/userspace/backend.ts";
import { CliError, helpText, parseArgs, resolveConfig } from "./cli.ts";
import { type Config, ConfigError, configzObject, effectiveProxyMode, nodeName, writeConfigFile } from "./config/index.ts";
import { type Demo, DEMO_NODE_NAME, portFree, startDemo } from "./demo.ts";
import { connect } from "./kube/connect.ts";
import { createLogger, type Logger } from "./log.ts";
import { createMetrics, type KproxyMetrics } from "./metrics.ts";
import { ProxyModel } from "./model/tracker.ts";
import { ProxierHealth } from "./server/health.ts";
import { BindError, type ServerHandle } from "./server/serve.ts";
import { startHealthServer, startMetricsServer } from "./server/start.ts";
import { ApiSource } from "./source/api.ts";
import { ManifestSource, type ManifestFiles } from "./source/manifest.ts";
import type { Source } from "./source/types.ts";
import { SyncLoop } from "./sync/loop.ts";
import { realClock } from "./system/clock.ts";
import { bunExec } from "./system/exec.ts";
import { buildTarget, version } from "./version.ts";

/** Exit codes: 0 ok, 1 bad configuration or fatal runtime error, 2 bad command line. */
export const EXIT_OK = 0;
export const EXIT_CONFIG = 1;
export const EXIT_USAGE = 2;

export interface MainIO {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  /** Resolves when the process is asked to stop (SIGTERM/SIGINT). */
  readonly stopSignal: AbortSignal;
}

const demoFiles = (manifest: string): ManifestFiles => ({
  read: async () => manifest,
  stat: async () => ({ mtimeMs: 0, size: manifest.length, ino: 0 }),
  watch: () => () => {},
});

function versionLine(): string {
  return `kproxy ${version} (bun ${Bun.version}, ${buildTarget})`;
}

/**
 * The demo runs without root or a cluster: loopback servers, the demo node, the userspace mode (unless
 * another mode was asked for) relaying on 127.0.0.1, nothing written to the kernel. A default server
 * port that is taken is swapped for a free one, said in `notes`.
 */
function demoConfig(config: Config, notes: string[]): Config {
  const healthz = config.healthzBindAddress.startsWith("0.0.0.0:") ? "127.0.0.1:10256" : config.healthzBindAddress;
  const free = (address: string, name: string) => {
    const m = /^127\.0\.0\.1:(\d+)$/.exec(address);
    if (!m || m[1] === "0" || portFree("127.0.0.1", Number(m[1]))) return address;
    notes.push(`port ${m[1]} on 127.0.0.1 is taken; the demo's ${name} server uses a free port (see "Serving")`);
    return "127.0.0.1:0";
  };
  return {
    ...config,
    mode: config.mode === "" ? "userspace" : config.mode,
    bindAddress: "127.0.0.1",
    hostnameOverride: DEMO_NODE_NAME,
    healthzBindAddress: free(healthz, "health"),
    metricsBindAddress: free(config.metricsBindAddress, "metrics"),
  };
}

function sourceFor(config: Config, cli: ReturnType<typeof parseArgs>, node: string, logger: Logger, demo: Demo | undefined): Source | Promise<Source> {
  if (demo) return new ManifestSource({ path: "<built-in demo>", files: demoFiles(demo.manifest), logger });
  if (cli.servicesFile !== undefined) return new ManifestSource({ path: cli.servicesFile, logger });
  return connect({
    kubeconfigPath: config.clientConnection.kubeconfig || undefined,
    masterUrl: cli.master,
    qps: config.clientConnection.qps,
    burst: config.clientConnection.burst,
    contentType: config.clientConnection.contentType,
    logger,
  }).then((client) => new ApiSource({ client, nodeName: node, logger }));
}

/** How a run treats the kernel: apply, plan and print (--dry-run), or plan only (the demo, which must need no root). */
type Apply = "apply" | "print" | "plan-only";

function backendFor(config: Config, apply: Apply, io: MainIO, logger: Logger, deps: { metrics: KproxyMetrics; health: ProxierHealth }): Backend {
  const mode = effectiveProxyMode(config);
  const planner = plannerFor(config, hostAddresses);
  if (!planner) throw new ConfigError("mode", [{ path: "mode", value: mode, message: "is not implemented by this kproxy build yet" }]);
  if (apply === "print") {
    return new DryRunBackend(mode, planner, (plan) => io.stdout(plan));
  }
  // Plan-only runs (the demo) relay on the main thread and never write portal rules, even as root.
  if (mode === "userspace") {
    return userspaceBackendFromConfig(config, {
      logger,
      registry: deps.metrics.registry,
      ...(apply === "apply" ? { portals: "auto", health: deps.health } : { portals: "off", threads: 0 }),
    });
  }
  if (apply === "apply" && mode === "iptables") return iptablesBackendFromConfig(config, { metrics: deps.metrics, health: deps.health, logger });
  if (apply === "apply" && mode === "ipvs") {
    // Upstream falls back to iptables here; kproxy refuses, so an operator who asked for ipvs notices.
    const reason = ipvsUnavailableReason();
    if (reason !== undefined) {
      throw new Error(`the ipvs mode needs IPVS in the kernel (module ip_vs), and this kernel has none (ipvsadm: ${reason}); kproxy does not fall back to iptables: load ip_vs or set mode: iptables`);
    }
    return ipvsBackendFromConfig(config, { metrics: deps.metrics, health: deps.health, logger });
  }
  return new DryRunBackend(mode, planner, (plan, changes) => {
    logger.info("Planned proxy rules (not applied)", { lines: plan.split("\n").length, full: changes.full, changed: changes.changed.size });
  });
}

/** Applies oomScoreAdj as upstream does; a container or unprivileged user may not be allowed to. */
async function applyOomScoreAdj(value: number, logger: Logger): Promise<void> {
  try {
    await writeFile("/proc/self/oom_score_adj", String(value));
  } catch (err) {
    logger.debug(2, "Could not set oom_score_adj", { value, err });
  }
}

export async function main(argv: readonly string[], io: MainIO): Promise<number> {
  let cli: ReturnType<typeof parseArgs>;
  try {
    cli = parseArgs(argv);
  } catch (err) {
    if (err instanceof CliError) {
      io.stderr(`kproxy: ${err.message}\nRun 'kproxy --help' for usage.\n`);
      return EXIT_USAGE;
    }
    throw err;
  }
  if (cli.help) {
    io.stdout(helpText());
    return EXIT_OK;
  }
  if (cli.version) {
    io.stdout(`${versionLine()}\n`);
    return EXIT_OK;
  }

  let config: Config;
  let warnings: readonly string[];
  try {
    ({ config, warnings } = resolveConfig(cli));
  } catch (err) {
    if (err instanceof ConfigError) {
      io.stderr(`kproxy: ${err.message}\n`);
      return EXIT_CONFIG;
    }
    throw err;
  }
  const demoNotes: string[] = [];
  if (cli.demo) config = demoConfig(config, demoNotes);

  const logger = createLogger({
    format: config.logging.format === "json" ? "json" : "text",
    verbosity: config.logging.verbosity,
    write: (line) => io.stderr(`${line}\n`),
  });
  for (const warning of warnings) logger.warn(warning);
  for (const note of demoNotes) logger.warn(note);

  if (cli.writeConfigTo !== undefined) {
    writeConfigFile(cli.writeConfigTo, config);
    logger.info("Wrote the effective configuration", { path: cli.writeConfigTo });
    return EXIT_OK;
  }
  if (cli.cleanup) {
    try {
      const removed = await cleanupIptables({ exec: bunExec, logger });
      const ipvs = await cleanupIpvs({ exec: bunExec, logger, iptables: false });
      logger.info("Cleanup done", { chainsRemoved: removed, ...ipvs });
      return EXIT_OK;
    } catch (err) {
      logger.error("Cleanup failed", { err });
      return EXIT_CONFIG;
    }
  }

  const mode = effectiveProxyMode(config);
  const node = nodeName(config.hostnameOverride);
  logger.info("Starting kproxy", { version, mode, node, dryRun: cli.dryRun, demo: cli.demo });
  await applyOomScoreAdj(config.oomScoreAdj, logger);

  const stop = new AbortController();
  const onStop = () => stop.abort();
  io.stopSignal.addEventListener("abort", onStop, { once: true });

  const clock = realClock;
  const metrics = createMetrics({ mode });
  // Upstream's v1alpha1 proxier health uses 2 × iptables.syncPeriod in every mode.
  const health = new ProxierHealth({ healthTimeoutMs: 2 * config.iptables.syncPeriod, clock });
  const syncPeriods = mode === "ipvs" ? config.ipvs : config.iptables;

  let backend: Backend;
  try {
    backend = backendFor(config, cli.dryRun ? "print" : cli.demo ? "plan-only" : "apply", io, logger, { metrics, health });
  } catch (err) {
    if (err instanceof ConfigError) {
      io.stderr(`kproxy: ${err.message}\n`);
      return EXIT_CONFIG;
    }
    throw err;
  }

  let demo: Demo | undefined;
  if (cli.demo) {
    try {
      demo = await startDemo();
    } catch (err) {
      logger.error("Cannot start the demo", { err });
      await backend.close();
      return EXIT_CONFIG;
    }
    if (demo.nodePortNote !== undefined) logger.warn(demo.nodePortNote);
  }

  const servers: ServerHandle[] = [];
  if (!cli.dryRun) {
    try {
      const healthServer = await startHealthServer({ address: config.healthzBindAddress, health, metrics, logger, clock, hardFail: config.bindAddressHardFail });
      const metricsServer = await startMetricsServer({
        address: config.metricsBindAddress,
        metrics,
        mode,
        configz: () => configzObject(config),
        logger,
        clock,
        hardFail: config.bindAddressHardFail,
      });
      for (const s of [healthServer, metricsServer]) if (s) servers.push(s);
    } catch (err) {
      if (err instanceof BindError) {
        logger.error("Cannot bind, and bindAddressHardFail is set", { err });
        for (const s of servers) await s.stop();
        await demo?.stop();
        return EXIT_CONFIG;
      }
      throw err;
    }
    for (const s of servers) {
      void s.listening.then((port) => logger.info("Serving", { server: s.name, address: s.address, port }));
    }
  }

  const model = new ProxyModel({ nodeName: node, logger, now: () => clock.now() });
  let dryRunDone: (() => void) | undefined;
  // The demo shows its Service working once, after the first sync, then leaves everything up.
  let demoRequests: (() => Promise<void>) | undefined;
  if (demo && mode === "userspace" && !cli.dryRun) {
    const d = demo;
    const print = (line: string) => io.stdout(`${line}\n`);
    demoRequests = async () => {
      print(`demo: Service demo/web, NodePort ${d.nodePort} on 127.0.0.1, endpoints ${d.backends.map((b) => `${b.name} (127.0.0.1:${b.port})`).join(" and ")}`);
      await d.sendRequests(print);
      for (const s of servers) {
        const port = await s.listening;
        if (port !== undefined) print(`${s.name}: http://127.0.0.1:${port}/${s.name === "healthz" ? "healthz" : "metrics"}`);
      }
      print("kproxy keeps serving; stop it with Ctrl-C");
    };
  }
  const loop = new SyncLoop({
    model,
    backend,
    health,
    metrics,
    clock,
    logger,
    minSyncPeriodMs: syncPeriods.minSyncPeriod,
    syncPeriodMs: syncPeriods.syncPeriod,
    onSynced: (outcome) => {
      if (cli.dryRun && outcome.ok) dryRunDone?.();
      if (outcome.ok && demoRequests) {
        const run = demoRequests;
        demoRequests = undefined;
        void run();
      }
    },
  });
  if (cli.dryRun) dryRunDone = () => stop.abort();

  let exitCode = EXIT_OK;
  try {
    const source = await sourceFor(config, cli, node, logger, demo);
    const sourceDone = source.start((event) => model.apply(event), stop.signal);
    const loopDone = loop.start(stop.signal);
    await Promise.all([sourceDone, loopDone]);
  } catch (err) {
    logger.error("kproxy stopped on an error", { err });
    exitCode = EXIT_CONFIG;
  } finally {
    stop.abort();
    for (const s of servers) await s.stop();
    await backend.close();
    await demo?.stop();
    io.stopSignal.removeEventListener("abort", onStop);
  }
  // Kernel state is deliberately left in place: a restarted kproxy takes it over without a gap.
  logger.info("kproxy stopped", { exitCode });
  return exitCode;
}

if (import.meta.main) {
  const stopping = new AbortController();
  for (const signal of ["SIGTERM", "SIGINT"] as const) process.on(signal, () => stopping.abort());
  const code = await main(process.argv.slice(2), {
    stdout: (text) => process.stdout.write(text),
    stderr: (text) => process.stderr.write(text),
    stopSignal: stopping.signal,
  }).catch((err: unknown) => {
    process.stderr.write(`kproxy: ${err instanceof Error ? err.message : String(err)}\n`);
    return EXIT_CONFIG;
  });
  process.exit(code);
}
