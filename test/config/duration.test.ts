import { describe, expect, test } from "bun:test";
import { DurationError, formatDuration, parseDuration, tryParseDuration } from "../../src/config/duration.ts";

describe("parseDuration", () => {
  const cases: [string, number][] = [
    ["0", 0],
    ["0s", 0],
    ["30s", 30_000],
    ["1m30s", 90_000],
    ["250ms", 250],
    ["1h2m3.5s", 3_723_500],
    ["1.5h", 5_400_000],
    [".5s", 500],
    ["1.s", 1000],
    ["100ns", 0.0001],
    ["1500us", 1.5],
    ["1500µs", 1.5],
    ["1500μs", 1.5],
    ["24h", 86_400_000],
    ["+5s", 5000],
    ["-1s", -1000],
    ["1h0m0s", 3_600_000],
  ];
  for (const [text, ms] of cases) {
    test(`${text} is ${ms} ms`, () => {
      expect(parseDuration(text)).toBeCloseTo(ms, 9);
    });
  }

  const bad: [string, string][] = [
    ["", "empty"],
    ["1", "missing unit"],
    ["10x", 'unknown unit "x"'],
    ["s", "expected a number"],
    [".s", "expected a number"],
    ["1m-5s", 'unknown unit "m-"'],
    ["3000000h", "too large"],
  ];
  for (const [text, reason] of bad) {
    test(`${JSON.stringify(text)} is rejected (${reason})`, () => {
      const parsed = tryParseDuration(text);
      expect(parsed.ok).toBe(false);
      if (!parsed.ok) expect(parsed.reason).toContain(reason);
      expect(() => parseDuration(text)).toThrow(DurationError);
    });
  }
});

describe("formatDuration", () => {
  const cases: [number, string][] = [
    [0, "0s"],
    [30_000, "30s"],
    [90_000, "1m30s"],
    [250, "250ms"],
    [1_000, "1s"],
    [1_500, "1.5s"],
    [3_723_500, "1h2m3.5s"],
    [900_000, "15m0s"],
    [3_600_000, "1h0m0s"],
    [86_400_000, "24h0m0s"],
    [1.5, "1.5ms"],
    [0.0015, "1.5µs"],
    [0.000001, "1ns"],
    [-1000, "-1s"],
  ];
  for (const [ms, text] of cases) {
    test(`${ms} ms prints as ${text}`, () => {
      expect(formatDuration(ms)).toBe(text);
    });
  }

  test("format then parse gives the same milliseconds", () => {
    for (const ms of [0, 0.000001, 0.0015, 1, 1.25, 999, 1000, 59_999, 61_000, 3_599_999, 3_600_001, 7 * 86_400_000 + 1]) {
      expect(parseDuration(formatDuration(ms))).toBeCloseTo(ms, 9);
    }
  });
});
