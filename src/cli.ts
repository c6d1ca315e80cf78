/**
 * kproxy's command line: kube-proxy's operator flags (`--flag=value` or `--flag value`, booleans as
 * `--cleanup` or `--cleanup=false`, as pflag does), and how they combine with the --config file:
 * an explicitly given flag wins over the file.
 */
import {
  type Config,
  ConfigError,
  type ConfigResult,
  checkConfig,
  configToObject,
  defaultConfig,
  loadConfigFile,
  parseConfigObject,
  type ReadTextFile,
  readTextFileSync,
} from "./config/index.ts";

export interface CliOptions {
  /** --config: KubeProxyConfiguration file. */
  readonly configFile?: string;
  readonly kubeconfig?: string;
  /** --master: API server URL; overrides the kubeconfig's server. */
  readonly master?: string;
  readonly hostnameOverride?: string;
  readonly proxyMode?: string;
  readonly clusterCIDR?: string;
  readonly metricsBindAddress?: string;
  readonly healthzBindAddress?: string;
  /** --v: log verbosity. */
  readonly verbosity?: number;
  readonly writeConfigTo?: string;
  /** kproxy: read Services and EndpointSlices from this manifest file instead of the API server. */
  readonly servicesFile?: string;
  readonly cleanup: boolean;
  readonly version: boolean;
  readonly help: boolean;
  /** Plan and print what would be applied; touch nothing. */
  readonly dryRun: boolean;
  /** kproxy: run on the built-in demo services (no cluster, no root). */
  readonly demo: boolean;
}

export class CliError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CliError";
  }
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };
type StringKey = "configFile" | "kubeconfig" | "master" | "hostnameOverride" | "proxyMode" | "clusterCIDR" | "metricsBindAddress" | "healthzBindAddress" | "writeConfigTo" | "servicesFile";
type BoolKey = "cleanup" | "version" | "help" | "dryRun" | "demo";

type FlagSpec =
  | { readonly kind: "string"; readonly key: StringKey; readonly valueName: string; readonly help: string }
  | { readonly kind: "bool"; readonly key: BoolKey; readonly help: string }
  | { readonly kind: "int"; readonly key: "verbosity"; readonly valueName: string; readonly help: string };

const FLAGS: Readonly<Record<string, FlagSpec>> = {
  cleanup: { kind: "bool", key: "cleanup", help: "If true cleanup iptables and ipvs rules and exit." },
  "cluster-cidr": {
    kind: "string",
    key: "clusterCIDR",
    valueName: "string",
    help: "The CIDR range of the pods in the cluster (for dual-stack, a comma-separated IPv4,IPv6 pair). Traffic to a Service from outside it is masqueraded.",
  },
  config: { kind: "string", key: "configFile", valueName: "string", help: "The path to the KubeProxyConfiguration file. Flags given explicitly override its values." },
  demo: { kind: "bool", key: "demo", help: "Run on built-in demo Services: no cluster and no root needed." },
  "dry-run": { kind: "bool", key: "dryRun", help: "Plan and print what would be applied, touching nothing." },
  "healthz-bind-address": {
    kind: "string",
    key: "healthzBindAddress",
    valueName: "ipport",
    help: "The IP address with port for the health check server to serve on (default 0.0.0.0:10256).",
  },
  help: { kind: "bool", key: "help", help: "Help for kproxy." },
  "hostname-override": { kind: "string", key: "hostnameOverride", valueName: "string", help: "If non-empty, will be used as the name of the Node that kproxy is running on." },
  kubeconfig: { kind: "string", key: "kubeconfig", valueName: "string", help: "Path to kubeconfig file with authorization information (the master location can be overridden by --master)." },
  master: { kind: "string", key: "master", valueName: "string", help: "The address of the Kubernetes API server (overrides any value in kubeconfig)." },
  "metrics-bind-address": {
    kind: "string",
    key: "metricsBindAddress",
    valueName: "ipport",
    help: "The IP address with port for the metrics server to serve on (default 127.0.0.1:10249).",
  },
  "proxy-mode": { kind: "string", key: "proxyMode", valueName: "ProxyMode", help: "Which proxy mode to use: 'iptables' (default), 'ipvs' or 'userspace'." },
  "services-file": {
    kind: "string",
    key: "servicesFile",
    valueName: "string",
    help: "Read Services and EndpointSlices from this YAML or JSON manifest file (watched for changes) instead of the API server.",
  },
  v: { kind: "int", key: "verbosity", valueName: "Level", help: "Number for the log level verbosity." },
  version: { kind: "bool", key: "version", help: "Print version information and quit." },
  "write-config-to": {
    kind: "string",
    key: "writeConfigTo",
    valueName: "string",
    help: "If set, write the effective configuration (defaults filled in) to this file and exit.",
  },
};

const SHORTHANDS: Readonly<Record<string, string>> = { h: "help", v: "v" };

/** kube-proxy flags kproxy takes from the config file only: say where to put them. */
const CONFIG_FILE_ONLY: Readonly<Record<string, string>> = {
  "bind-address": "bindAddress",
  "bind-address-hard-fail": "bindAddressHardFail",
  "config-sync-period": "configSyncPeriod",
  "conntrack-max-per-core": "conntrack.maxPerCore",
  "conntrack-min": "conntrack.min",
  "conntrack-tcp-timeout-close-wait": "conntrack.tcpCloseWaitTimeout",
  "conntrack-tcp-timeout-established": "conntrack.tcpEstablishedTimeout",
  "detect-local-mode": "detectLocalMode",
  "feature-gates": "featureGates",
  "iptables-localhost-nodeports": "iptables.localhostNodePorts",
  "iptables-masquerade-bit": "iptables.masqueradeBit",
  "iptables-min-sync-period": "iptables.minSyncPeriod",
  "iptables-sync-period": "iptables.syncPeriod",
  "ipvs-exclude-cidrs": "ipvs.excludeCIDRs",
  "ipvs-min-sync-period": "ipvs.minSyncPeriod",
  "ipvs-scheduler": "ipvs.scheduler",
  "ipvs-strict-arp": "ipvs.strictARP",
  "ipvs-sync-period": "ipvs.syncPeriod",
  "kube-api-burst": "clientConnection.burst",
  "kube-api-content-type": "clientConnection.contentType",
  "kube-api-qps": "clientConnection.qps",
  "logging-format": "logging.format",
  "masquerade-all": "iptables.masqueradeAll",
  "nodeport-addresses": "nodePortAddresses",
  "oom-score-adj": "oomScoreAdj",
  profiling: "enableProfiling",
  "udp-timeout": "udpIdleTimeout",
};

/** Go's strconv.ParseBool spellings. */
function parseBool(flag: string, text: string): boolean {
  if (["1", "t", "T", "true", "TRUE", "True"].includes(text)) return true;
  if (["0", "f", "F", "false", "FALSE", "False"].includes(text)) return false;
  throw new CliError(`invalid argument ${JSON.stringify(text)} for --${flag}: expected true or false`);
}

function unknownFlag(name: string): CliError {
  const field = CONFIG_FILE_ONLY[name];
  if (field) return new CliError(`unknown flag: --${name} (kproxy takes this setting from the --config file: set ${field} there)`);
  return new CliError(`unknown flag: --${name} (see --help)`);
}

/** Parses the arguments after the program name (`process.argv.slice(2)`). Throws CliError. */
export function parseArgs(argv: readonly string[]): CliOptions {
  const options: Mutable<CliOptions> = { cleanup: false, version: false, help: false, dryRun: false, demo: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    let body: string;
    if (arg.startsWith("--") && arg.length > 2) body = arg.slice(2);
    else if (arg.startsWith("-") && arg.length > 1 && !arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      const short = eq < 0 ? arg.slice(1) : arg.slice(1, eq);
      const long = SHORTHANDS[short];
      if (!long) throw new CliError(`unknown shorthand flag: ${JSON.stringify(short)} in ${arg} (see --help)`);
      body = eq < 0 ? long : `${long}${arg.slice(eq)}`;
    } else {
      throw new CliError(`unexpected argument ${JSON.stringify(arg)}: kproxy takes flags only (see --help)`);
    }

    const eq = body.indexOf("=");
    const name = eq < 0 ? body : body.slice(0, eq);
    const inline = eq < 0 ? undefined : body.slice(eq + 1);
    const spec = FLAGS[name];
    if (!spec) throw unknownFlag(name);

    if (spec.kind === "bool") {
      options[spec.key] = inline === undefined ? true : parseBool(name, inline);
      continue;
    }
    let value = inline;
    if (value === undefined) {
      const next = argv[i + 1];
      if (next === undefined) throw new CliError(`flag needs an argument: --${name}`);
      value = next;
      i++;
    }
    if (spec.kind === "int") {
      if (!/^\d+$/.test(value)) throw new CliError(`invalid argument ${JSON.stringify(value)} for --${name}: expected a whole number of 0 or more`);
      options[spec.key] = Number(value);
    } else {
      options[spec.key] = value;
    }
  }
  if (options.demo && options.servicesFile !== undefined) throw new CliError("--demo and --services-file cannot be used together: pick one source of Services");
  return options;
}

/** Usage text in kube-proxy's style: one line per flag. */
export function helpText(): string {
  const rows = Object.entries(FLAGS).map(([name, spec]) => {
    const short = Object.entries(SHORTHANDS).find(([, long]) => long === name)?.[0];
    const lead = short ? `  -${short}, ` : "      ";
    const value = spec.kind === "bool" ? "" : ` ${spec.valueName}`;
    return { left: `${lead}--${name}${value}`, help: spec.help };
  });
  const width = Math.max(...rows.map((r) => r.left.length)) + 3;
  return [
    "kproxy is a Kubernetes network proxy that runs on each node. It reflects Services and EndpointSlices",
    "from the Kubernetes API (or a manifest file) as iptables rules, IPVS virtual servers or userspace",
    "relays, like kube-proxy, and reads the same KubeProxyConfiguration file.",
    "",
    "Usage:",
    "  kproxy [flags]",
    "",
    "Flags:",
    ...rows.map((r) => r.left.padEnd(width) + r.help),
    "",
  ].join("\n");
}

type Doc = Record<string, unknown>;

function section(doc: Doc, key: string): Doc {
  const value = doc[key];
  if (value !== null && typeof value === "object" && !Array.isArray(value)) return value as Doc;
  const fresh: Doc = {};
  doc[key] = fresh;
  return fresh;
}

/**
 * `config` with the explicitly given flags applied on top (flags win over the file). The result is
 * checked again; a bad flag value throws ConfigError naming the field and the flag.
 */
export function applyFlags(config: Config, cli: CliOptions, source = "command line"): Config {
  const doc = configToObject(config);
  const notes: Record<string, string> = {};
  const set = (path: string, flag: string, value: unknown): void => {
    const parts = path.split(".");
    let target = doc;
    for (const part of parts.slice(0, -1)) target = section(target, part);
    target[parts[parts.length - 1] ?? path] = value;
    notes[path] = `(set by --${flag})`;
  };
  if (cli.kubeconfig !== undefined) set("clientConnection.kubeconfig", "kubeconfig", cli.kubeconfig);
  if (cli.hostnameOverride !== undefined) set("hostnameOverride", "hostname-override", cli.hostnameOverride);
  if (cli.proxyMode !== undefined) set("mode", "proxy-mode", cli.proxyMode);
  if (cli.clusterCIDR !== undefined) set("clusterCIDR", "cluster-cidr", cli.clusterCIDR);
  if (cli.metricsBindAddress !== undefined) set("metricsBindAddress", "metrics-bind-address", cli.metricsBindAddress);
  if (cli.healthzBindAddress !== undefined) set("healthzBindAddress", "healthz-bind-address", cli.healthzBindAddress);
  if (cli.verbosity !== undefined) set("logging.verbosity", "v", cli.verbosity);
  if (Object.keys(notes).length === 0) return checkConfig(config, source).config;
  // The document came from a valid Config, so the only possible problems are the flags' values.
  return parseConfigObject(doc, source, notes).config;
}

export interface ResolvedConfig extends ConfigResult {
  /** Where the file values came from ("defaults" without --config). */
  readonly source: string;
}

/**
 * The effective configuration: the --config file (or the defaults), then the flags. Throws
 * ConfigError (print `.problems`, exit 1) for a missing or bad file or a bad flag value.
 */
export function resolveConfig(cli: CliOptions, readFile: ReadTextFile = readTextFileSync): ResolvedConfig {
  const fromFile = cli.configFile !== undefined ? loadConfigFile(cli.configFile, readFile) : { config: defaultConfig(), warnings: [] };
  const source = cli.configFile ?? "defaults";
  try {
    return { config: applyFlags(fromFile.config, cli), warnings: fromFile.warnings, source };
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigError("command line", err.details, [...fromFile.warnings, ...err.warnings]);
    throw err;
  }
}
