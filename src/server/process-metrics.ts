/**
 * The `process_*` metrics every Prometheus Go client exposes (names and help as client_golang), read
 * from /proc once per scrape. Anything unreadable is left out of that scrape rather than reported as 0.
 */
import { readdirSync, readFileSync } from "node:fs";
import { computed, type Registry } from "./registry.ts";

/** The slice of /proc the process metrics need; tests hand in a fake. */
export interface ProcReader {
  /** File contents, or undefined when it cannot be read. */
  readFile(path: string): string | undefined;
  /** Directory entries, or undefined when it cannot be listed. */
  listDir(path: string): readonly string[] | undefined;
}

export const realProcReader: ProcReader = {
  readFile(path) {
    try {
      return readFileSync(path, "utf8");
    } catch {
      return undefined;
    }
  },
  listDir(path) {
    try {
      return readdirSync(path);
    } catch {
      return undefined;
    }
  },
};

/** /proc reports times in USER_HZ, which the kernel fixes at 100 for user space on every architecture. */
const USER_HZ = 100;
/** What procfs readers report for "unlimited" (RLIM_INFINITY as an unsigned 64-bit number). */
const UNLIMITED = 2 ** 64;

export interface ProcessStats {
  readonly cpuSeconds?: number;
  readonly residentBytes?: number;
  readonly virtualBytes?: number;
  readonly virtualMaxBytes?: number;
  readonly openFds?: number;
  readonly maxFds?: number;
  readonly startTimeSeconds?: number;
}

function parseLimit(limits: string | undefined, name: string): number | undefined {
  if (limits === undefined) return undefined;
  const line = limits.split("\n").find((l) => l.startsWith(name));
  const soft = line?.slice(name.length).trim().split(/\s+/)[0];
  if (soft === undefined) return undefined;
  if (soft === "unlimited") return UNLIMITED;
  const n = Number(soft);
  return Number.isFinite(n) ? n : undefined;
}

function numberOrUndefined(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  return Number.isFinite(n) ? n : undefined;
}

/** Reads one consistent set of process figures for the process `pid` ("self" by default). */
export function readProcessStats(proc: ProcReader, pid = "self"): ProcessStats {
  const stats: { -readonly [K in keyof ProcessStats]: ProcessStats[K] } = {};
  const stat = proc.readFile(`/proc/${pid}/stat`);
  if (stat !== undefined) {
    // The command name (field 2) may contain spaces and parentheses; fields resume after the last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).trim().split(/\s+/);
    // fields[0] is field 3 (state), so field N of proc(5) is fields[N - 3].
    const utime = numberOrUndefined(fields[14 - 3]);
    const stime = numberOrUndefined(fields[15 - 3]);
    if (utime !== undefined && stime !== undefined) stats.cpuSeconds = (utime + stime) / USER_HZ;
    const vsize = numberOrUndefined(fields[23 - 3]);
    if (vsize !== undefined) stats.virtualBytes = vsize;
    const startTicks = numberOrUndefined(fields[22 - 3]);
    const btimeLine = proc.readFile("/proc/stat")?.split("\n").find((l) => l.startsWith("btime "));
    const bootTime = numberOrUndefined(btimeLine?.slice("btime ".length).trim());
    if (startTicks !== undefined && bootTime !== undefined) stats.startTimeSeconds = bootTime + startTicks / USER_HZ;
  }
  // VmRSS is in kB and spares us the page size, which /proc/<pid>/stat's rss field would need.
  const rssLine = proc.readFile(`/proc/${pid}/status`)?.split("\n").find((l) => l.startsWith("VmRSS:"));
  const rssKb = numberOrUndefined(rssLine?.match(/^VmRSS:\s+(\d+)\s+kB/)?.[1]);
  if (rssKb !== undefined) stats.residentBytes = rssKb * 1024;
  const fds = proc.listDir(`/proc/${pid}/fd`);
  if (fds !== undefined) stats.openFds = fds.length;
  const limits = proc.readFile(`/proc/${pid}/limits`);
  const maxFds = parseLimit(limits, "Max open files");
  if (maxFds !== undefined) stats.maxFds = maxFds;
  const maxVirtual = parseLimit(limits, "Max address space");
  if (maxVirtual !== undefined) stats.virtualMaxBytes = maxVirtual;
  return stats;
}

/** Registers the process_* collectors on `registry`, reading `proc` once per scrape. */
export function registerProcessMetrics(registry: Registry, proc: ProcReader = realProcReader): void {
  let current: ProcessStats = {};
  registry.beforeCollect(() => {
    current = readProcessStats(proc);
  });
  const add = (name: string, help: string, type: "counter" | "gauge", pick: (s: ProcessStats) => number | undefined) =>
    registry.register(computed({ name, help, type }, () => pick(current)));
  add("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", "counter", (s) => s.cpuSeconds);
  add("process_open_fds", "Number of open file descriptors.", "gauge", (s) => s.openFds);
  add("process_max_fds", "Maximum number of open file descriptors.", "gauge", (s) => s.maxFds);
  add("process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge", (s) => s.virtualBytes);
  add("process_virtual_memory_max_bytes", "Maximum amount of virtual memory available in bytes.", "gauge", (s) => s.virtualMaxBytes);
  add("process_resident_memory_bytes", "Resident memory size in bytes.", "gauge", (s) => s.residentBytes);
  add("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", "gauge", (s) => s.startTimeSeconds);
}
