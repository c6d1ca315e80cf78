/**
 * Loading a KubeProxyConfiguration: file → YAML → strict pass (to warn about unknown fields, as
 * upstream does before it falls back to lenient decoding) → lenient pass → defaults that depend on
 * other fields → cross-field checks. Bad input always ends in a ConfigError listing every problem.
 */
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import type { z } from "zod";
import { formatDuration } from "./duration.ts";
import { GO_YAML_OPTIONS } from "./yaml-dialect.ts";
import { configToObject } from "./encode.ts";
import { ConfigError, type ConfigProblem } from "./errors.ts";
import { isIP, joinHostPort, parseIP } from "./net.ts";
import {
  API_VERSION,
  type Config,
  configSchema,
  DEFAULT_HEALTHZ_PORT,
  DEFAULT_METRICS_PORT,
  KIND,
  strictConfigSchema,
} from "./schema.ts";

export interface ConfigResult {
  readonly config: Config;
  /** Unknown fields and similar: worth a log line, not worth refusing to start. */
  readonly warnings: readonly string[];
}

export type ReadTextFile = (path: string) => string;

export const readTextFileSync: ReadTextFile = (path) => readFileSync(path, "utf8");

/** Extra words for a field's problems, e.g. `(set by --proxy-mode)`, keyed by field path. */
export type ProblemNotes = Readonly<Record<string, string>>;

type Path = readonly PropertyKey[];

function pathText(path: Path): string {
  let text = "";
  for (const key of path) {
    if (typeof key === "number") text += `[${key}]`;
    else text += text === "" ? String(key) : `.${String(key)}`;
  }
  return text;
}

function valueAt(root: unknown, path: Path): unknown {
  let value = root;
  for (const key of path) {
    if (value === null || typeof value !== "object") return undefined;
    value = (value as Record<PropertyKey, unknown>)[key as string];
  }
  return value;
}

/** YAML `key:` with nothing after it is null; treat it as absent, as Go's decoder effectively does. */
function dropNulls(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(dropNulls);
  if (value === null || typeof value !== "object") return value;
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) if (v !== null) out[key] = dropNulls(v);
  return out;
}

function issueMessage(issue: z.core.$ZodIssue): string {
  const message = issue.message;
  // Our own messages start in lower case ("is out of range, ..."); anything else is zod's wording.
  if (/^[a-z]/.test(message)) return message;
  if (issue.code === "invalid_type") return `has the wrong type, expected ${issue.expected}`;
  return `is not valid (${message})`;
}

/** Stable sort by where each path's top-level field appears in the document: how people read it. */
function inDocumentOrder<T>(items: readonly T[], pathOf: (item: T) => string, input: unknown): T[] {
  const keys = input !== null && typeof input === "object" ? Object.keys(input) : [];
  const rank = (item: T): number => {
    const top = /^[^.[:]*/.exec(pathOf(item))?.[0] ?? "";
    const index = keys.indexOf(top);
    return index < 0 ? keys.length : index;
  };
  return items
    .map((item, i) => ({ item, i }))
    .sort((a, b) => rank(a.item) - rank(b.item) || a.i - b.i)
    .map(({ item }) => item);
}

function withNote(problem: ConfigProblem, notes: ProblemNotes | undefined): ConfigProblem {
  const note = notes?.[problem.path];
  return note ? { ...problem, message: `${problem.message} ${note}` } : problem;
}

function bindAddressDefaults(bindAddress: string): { healthz: string; metrics: string } {
  return parseIP(bindAddress)?.family === 6
    ? { healthz: `[::]:${DEFAULT_HEALTHZ_PORT}`, metrics: `[::1]:${DEFAULT_METRICS_PORT}` }
    : { healthz: `0.0.0.0:${DEFAULT_HEALTHZ_PORT}`, metrics: `127.0.0.1:${DEFAULT_METRICS_PORT}` };
}

/** Upstream's AppendPortIfNeeded: a bare IP gets the default port. */
function withPort(address: string, port: number): string {
  return isIP(address) ? joinHostPort(address, port) : address;
}

/** Defaults that depend on other fields, and checks that span fields. */
function finish(parsed: Config): { config: Config; problems: ConfigProblem[] } {
  const defaults = bindAddressDefaults(parsed.bindAddress);
  const config: Config = {
    ...parsed,
    healthzBindAddress: parsed.healthzBindAddress === "" ? defaults.healthz : withPort(parsed.healthzBindAddress, DEFAULT_HEALTHZ_PORT),
    metricsBindAddress: parsed.metricsBindAddress === "" ? defaults.metrics : withPort(parsed.metricsBindAddress, DEFAULT_METRICS_PORT),
  };
  const problems: ConfigProblem[] = [];

  const syncPeriods = (section: "iptables" | "ipvs"): void => {
    const { minSyncPeriod, syncPeriod } = config[section];
    if (minSyncPeriod > syncPeriod) {
      problems.push({
        path: `${section}.minSyncPeriod`,
        value: formatDuration(minSyncPeriod),
        message: `is longer than ${section}.syncPeriod (${formatDuration(syncPeriod)}), expected at most the sync period`,
      });
    }
  };
  // Upstream checks the ipvs periods only when ipvs is the mode in use.
  syncPeriods("iptables");
  if (config.mode === "ipvs") syncPeriods("ipvs");

  if (config.detectLocalMode === "BridgeInterface" && config.detectLocal.bridgeInterface === "") {
    problems.push({ path: "detectLocal.bridgeInterface", value: "", message: "is empty, expected an interface name when detectLocalMode is BridgeInterface" });
  }
  if (config.detectLocalMode === "InterfaceNamePrefix" && config.detectLocal.interfaceNamePrefix === "") {
    problems.push({
      path: "detectLocal.interfaceNamePrefix",
      value: "",
      message: "is empty, expected an interface name prefix when detectLocalMode is InterfaceNamePrefix",
    });
  }
  return { config, problems };
}

/**
 * A decoded document (plain JSON-like data in upstream form) → Config. `source` names it in
 * messages; `notes` adds words to a field's problems (used to say which flag set a value).
 */
export function parseConfigObject(raw: unknown, source = "configuration", notes?: ProblemNotes): ConfigResult {
  const input = raw === null || raw === undefined ? { apiVersion: API_VERSION, kind: KIND } : dropNulls(raw);

  const warnings: string[] = [];
  const problems: ConfigProblem[] = [];
  const strict = strictConfigSchema.safeParse(input);
  if (!strict.success) {
    for (const issue of strict.error.issues) {
      if (issue.code === "unrecognized_keys") {
        for (const key of issue.keys) warnings.push(`${pathText([...issue.path, key])}: unknown field, ignored`);
        continue;
      }
      const path = pathText(issue.path);
      problems.push(withNote({ path, value: valueAt(input, issue.path), message: issueMessage(issue) }, notes));
    }
  }
  const sortedWarnings = (): string[] => inDocumentOrder(warnings, (w) => w, input);
  if (problems.length > 0) throw new ConfigError(source, inDocumentOrder(problems, (p) => p.path, input), sortedWarnings());

  const lenient = strict.success ? strict : configSchema.safeParse(input);
  if (!lenient.success) {
    // Unreachable in practice: the lenient pass accepts everything the strict one did, and more.
    throw new ConfigError(source, lenient.error.issues.map((i) => ({ path: pathText(i.path), message: issueMessage(i) })), sortedWarnings());
  }
  const finished = finish(lenient.data);
  if (finished.problems.length > 0) throw new ConfigError(source, finished.problems.map((p) => withNote(p, notes)), sortedWarnings());
  return { config: finished.config, warnings: sortedWarnings() };
}

/** YAML text → Config. An empty document gives the defaults. */
export function parseConfigText(text: string, sourceName = "configuration"): ConfigResult {
  const documents = parseAllDocuments(text, { prettyErrors: true, uniqueKeys: true, ...GO_YAML_OPTIONS });
  const list = Array.isArray(documents) ? documents : [];
  const problems: ConfigProblem[] = [];
  for (const doc of list) {
    for (const error of doc.errors) {
      const at = error.linePos?.[0];
      const where = at ? `${sourceName}:${at.line}:${at.col}` : sourceName;
      // The first line is the description; the rest is a source excerpt with a caret.
      const description = (error.message.split("\n")[0] ?? error.message).replace(/ at line \d+, column \d+:?$/, "");
      problems.push({ path: where, message: `YAML syntax error: ${description}` });
    }
  }
  if (problems.length > 0) throw new ConfigError(sourceName, problems);

  const nonEmpty = list.filter((doc) => doc.contents !== null);
  if (nonEmpty.length > 1) {
    throw new ConfigError(sourceName, [{ path: "", message: `holds ${nonEmpty.length} YAML documents, expected one KubeProxyConfiguration` }]);
  }
  let data: unknown;
  try {
    data = nonEmpty[0]?.toJS({ maxAliasCount: 100 }) ?? null;
  } catch (err) {
    // e.g. an alias bomb: refuse it in words, not with a stack trace.
    throw new ConfigError(sourceName, [{ path: "", message: `cannot be read as YAML: ${err instanceof Error ? err.message : String(err)}` }]);
  }
  return parseConfigObject(data, sourceName);
}

function readProblem(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === "ENOENT") return "no such file";
  if (code === "EACCES") return "permission denied";
  if (code === "EISDIR") return "is a directory, expected a file";
  return err instanceof Error ? err.message : String(err);
}

/** Reads and parses a config file; a missing or unreadable file is a ConfigError too. */
export function loadConfigFile(path: string, readFile: ReadTextFile = readTextFileSync): ConfigResult {
  let text: string;
  try {
    text = readFile(path);
  } catch (err) {
    throw new ConfigError(path, [{ path: path, message: `cannot read the config file: ${readProblem(err)}` }]);
  }
  return parseConfigText(text, path);
}

/** Every field at upstream's default. */
export function defaultConfig(): Config {
  return parseConfigObject(null).config;
}

/** Re-checks a Config built or changed in code (it round-trips through the document form). */
export function checkConfig(config: Config, source = "configuration", notes?: ProblemNotes): ConfigResult {
  return parseConfigObject(configToObject(config), source, notes);
}
