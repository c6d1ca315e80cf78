/**
 * A small Prometheus registry: counters, gauges and histograms, each optionally labelled, rendered in
 * the text exposition format 0.0.4. Families are written sorted by name and series sorted by their
 * label values, so two scrapes of the same state are byte-identical.
 */

export type LabelValues<L extends string> = Readonly<Record<L, string>>;

export type MetricType = "counter" | "gauge" | "histogram" | "untyped";

/** One line of a family: a sample name suffix (`_bucket`, `_sum`, ...), its labels and its value. */
export interface Sample {
  readonly suffix?: string;
  readonly labels?: Readonly<Record<string, string>>;
  readonly value: number;
}

/** Anything the registry can expose: a name, help, a type, and the samples at scrape time. */
export interface Collector {
  readonly name: string;
  readonly help: string;
  readonly type: MetricType;
  collect(): readonly Sample[];
}

export interface MetricOptions<L extends string = never> {
  readonly name: string;
  readonly help: string;
  readonly labelNames?: readonly L[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function checkNames(name: string, labelNames: readonly string[], reserved: readonly string[] = []): void {
  if (!METRIC_NAME.test(name)) throw new Error(`invalid metric name ${JSON.stringify(name)}`);
  const seen = new Set<string>();
  for (const label of labelNames) {
    if (!LABEL_NAME.test(label) || label.startsWith("__")) throw new Error(`metric ${name}: invalid label name ${JSON.stringify(label)}`);
    if (reserved.includes(label)) throw new Error(`metric ${name}: label name ${JSON.stringify(label)} is reserved`);
    if (seen.has(label)) throw new Error(`metric ${name}: duplicate label name ${JSON.stringify(label)}`);
    seen.add(label);
  }
}

/**
 * Series of one family, keyed by their label values in label-name order. The key is a JSON array so
 * values containing any character stay distinct.
 */
class SeriesMap<L extends string, S> {
  private readonly series = new Map<string, { labels: Record<string, string>; state: S }>();

  constructor(
    private readonly metric: string,
    private readonly labelNames: readonly L[],
    private readonly create: () => S,
  ) {}

  get(values: Partial<LabelValues<L>> | undefined): S {
    const given = (values ?? {}) as Record<string, string | undefined>;
    for (const key of Object.keys(given)) {
      if (!(this.labelNames as readonly string[]).includes(key)) throw new Error(`metric ${this.metric}: unknown label ${JSON.stringify(key)}`);
    }
    const labels: Record<string, string> = {};
    for (const name of this.labelNames) {
      const value = given[name];
      if (typeof value !== "string") throw new Error(`metric ${this.metric}: missing label ${JSON.stringify(name)}`);
      labels[name] = value;
    }
    const key = JSON.stringify(this.labelNames.map((n) => labels[n]));
    let entry = this.series.get(key);
    if (!entry) {
      entry = { labels, state: this.create() };
      this.series.set(key, entry);
    }
    return entry.state;
  }

  /** Series sorted by label values, for stable output. */
  sorted(): { labels: Record<string, string>; state: S }[] {
    return [...this.series.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, e]) => e);
  }

  clear(): void {
    this.series.clear();
  }
}

/** A value that only goes up (or resets on restart). */
export class Counter<L extends string = never> implements Collector {
  readonly type = "counter";
  readonly name: string;
  readonly help: string;
  private readonly series: SeriesMap<L, { value: number }>;
  private readonly unlabelled: boolean;

  constructor(options: MetricOptions<L>) {
    const labelNames = options.labelNames ?? [];
    checkNames(options.name, labelNames);
    this.name = options.name;
    this.help = options.help;
    this.unlabelled = labelNames.length === 0;
    this.series = new SeriesMap(options.name, labelNames, () => ({ value: 0 }));
  }

  /** Adds `by` (default 1) to the series with these labels (omit them for an unlabelled counter). */
  inc(labels?: LabelValues<L>, by = 1): void {
    if (!(by >= 0)) throw new Error(`counter ${this.name}: cannot add ${by}`);
    this.series.get(labels).value += by;
  }

  get(labels?: LabelValues<L>): number {
    return this.series.get(labels).value;
  }

  collect(): Sample[] {
    // An unlabelled counter is always exposed (as 0 before its first increment), like client_golang.
    if (this.unlabelled) this.series.get(undefined);
    return this.series.sorted().map(({ labels, state }) => ({ labels, value: state.value }));
  }
}

export interface GaugeOptions<L extends string = never> extends MetricOptions<L> {
  /**
   * Computes the series at scrape time instead of holding set values: a number for an unlabelled
   * gauge, or a list of labelled values; `undefined` exposes no sample (the value is unknown now).
   */
  readonly collect?: () => number | undefined | readonly { readonly labels: LabelValues<L>; readonly value: number }[];
}

/** A value that goes up and down. */
export class Gauge<L extends string = never> implements Collector {
  readonly type = "gauge";
  readonly name: string;
  readonly help: string;
  private readonly series: SeriesMap<L, { value: number }>;
  private readonly unlabelled: boolean;
  private readonly callback: GaugeOptions<L>["collect"];
  private readonly labelNames: readonly L[];

  constructor(options: GaugeOptions<L>) {
    this.labelNames = options.labelNames ?? [];
    checkNames(options.name, this.labelNames);
    this.name = options.name;
    this.help = options.help;
    this.unlabelled = this.labelNames.length === 0;
    this.callback = options.collect;
    this.series = new SeriesMap(options.name, this.labelNames, () => ({ value: 0 }));
  }

  set(labels: LabelValues<L> | undefined, value: number): void {
    this.series.get(labels).value = value;
  }

  inc(labels?: LabelValues<L>, by = 1): void {
    this.series.get(labels).value += by;
  }

  dec(labels?: LabelValues<L>, by = 1): void {
    this.series.get(labels).value -= by;
  }

  get(labels?: LabelValues<L>): number {
    return this.series.get(labels).value;
  }

  /** Forgets every labelled series (for sets that are rewritten whole, e.g. per-table rule counts). */
  reset(): void {
    this.series.clear();
  }

  collect(): Sample[] {
    if (this.callback) {
      const result = this.callback();
      if (result === undefined) return [];
      if (typeof result === "number") return [{ value: result }];
      const computed = new SeriesMap<L, { value: number }>(this.name, this.labelNames, () => ({ value: 0 }));
      for (const entry of result) computed.get(entry.labels).value = entry.value;
      return computed.sorted().map(({ labels, state }) => ({ labels, value: state.value }));
    }
    if (this.unlabelled) this.series.get(undefined);
    return this.series.sorted().map(({ labels, state }) => ({ labels, value: state.value }));
  }
}

export interface HistogramOptions<L extends string = never> extends MetricOptions<L> {
  /** Upper bounds, strictly increasing; `+Inf` is always added. */
  readonly buckets: readonly number[];
}

interface HistogramState {
  readonly counts: number[];
  sum: number;
  count: number;
}

/** Observations counted into cumulative buckets, with their sum and count. */
export class Histogram<L extends string = never> implements Collector {
  readonly type = "histogram";
  readonly name: string;
  readonly help: string;
  readonly buckets: readonly number[];
  private readonly series: SeriesMap<L, HistogramState>;
  private readonly unlabelled: boolean;

  constructor(options: HistogramOptions<L>) {
    const labelNames = options.labelNames ?? [];
    checkNames(options.name, labelNames, ["le"]);
    const buckets = options.buckets.filter((b) => b !== Number.POSITIVE_INFINITY);
    for (let i = 0; i < buckets.length; i++) {
      const b = buckets[i]!;
      if (Number.isNaN(b) || (i > 0 && !(b > buckets[i - 1]!))) {
        throw new Error(`histogram ${options.name}: buckets must be strictly increasing numbers`);
      }
    }
    this.name = options.name;
    this.help = options.help;
    this.buckets = buckets;
    this.unlabelled = labelNames.length === 0;
    this.series = new SeriesMap(options.name, labelNames, () => ({ counts: buckets.map(() => 0), sum: 0, count: 0 }));
  }

  observe(labels: LabelValues<L> | undefined, value: number): void {
    const state = this.series.get(labels);
    // Counted into the first bucket whose bound is >= value; cumulated at exposition.
    const index = this.buckets.findIndex((bound) => value <= bound);
    if (index >= 0) state.counts[index]! += 1;
    state.sum += value;
    state.count += 1;
  }

  /** Count and sum of the series with these labels (for tests and status pages). */
  get(labels?: LabelValues<L>): { readonly count: number; readonly sum: number } {
    const state = this.series.get(labels);
    return { count: state.count, sum: state.sum };
  }

  collect(): Sample[] {
    if (this.unlabelled) this.series.get(undefined);
    const samples: Sample[] = [];
    for (const { labels, state } of this.series.sorted()) {
      let cumulative = 0;
      this.buckets.forEach((bound, i) => {
        cumulative += state.counts[i]!;
        samples.push({ suffix: "_bucket", labels: { ...labels, le: formatValue(bound) }, value: cumulative });
      });
      samples.push({ suffix: "_bucket", labels: { ...labels, le: "+Inf" }, value: state.count });
      samples.push({ suffix: "_sum", labels, value: state.sum });
      samples.push({ suffix: "_count", labels, value: state.count });
    }
    return samples;
  }
}

/** A single unlabelled value computed at scrape time; `undefined` exposes nothing (value unknown now). */
export function computed(options: { readonly name: string; readonly help: string; readonly type: MetricType }, read: () => number | undefined): Collector {
  checkNames(options.name, []);
  return {
    name: options.name,
    help: options.help,
    type: options.type,
    collect() {
      const value = read();
      return value === undefined ? [] : [{ value }];
    },
  };
}

/** `count` bounds starting at `start`, each `factor` times the previous (client_golang's ExponentialBuckets). */
export function exponentialBuckets(start: number, factor: number, count: number): number[] {
  if (!(start > 0) || !(factor > 1) || !(count >= 1)) throw new Error("exponentialBuckets: need start > 0, factor > 1, count >= 1");
  const out: number[] = [];
  let bound = start;
  for (let i = 0; i < count; i++) {
    out.push(bound);
    bound *= factor;
  }
  return out;
}

/** `count` bounds starting at `start`, `width` apart (client_golang's LinearBuckets). */
export function linearBuckets(start: number, width: number, count: number): number[] {
  if (!(width > 0) || !(count >= 1)) throw new Error("linearBuckets: need width > 0, count >= 1");
  const out: number[] = [];
  // Accumulated like client_golang, so non-representable widths round the same way.
  let bound = start;
  for (let i = 0; i < count; i++) {
    out.push(bound);
    bound += width;
  }
  return out;
}

/**
 * Formats a number as Go's strconv.FormatFloat(f, 'g', -1, 64), which is what Prometheus' Go client
 * writes: shortest round-trip digits, in exponent form below 1e-4 and from 1e6 on (`1e+06`,
 * `1.7e+09`). Matching it keeps our output identical to upstream's for the same values.
 */
export function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Number.POSITIVE_INFINITY) return "+Inf";
  if (value === Number.NEGATIVE_INFINITY) return "-Inf";
  if (value === 0) return Object.is(value, -0) ? "-0" : "0";
  const [mantissa, exponentText] = value.toExponential().split("e") as [string, string];
  const exponent = Number(exponentText);
  if (exponent < -4 || exponent >= 6) {
    const sign = exponent < 0 ? "-" : "+";
    return `${mantissa}e${sign}${String(Math.abs(exponent)).padStart(2, "0")}`;
  }
  return String(value);
}

function escapeHelp(help: string): string {
  return help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function formatLabels(labels: Readonly<Record<string, string>> | undefined): string {
  if (!labels) return "";
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabelValue(v)}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
}

export const EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** The set of collectors one /metrics endpoint exposes. */
export class Registry {
  private readonly collectors = new Map<string, Collector>();
  private readonly hooks: (() => void)[] = [];

  /** Adds a collector; a second collector with the same name is a programming error. */
  register<C extends Collector>(collector: C): C {
    if (this.collectors.has(collector.name)) throw new Error(`metric ${collector.name} is already registered`);
    checkNames(collector.name, []);
    this.collectors.set(collector.name, collector);
    return collector;
  }

  counter<L extends string = never>(options: MetricOptions<L>): Counter<L> {
    return this.register(new Counter(options));
  }

  gauge<L extends string = never>(options: GaugeOptions<L>): Gauge<L> {
    return this.register(new Gauge(options));
  }

  histogram<L extends string = never>(options: HistogramOptions<L>): Histogram<L> {
    return this.register(new Histogram(options));
  }

  /** Runs before every scrape, e.g. to read /proc once for several gauges. */
  beforeCollect(hook: () => void): void {
    this.hooks.push(hook);
  }

  names(): string[] {
    return [...this.collectors.keys()].sort();
  }

  /** The text exposition (format 0.0.4) of every registered collector. */
  expose(): string {
    for (const hook of this.hooks) hook();
    const lines: string[] = [];
    for (const name of this.names()) {
      const collector = this.collectors.get(name)!;
      const samples = collector.collect();
      if (samples.length === 0) continue;
      lines.push(`# HELP ${name} ${escapeHelp(collector.help)}`);
      lines.push(`# TYPE ${name} ${collector.type}`);
      for (const sample of samples) {
        lines.push(`${name}${sample.suffix ?? ""}${formatLabels(sample.labels)} ${formatValue(sample.value)}`);
      }
    }
    return lines.length ? lines.join("\n") + "\n" : "";
  }
}
