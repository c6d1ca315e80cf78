/**
 * KubeProxyConfiguration, kubeproxy.config.k8s.io/v1alpha1: every upstream field with upstream's
 * defaults, plus the few kproxy extensions marked "kproxy extension".
 *
 * The schema reads the upstream YAML form (durations as Go strings) and produces `Config`, where
 * every duration is a number of milliseconds. Each error message is written as the tail of a
 * sentence that starts with the offending value (`40 is out of range, expected ...`); load.ts puts
 * the field path and the value in front.
 *
 * Upstream quirks kept on purpose: a zero syncPeriod, configSyncPeriod, udpIdleTimeout, qps or
 * burst means "use the default" (upstream's defaulting treats zero as unset). One difference: an
 * explicit `minSyncPeriod: 0s` is honoured (sync on every change), as upstream documents it, where
 * upstream's defaulting would silently turn it into 1s.
 */
import { z } from "zod";
import { tryParseDuration } from "./duration.ts";
import { isCIDR, isIP, parseDualStackCIDRs, parsePortRange, splitHostPort } from "./net.ts";

export const API_GROUP = "kubeproxy.config.k8s.io";
export const API_VERSION = "kubeproxy.config.k8s.io/v1alpha1";
export const KIND = "KubeProxyConfiguration";

/** Modes kproxy implements; `""` in a config means iptables. */
export const PROXY_MODES = ["iptables", "ipvs", "userspace"] as const;
export type ProxyMode = (typeof PROXY_MODES)[number];

export const DETECT_LOCAL_MODES = ["ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix"] as const;
export type DetectLocalMode = (typeof DETECT_LOCAL_MODES)[number];

/** Schedulers ipvsadm knows; `""` means rr. */
export const IPVS_SCHEDULERS = ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh"] as const;

/** kproxy extension: which iptables binaries to drive; auto follows the host's existing rules. */
export const IPTABLES_FLAVOURS = ["auto", "legacy", "nft"] as const;
export type IPTablesFlavour = (typeof IPTABLES_FLAVOURS)[number];

/** Ports upstream appends to a bind address given without one. */
export const DEFAULT_HEALTHZ_PORT = 10256;
export const DEFAULT_METRICS_PORT = 10249;

const INT32_MAX = 2147483647;

const quoteList = (values: readonly string[]): string => values.map((v) => JSON.stringify(v)).join(", ");

// ---- field builders --------------------------------------------------------------------------

function bool(def: boolean) {
  return z.boolean({ error: "is not a boolean, expected true or false" }).default(def);
}

function str(def = "", what = "a string") {
  return z.string({ error: `is not a string, expected ${what}` }).default(def);
}

function intIn(min: number, max: number) {
  const expected = max >= INT32_MAX ? `expected an integer of ${min} or more` : `expected an integer from ${min} to ${max}`;
  return z
    .number({ error: `is not a number, ${expected}` })
    .int({ error: `is not an integer, ${expected}`, abort: true })
    .min(min, { error: `is out of range, ${expected}`, abort: true })
    .max(max, { error: `is out of range, ${expected}`, abort: true });
}

const DURATION_EXAMPLE = 'expected a Go duration such as "30s", "1m30s" or "250ms"';

/** A Go duration string → milliseconds; negative durations are rejected (none makes sense here). */
function goDuration() {
  return z.string({ error: `is not a string, ${DURATION_EXAMPLE}` }).transform((text, ctx) => {
    const parsed = tryParseDuration(text);
    if (!parsed.ok) {
      ctx.issues.push({ code: "custom", input: text, message: `is not a valid duration (${parsed.reason}), ${DURATION_EXAMPLE}` });
      return z.NEVER;
    }
    if (parsed.ms < 0) {
      ctx.issues.push({ code: "custom", input: text, message: "is negative, expected a duration of 0s or more" });
      return z.NEVER;
    }
    return parsed.ms;
  });
}

/** Optional duration in ms; `zeroMeansDefault` mirrors upstream's `if d == 0 { d = default }`. */
function durationMs(defaultMs: number, zeroMeansDefault = false) {
  return goDuration()
    .optional()
    .transform((ms) => (ms === undefined || (zeroMeansDefault && ms === 0) ? defaultMs : ms));
}

/** logging.flushFrequency is a Go duration string or an integer count of nanoseconds. */
function nanosOrDurationMs(defaultMs: number) {
  return z
    .union([z.string(), z.number()], { error: `is not a duration, ${DURATION_EXAMPLE} or an integer of nanoseconds` })
    .optional()
    .transform((value, ctx) => {
      if (value === undefined) return defaultMs;
      if (typeof value === "number") {
        if (!Number.isInteger(value) || value < 0) {
          ctx.issues.push({ code: "custom", input: value, message: "is not a whole number of nanoseconds of 0 or more" });
          return z.NEVER;
        }
        return value / 1e6;
      }
      const parsed = tryParseDuration(value);
      if (!parsed.ok || parsed.ms < 0) {
        const why = parsed.ok ? "negative" : parsed.reason;
        ctx.issues.push({ code: "custom", input: value, message: `is not a valid duration (${why}), ${DURATION_EXAMPLE}` });
        return z.NEVER;
      }
      return parsed.ms;
    });
}

/** Zero means default, as upstream's defaulting does for qps and burst. */
function zeroMeansDefault<T extends z.ZodType<number | undefined>>(schema: T, def: number) {
  return schema.transform((v) => (v === undefined || v === 0 ? def : v));
}

/** "IP:port", a bare IP, or "". Port 0 is allowed so tests can ask for a free port. */
function bindAddressWithPort(example: string) {
  return str("", "IP:port").refine(
    (v) => {
      if (v === "" || isIP(v)) return true;
      const hostPort = splitHostPort(v);
      return hostPort !== null && isIP(hostPort.host);
    },
    { error: `is not a valid address, expected IP:port with a port from 0 to 65535 (0 picks a free port), such as ${example}` },
  );
}

function oneOf<const T extends readonly string[]>(values: T, what: string, def: T[number]) {
  return z.enum(values, { error: `is not a valid ${what}, expected one of ${quoteList(values)}` }).default(def);
}

const cidrString = z
  .string({ error: "is not a string, expected a CIDR such as 10.0.0.0/8 or fd00::/64" })
  .refine(isCIDR, { error: "is not a valid CIDR, expected a CIDR such as 10.0.0.0/8 or fd00::/64" });

function cidrList() {
  return z.array(cidrString, { error: "is not a list, expected a list of CIDRs" }).default([]);
}

// ---- the configuration -----------------------------------------------------------------------

type ObjectFactory = typeof z.object;

/** Objects reject unknown keys in the strict pass (to warn about them) and drop them in the lenient one. */
function build(object: ObjectFactory) {
  const section = <S extends z.core.$ZodLooseShape>(what: string, shape: S) =>
    object(shape, {
      error: (iss) => (iss.code === "invalid_type" ? `is not a mapping, expected the ${what} settings as key: value pairs` : undefined),
      // Every field of a section has a default, so an absent section parses as {}.
    }).prefault({} as never);

  const clientConnection = section("client connection", {
    kubeconfig: str("", "a file path"),
    acceptContentTypes: str(),
    contentType: str().transform((v) => (v === "" ? "application/vnd.kubernetes.protobuf" : v)),
    qps: zeroMeansDefault(
      z
        .number({ error: "is not a number, expected a number of 0 or more" })
        .min(0, { error: "is out of range, expected a number of 0 or more", abort: true })
        .optional(),
      5,
    ),
    burst: zeroMeansDefault(intIn(0, INT32_MAX).optional(), 10),
  });

  const conntrack = section("conntrack", {
    maxPerCore: intIn(0, INT32_MAX).default(32768),
    min: intIn(0, INT32_MAX).default(131072),
    tcpEstablishedTimeout: durationMs(24 * 3600_000),
    tcpCloseWaitTimeout: durationMs(3600_000),
    tcpBeLiberal: bool(false),
    udpTimeout: durationMs(0),
    udpStreamTimeout: durationMs(0),
  });

  const detectLocal = section("detectLocal", {
    bridgeInterface: str("", "an interface name"),
    interfaceNamePrefix: str("", "an interface name prefix"),
  });

  const iptables = section("iptables", {
    masqueradeAll: bool(false),
    masqueradeBit: intIn(0, 31).default(14),
    localhostNodePorts: bool(true),
    snatNodeInternalIP: bool(false),
    syncPeriod: durationMs(30_000, true),
    minSyncPeriod: durationMs(1_000),
    /** kproxy extension: `auto` (detect from the host's rules, as iptables-wrapper does), `legacy`, `nft`. */
    flavour: oneOf(IPTABLES_FLAVOURS, "iptables flavour", "auto"),
  });

  const ipvs = section("ipvs", {
    syncPeriod: durationMs(30_000, true),
    minSyncPeriod: durationMs(0),
    scheduler: z
      .enum(["", ...IPVS_SCHEDULERS], {
        error: `is not a known IPVS scheduler, expected one of ${quoteList(IPVS_SCHEDULERS)} or "" (meaning rr)`,
      })
      .default(""),
    excludeCIDRs: cidrList(),
    strictARP: bool(false),
    tcpTimeout: durationMs(0),
    tcpFinTimeout: durationMs(0),
    udpTimeout: durationMs(0),
  });

  /** Accepted for compatibility; kproxy has no nftables mode. */
  const nftables = section("nftables", {
    masqueradeAll: bool(false),
    masqueradeBit: intIn(0, 31).default(14),
    syncPeriod: durationMs(30_000, true),
    minSyncPeriod: durationMs(1_000),
  });

  /** Windows settings: accepted so shared configs load, ignored on Linux. */
  const winkernel = section("winkernel", {
    networkName: str(),
    sourceVip: str(),
    enableDSR: bool(false),
    rootHnsEndpointName: str(),
    forwardHealthCheckVip: bool(false),
  });

  const formatOptions = (what: string) =>
    section(what, {
      infoBufferSize: z
        .union([z.string(), z.number()], { error: 'is not a size, expected a quantity such as "0" or "64Ki"' })
        .default("0")
        .transform((v) => String(v)),
      splitStream: bool(false),
    });

  const logging = section("logging", {
    format: oneOf(["text", "json"], "log format", "text"),
    flushFrequency: nanosOrDurationMs(5_000),
    verbosity: intIn(0, INT32_MAX).default(0),
    vmodule: z
      .array(
        object({
          filePattern: z.string({ error: "is not a string, expected a file name pattern" }),
          verbosity: intIn(0, INT32_MAX),
        }),
        { error: "is not a list, expected a list of {filePattern, verbosity}" },
      )
      .default([]),
    options: section("logging options", {
      text: formatOptions("text logging"),
      json: formatOptions("json logging"),
    }),
  });

  return object(
    {
      apiVersion: z.literal(API_VERSION, {
        error: (iss) =>
          iss.input === undefined ? `is missing, expected ${API_VERSION}` : `is not supported, expected ${API_VERSION}`,
      }),
      kind: z.literal(KIND, {
        error: (iss) => (iss.input === undefined ? `is missing, expected ${KIND}` : `is not supported, expected ${KIND}`),
      }),
      featureGates: z
        .record(z.string(), z.boolean({ error: "is not a boolean, expected true or false" }), {
          error: "is not a mapping, expected feature names mapped to true or false",
        })
        .default({}),
      clientConnection,
      logging,
      hostnameOverride: str("", "a node name"),
      bindAddress: str("0.0.0.0", "an IP address")
        .transform((v) => (v === "" ? "0.0.0.0" : v))
        .refine(isIP, { error: "is not a valid IP address, expected an IP address such as 0.0.0.0 or ::" }),
      /** "" means the default for bindAddress's family, and a bare IP gets the default port (load.ts). */
      healthzBindAddress: bindAddressWithPort("0.0.0.0:10256"),
      metricsBindAddress: bindAddressWithPort("127.0.0.1:10249"),
      bindAddressHardFail: bool(false),
      enableProfiling: bool(false),
      showHiddenMetricsForVersion: str("", 'a version such as "1.29"').refine((v) => v === "" || /^\d+\.\d+$/.test(v), {
        error: 'is not a valid version, expected major.minor such as "1.29" or ""',
      }),
      mode: z
        .enum(["", ...PROXY_MODES], {
          error: `is not a valid proxy mode, expected one of ${quoteList(PROXY_MODES)} or "" (meaning iptables)`,
        })
        .default(""),
      iptables,
      ipvs,
      nftables,
      winkernel,
      detectLocalMode: z
        .enum(["", ...DETECT_LOCAL_MODES], {
          error: `is not a valid local traffic detection mode, expected one of ${quoteList(DETECT_LOCAL_MODES)} or "" (meaning ClusterCIDR)`,
        })
        .default(""),
      detectLocal,
      clusterCIDR: str("", "a CIDR").refine((v) => v === "" || parseDualStackCIDRs(v) !== null, {
        error:
          "is not a valid cluster CIDR, expected one CIDR such as 10.244.0.0/16, or an IPv4 and an IPv6 CIDR separated by a comma (10.244.0.0/16,fd00:10:244::/56)",
      }),
      nodePortAddresses: z
        .array(
          z
            .string({ error: 'is not a string, expected a CIDR or "primary"' })
            .refine((v) => v === "primary" || isCIDR(v), { error: 'is not a valid CIDR, expected a CIDR such as 192.168.0.0/16 or "primary"' }),
          { error: 'is not a list, expected a list of CIDRs or "primary"' },
        )
        .default([]),
      oomScoreAdj: intIn(-1000, 1000).default(-999),
      conntrack,
      configSyncPeriod: durationMs(15 * 60_000, true),
      portRange: str("", 'a port range such as "30000-32767" or "30000+2767"').refine((v) => parsePortRange(v) !== null, {
        error: 'is not a valid port range, expected "" or a range of ports from 0 to 65535 such as "30000-32767" or "30000+2767"',
      }),
      /** Userspace mode: how long an idle UDP relay session lives. */
      udpIdleTimeout: durationMs(250, true),
      windowsRunAsService: bool(false),
    },
    { error: (iss) => (iss.code === "invalid_type" ? "is not a mapping, expected a KubeProxyConfiguration document" : undefined) },
  );
}

/** Strict pass: unknown keys become `unrecognized_keys` issues (reported as warnings). */
export const strictConfigSchema = build(z.strictObject as ObjectFactory);
/** Lenient pass: unknown keys are dropped. */
export const configSchema = build(z.object);

/** The parsed configuration: upstream field names; durations in milliseconds. */
export type Config = z.output<typeof configSchema>;
/** The upstream document form as written in YAML (durations as Go strings). */
export type ConfigInput = z.input<typeof configSchema>;

/** The mode that `config.mode` selects (`""` is iptables). */
export function effectiveProxyMode(config: Pick<Config, "mode">): ProxyMode {
  return config.mode === "" ? "iptables" : config.mode;
}

/** The local-traffic detection `config.detectLocalMode` selects (`""` is ClusterCIDR). */
export function effectiveDetectLocalMode(config: Pick<Config, "detectLocalMode">): DetectLocalMode {
  return config.detectLocalMode === "" ? "ClusterCIDR" : config.detectLocalMode;
}
