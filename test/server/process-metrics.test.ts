import { describe, expect, test } from "bun:test";
import { readProcessStats, realProcReader, registerProcessMetrics, type ProcReader } from "../../src/server/process-metrics.ts";
import { Registry } from "../../src/server/registry.ts";

/** A /proc with one process (pid "self"), built from literal file contents. */
function fakeProc(files: Record<string, string>, fds: readonly string[] | undefined): ProcReader & { reads: string[] } {
  const reads: string[] = [];
  return {
    reads,
    readFile(path) {
      reads.push(path);
      return files[path];
    },
    listDir(path) {
      return path === "/proc/self/fd" ? fds : undefined;
    },
  };
}

// The command name contains ") " on purpose: fields must be counted from the last parenthesis.
const STAT =
  "4242 (kproxy (x) y) S 1 4242 4242 0 -1 4194560 3000 0 0 0 250 120 0 0 20 0 12 0 123456 1073741824 9000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
const FILES = {
  "/proc/self/stat": STAT,
  "/proc/stat": "cpu  1 2 3 4\nbtime 1764000000\nprocesses 9\n",
  "/proc/self/status": "Name:\tkproxy\nVmPeak:\t  200000 kB\nVmRSS:\t   40960 kB\nThreads:\t12\n",
  "/proc/self/limits":
    "Limit                     Soft Limit           Hard Limit           Units     \n" +
    "Max open files            1024                 1048576              files     \n" +
    "Max address space         unlimited            unlimited            bytes     \n",
};

describe("readProcessStats", () => {
  test("parses CPU, memory, fds, limits and start time from /proc", () => {
    expect(readProcessStats(fakeProc(FILES, ["0", "1", "2", "3", "7"]))).toEqual({
      cpuSeconds: 3.7, // (250 + 120) ticks at 100 Hz
      virtualBytes: 1073741824,
      startTimeSeconds: 1764000000 + 1234.56,
      residentBytes: 40960 * 1024,
      openFds: 5,
      maxFds: 1024,
      virtualMaxBytes: 2 ** 64,
    });
  });

  test("leaves out what cannot be read", () => {
    expect(readProcessStats(fakeProc({ "/proc/self/status": "VmRSS:\t 4 kB\n" }, undefined))).toEqual({ residentBytes: 4096 });
  });

  test("the real reader finds this process's figures", () => {
    const stats = readProcessStats(realProcReader);
    expect(stats.residentBytes).toBeGreaterThan(1024 * 1024);
    expect(stats.openFds).toBeGreaterThan(2);
    expect(stats.maxFds).toBeGreaterThan(0);
    expect(stats.cpuSeconds).toBeGreaterThan(0);
    // Started within the last hour of this test run, not in 1970.
    expect(Math.abs(stats.startTimeSeconds! - (Date.now() / 1000 - process.uptime()))).toBeLessThan(5);
  });
});

describe("registerProcessMetrics", () => {
  test("exposes client_golang's process metrics, reading /proc once per scrape", () => {
    const registry = new Registry();
    const proc = fakeProc(FILES, ["0", "1"]);
    registerProcessMetrics(registry, proc);
    const text = registry.expose();
    expect(proc.reads.filter((p) => p === "/proc/self/stat")).toHaveLength(1);
    expect(text).toContain("# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3.7\n");
    expect(text).toContain("# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 4.194304e+07\n");
    expect(text).toContain("\nprocess_open_fds 2\n");
    expect(text).toContain("\nprocess_max_fds 1024\n");
    expect(text).toContain("\nprocess_virtual_memory_bytes 1.073741824e+09\n");
    expect(text).toContain("\nprocess_virtual_memory_max_bytes 1.8446744073709552e+19\n");
    expect(text).toContain("\nprocess_start_time_seconds 1.76400123456e+09\n");
  });
});
