/**
 * Go `time.Duration` text (`1m30s`, `250ms`, `1h2m3.5s`) to and from milliseconds.
 *
 * KubeProxyConfiguration files written for upstream kube-proxy carry durations in Go syntax, and
 * `--write-config-to` / `/configz` must print them the way Go does (`15m0s`, `24h0m0s`), so both
 * directions follow Go's `time.ParseDuration` and `Duration.String` exactly. Milliseconds may be
 * fractional (`1500us` is 1.5 ms); the nanosecond is the smallest unit, as in Go.
 */

const NS_PER_MS = 1e6;

/** Nanoseconds per unit, as accepted by Go (both micro signs included). */
export const DURATION_UNITS: Readonly<Record<string, number>> = {
  ns: 1,
  us: 1e3,
  "µs": 1e3, // U+00B5 micro sign
  "μs": 1e3, // U+03BC Greek small letter mu
  ms: 1e6,
  s: 1e9,
  m: 60e9,
  h: 3600e9,
};

/** Go's limit: an int64 count of nanoseconds. */
const MAX_NS = 9223372036854775807;

export type DurationParse = { readonly ok: true; readonly ms: number } | { readonly ok: false; readonly reason: string };

/** Parses Go duration text; never throws. `reason` says what is wrong, for error messages. */
export function tryParseDuration(text: string): DurationParse {
  let rest = text;
  let negative = false;
  if (rest.startsWith("-") || rest.startsWith("+")) {
    negative = rest.startsWith("-");
    rest = rest.slice(1);
  }
  if (rest === "0") return { ok: true, ms: 0 };
  if (rest === "") return { ok: false, reason: "empty" };

  let totalNs = 0;
  while (rest !== "") {
    const number = /^(\d*)(?:\.(\d*))?/.exec(rest);
    const whole = number?.[1] ?? "";
    const fraction = number?.[2] ?? "";
    if (whole === "" && fraction === "") return { ok: false, reason: `expected a number at "${rest}"` };
    rest = rest.slice(number?.[0].length ?? 0);

    const unitMatch = /^[^\d.]+/.exec(rest);
    if (!unitMatch) return { ok: false, reason: `missing unit after ${whole}${fraction ? "." + fraction : ""}` };
    const unitText = unitMatch[0];
    const unit = DURATION_UNITS[unitText];
    if (unit === undefined) return { ok: false, reason: `unknown unit "${unitText}"` };
    rest = rest.slice(unitText.length);

    let ns = (whole === "" ? 0 : Number(whole)) * unit;
    if (fraction !== "") ns += Math.trunc(Number("0." + fraction) * unit);
    totalNs += ns;
    if (totalNs > MAX_NS) return { ok: false, reason: "too large" };
  }
  const ms = totalNs / NS_PER_MS;
  return { ok: true, ms: negative && ms !== 0 ? -ms : ms };
}

export class DurationError extends Error {
  constructor(
    readonly text: string,
    readonly reason: string,
  ) {
    super(`invalid duration ${JSON.stringify(text)}: ${reason}`);
    this.name = "DurationError";
  }
}

/** Go duration text → milliseconds; throws DurationError. */
export function parseDuration(text: string): number {
  const parsed = tryParseDuration(text);
  if (!parsed.ok) throw new DurationError(text, parsed.reason);
  return parsed.ms;
}

/** Digits of `value / 10^precision` after the point, trailing zeros dropped ("" when none). */
function fractionDigits(value: number, precision: number): string {
  const scale = 10 ** precision;
  const digits = String(value % scale).padStart(precision, "0").replace(/0+$/, "");
  return digits === "" ? "" : "." + digits;
}

/** Milliseconds → Go's `Duration.String()`: `0s`, `250ms`, `1.5µs`, `30s`, `1m30s`, `24h0m0s`. */
export function formatDuration(ms: number): string {
  const totalNs = Math.round(ms * NS_PER_MS);
  if (totalNs === 0) return "0s";
  const sign = totalNs < 0 ? "-" : "";
  const ns = Math.abs(totalNs);

  if (ns < 1e3) return `${sign}${ns}ns`;
  if (ns < 1e6) return `${sign}${Math.floor(ns / 1e3)}${fractionDigits(ns, 3)}µs`;
  if (ns < 1e9) return `${sign}${Math.floor(ns / 1e6)}${fractionDigits(ns, 6)}ms`;

  const secondsFraction = fractionDigits(ns, 9);
  const seconds = Math.floor(ns / 1e9);
  let text = `${seconds % 60}${secondsFraction}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes > 0) {
    text = `${minutes % 60}m${text}`;
    const hours = Math.floor(minutes / 60);
    if (hours > 0) text = `${hours}h${text}`;
  }
  return sign + text;
}
