import { describe, expect, test } from "bun:test";
import { createLogger, memoryLogger, type LoggerOptions } from "../src/log.ts";

const AT = new Date(Date.UTC(2026, 10, 26, 15, 4, 5, 123));
const PID = String(process.pid).padStart(7);

function capture(options: LoggerOptions = {}) {
  const lines: string[] = [];
  const logger = createLogger({ now: () => AT, write: (l) => lines.push(l), ...options });
  return { logger, lines };
}

function records(lines: string[]): Record<string, unknown>[] {
  return lines.map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe("text format", () => {
  test("writes a klog header: severity, mmdd, time with microseconds, pid, source", () => {
    const { logger, lines } = capture();
    logger.info("Starting");
    logger.warn("Careful");
    logger.error("Failed");
    expect(lines).toEqual([
      `I1126 15:04:05.123000 ${PID} kproxy] "Starting"`,
      `W1126 15:04:05.123000 ${PID} kproxy] "Careful"`,
      `E1126 15:04:05.123000 ${PID} kproxy] "Failed"`,
    ]);
  });

  test("pads single-digit date and time parts and uses UTC", () => {
    const { logger, lines } = capture({ now: () => new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 6)) });
    logger.info("x");
    expect(lines[0]).toStartWith(`I0102 03:04:05.006000 ${PID} kproxy] `);
  });

  test("quotes strings and errors, leaves numbers, booleans and null bare, JSON-encodes objects", () => {
    const { logger, lines } = capture();
    logger.info("Synced", {
      service: "default/web",
      count: 3,
      ratio: 0.5,
      ok: true,
      none: null,
      missing: undefined,
      err: new Error("exit status 1"),
      ports: [80, 443],
      sel: { app: "web" },
    });
    expect(lines).toEqual([
      `I1126 15:04:05.123000 ${PID} kproxy] "Synced" service="default/web" count=3 ratio=0.5 ok=true none=null missing=undefined err="exit status 1" ports=[80,443] sel={"app":"web"}`,
    ]);
  });

  test("escapes quotes and newlines so every call is exactly one line", () => {
    const { logger, lines } = capture();
    logger.error('restore failed:\nline 2 "quoted"', { stderr: 'iptables-restore: line 7 failed\n"x"' });
    expect(lines).toHaveLength(1);
    expect(lines[0]).not.toContain("\n");
    expect(lines[0]).toEndWith(
      String.raw`kproxy] "restore failed:\nline 2 \"quoted\"" stderr="iptables-restore: line 7 failed\n\"x\""`,
    );
  });

  test("a value JSON cannot encode still produces a line", () => {
    const { logger, lines } = capture();
    const cyclic: Record<string, unknown> = {};
    cyclic["self"] = cyclic;
    logger.info("odd", { big: 10n, cyclic });
    expect(lines).toEqual([`I1126 15:04:05.123000 ${PID} kproxy] "odd" big="10" cyclic={"self":"[Circular]"}`]);
  });
});

describe("verbosity", () => {
  test("debug lines are written only up to the configured level", () => {
    const { logger, lines } = capture({ verbosity: 2 });
    for (let level = 0; level <= 5; level++) logger.debug(level, `at ${level}`);
    expect(lines.map((l) => l.slice(l.indexOf("]") + 2))).toEqual(['"at 0"', '"at 1"', '"at 2"']);
    expect([0, 1, 2, 3, 4].map((level) => logger.enabled(level))).toEqual([true, true, true, false, false]);
  });

  test("the default verbosity is 0, and info, warn and error ignore it", () => {
    const { logger, lines } = capture();
    logger.debug(1, "hidden");
    logger.info("i");
    logger.warn("w");
    logger.error("e");
    expect(lines.map((l) => l[0])).toEqual(["I", "W", "E"]);
    expect(logger.enabled(0)).toBe(true);
    expect(logger.enabled(1)).toBe(false);
  });

  test("debug lines carry the I severity in text and their level in JSON", () => {
    const text = capture({ verbosity: 4 });
    text.logger.debug(4, "detail");
    expect(text.lines[0]).toStartWith("I1126 ");
    const json = capture({ format: "json", verbosity: 4 });
    json.logger.debug(4, "detail");
    json.logger.debug(5, "too deep");
    expect(records(json.lines)).toEqual([{ ts: AT.getTime() / 1000, v: 4, msg: "detail" }]);
  });
});

describe("json format", () => {
  test("one object per line with ts in seconds, v, msg and the fields", () => {
    const { logger, lines } = capture({ format: "json" });
    logger.info("Synced", { service: "default/web", count: 3, ok: true, ports: [80] });
    expect(lines).toHaveLength(1);
    expect(records(lines)).toEqual([
      { ts: 1795705445.123, v: 0, msg: "Synced", service: "default/web", count: 3, ok: true, ports: [80] },
    ]);
  });

  test("marks warnings and errors, and writes errors as their message", () => {
    const { logger, lines } = capture({ format: "json" });
    logger.warn("Slow");
    logger.error("Failed");
    logger.error("Restore failed", { err: new Error("exit status 2") });
    expect(records(lines)).toEqual([
      { ts: 1795705445.123, v: 0, msg: "Slow", warning: true },
      { ts: 1795705445.123, v: 0, msg: "Failed", err: true },
      { ts: 1795705445.123, v: 0, msg: "Restore failed", err: "exit status 2" },
    ]);
  });

  test("keeps a multi-line message on one line", () => {
    const { logger, lines } = capture({ format: "json" });
    logger.info("a\nb");
    expect(lines).toHaveLength(1);
    expect(records(lines)[0]?.["msg"]).toBe("a\nb");
  });

  test("a value JSON cannot encode does not make the log call throw", () => {
    const { logger, lines } = capture({ format: "json" });
    const cyclic: Record<string, unknown> = { name: "loop" };
    cyclic["self"] = cyclic;
    expect(() => logger.info("odd", { big: 10n, cyclic })).not.toThrow();
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({ big: "10", cyclic: { name: "loop", self: "[Circular]" } });
  });
});

describe("with()", () => {
  test("adds its fields to every line, after the message and before the call's own", () => {
    const { logger, lines } = capture();
    const svc = logger.with({ service: "default/web", port: 80 });
    svc.info("Added", { endpoints: 2 });
    svc.warn("No endpoints");
    expect(lines.map((l) => l.slice(l.indexOf("]") + 2))).toEqual([
      `"Added" service="default/web" port=80 endpoints=2`,
      `"No endpoints" service="default/web" port=80`,
    ]);
  });

  test("the call's fields override inherited ones; nested with() accumulates; the parent is untouched", () => {
    const { logger, lines } = capture({ format: "json" });
    const a = logger.with({ component: "sync", mode: "iptables" });
    const b = a.with({ mode: "ipvs", attempt: 1 });
    b.info("one", { attempt: 2 });
    a.info("two");
    logger.info("three");
    expect(records(lines).map(({ ts: _ts, v: _v, ...rest }) => rest)).toEqual([
      { msg: "one", component: "sync", mode: "ipvs", attempt: 2 },
      { msg: "two", component: "sync", mode: "iptables" },
      { msg: "three" },
    ]);
  });

  test("keeps the verbosity and format of its parent", () => {
    const { logger, lines } = capture({ format: "json", verbosity: 1 });
    const child = logger.with({ runner: "sync" });
    child.debug(1, "shown");
    child.debug(2, "hidden");
    expect(child.enabled(1)).toBe(true);
    expect(child.enabled(2)).toBe(false);
    expect(records(lines)).toEqual([{ ts: 1795705445.123, v: 1, msg: "shown", runner: "sync" }]);
  });
});

describe("memoryLogger", () => {
  test("keeps JSON lines at verbosity 10 by default", () => {
    const logger = memoryLogger();
    logger.debug(10, "deep", { k: "v" });
    logger.debug(11, "deeper");
    expect(logger.lines).toHaveLength(1);
    expect(JSON.parse(logger.lines[0]!)).toMatchObject({ v: 10, msg: "deep", k: "v" });
  });
});
