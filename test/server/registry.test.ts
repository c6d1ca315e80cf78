import { describe, expect, test } from "bun:test";
import { computed, Counter, exponentialBuckets, formatValue, Gauge, Histogram, linearBuckets, Registry } from "../../src/server/registry.ts";

describe("Registry exposition", () => {
  test("renders a small registry exactly (golden text)", () => {
    const registry = new Registry();
    const requests = registry.counter({ name: "demo_requests_total", help: "Requests served.", labelNames: ["code", "path"] });
    const temperature = registry.gauge({ name: "demo_temperature_celsius", help: "Current temperature." });
    const latency = registry.histogram({ name: "demo_latency_seconds", help: "Request latency.", buckets: [0.1, 0.5, 1] });
    requests.inc({ code: "500", path: "/b" });
    requests.inc({ code: "200", path: "/a" }, 3);
    temperature.set(undefined, -1.5);
    latency.observe(undefined, 0.05);
    latency.observe(undefined, 0.5);
    latency.observe(undefined, 0.7);
    latency.observe(undefined, 2);

    expect(registry.expose()).toBe(
      [
        "# HELP demo_latency_seconds Request latency.",
        "# TYPE demo_latency_seconds histogram",
        'demo_latency_seconds_bucket{le="0.1"} 1',
        'demo_latency_seconds_bucket{le="0.5"} 2',
        'demo_latency_seconds_bucket{le="1"} 3',
        'demo_latency_seconds_bucket{le="+Inf"} 4',
        "demo_latency_seconds_sum 3.25",
        "demo_latency_seconds_count 4",
        "# HELP demo_requests_total Requests served.",
        "# TYPE demo_requests_total counter",
        'demo_requests_total{code="200",path="/a"} 3',
        'demo_requests_total{code="500",path="/b"} 1',
        "# HELP demo_temperature_celsius Current temperature.",
        "# TYPE demo_temperature_celsius gauge",
        "demo_temperature_celsius -1.5",
        "",
      ].join("\n"),
    );
  });

  test("escapes help (backslash, newline) and label values (backslash, quote, newline)", () => {
    const registry = new Registry();
    const c = registry.counter({ name: "x_total", help: 'a\\b\nc "quoted"', labelNames: ["v"] });
    c.inc({ v: 'say "hi"\\\nbye' });
    expect(registry.expose()).toBe(
      ['# HELP x_total a\\\\b\\nc "quoted"', "# TYPE x_total counter", 'x_total{v="say \\"hi\\"\\\\\\nbye"} 1', ""].join("\n"),
    );
  });

  test("labelled histograms put le last and keep one bucket series per label set", () => {
    const registry = new Registry();
    const h = registry.histogram({ name: "h_seconds", help: "h", labelNames: ["family"], buckets: [1] });
    h.observe({ family: "IPv6" }, 5);
    h.observe({ family: "IPv4" }, 0.5);
    const lines = registry.expose().split("\n").filter((l) => !l.startsWith("#") && l);
    expect(lines).toEqual([
      'h_seconds_bucket{family="IPv4",le="1"} 1',
      'h_seconds_bucket{family="IPv4",le="+Inf"} 1',
      'h_seconds_sum{family="IPv4"} 0.5',
      'h_seconds_count{family="IPv4"} 1',
      'h_seconds_bucket{family="IPv6",le="1"} 0',
      'h_seconds_bucket{family="IPv6",le="+Inf"} 1',
      'h_seconds_sum{family="IPv6"} 5',
      'h_seconds_count{family="IPv6"} 1',
    ]);
  });

  test("a value equal to a bound falls into that bucket; buckets are cumulative", () => {
    const h = new Histogram({ name: "b", help: "b", buckets: [1, 2, 4] });
    for (const v of [1, 2, 2, 3, 4, 4.0001]) h.observe(undefined, v);
    const buckets = h.collect().filter((s) => s.suffix === "_bucket").map((s) => [s.labels?.["le"], s.value]);
    expect(buckets).toEqual([["1", 1], ["2", 3], ["4", 5], ["+Inf", 6]]);
    expect(h.get()).toEqual({ count: 6, sum: 16.0001 });
  });

  test("unlabelled metrics are exposed at zero before use; labelled ones only once a series exists", () => {
    const registry = new Registry();
    registry.counter({ name: "a_total", help: "a" });
    registry.counter({ name: "b_total", help: "b", labelNames: ["code"] });
    expect(registry.expose()).toBe("# HELP a_total a\n# TYPE a_total counter\na_total 0\n");
  });

  test("callback gauges are read at scrape time; undefined leaves the metric out", () => {
    const registry = new Registry();
    let value: number | undefined = 7;
    registry.gauge({ name: "g", help: "g", collect: () => value });
    registry.gauge({ name: "l", help: "l", labelNames: ["k"], collect: () => [{ labels: { k: "z" }, value: 2 }, { labels: { k: "a" }, value: 1 }] });
    registry.register(computed({ name: "c_total", help: "c", type: "counter" }, () => value));
    expect(registry.expose()).toContain("\ng 7\n");
    expect(registry.expose()).toContain('l{k="a"} 1\nl{k="z"} 2\n');
    value = undefined;
    expect(registry.expose()).not.toContain("# HELP g ");
    expect(registry.expose()).not.toContain("c_total");
    value = 9;
    expect(registry.expose()).toContain("\nc_total 9\n");
  });

  test("beforeCollect hooks run once per scrape, before collectors", () => {
    const registry = new Registry();
    let scrapes = 0;
    registry.beforeCollect(() => scrapes++);
    registry.gauge({ name: "s", help: "s", collect: () => scrapes });
    expect(registry.expose()).toContain("\ns 1\n");
    expect(registry.expose()).toContain("\ns 2\n");
  });

  test("rejects duplicate names, bad names, unknown or missing labels, negative counter increments", () => {
    const registry = new Registry();
    registry.counter({ name: "dup_total", help: "x" });
    expect(() => registry.counter({ name: "dup_total", help: "x" })).toThrow(/already registered/);
    expect(() => new Counter({ name: "bad-name", help: "x" })).toThrow(/invalid metric name/);
    expect(() => new Gauge({ name: "g", help: "x", labelNames: ["__reserved"] })).toThrow(/invalid label name/);
    expect(() => new Histogram({ name: "h", help: "x", labelNames: ["le"], buckets: [1] })).toThrow(/reserved/);
    expect(() => new Histogram({ name: "h", help: "x", buckets: [2, 1] })).toThrow(/strictly increasing/);
    const c = new Counter({ name: "c_total", help: "x", labelNames: ["code"] });
    expect(() => c.inc()).toThrow(/missing label "code"/);
    expect(() => c.inc({ code: "1", other: "2" } as never)).toThrow(/unknown label "other"/);
    expect(() => c.inc({ code: "1" }, -1)).toThrow(/cannot add -1/);
  });

  test("gauge reset forgets labelled series", () => {
    const g = new Gauge({ name: "rules", help: "x", labelNames: ["table"] });
    g.set({ table: "nat" }, 10);
    g.set({ table: "filter" }, 3);
    g.reset();
    g.set({ table: "nat" }, 4);
    expect(g.collect()).toEqual([{ labels: { table: "nat" }, value: 4 }]);
  });
});

describe("formatValue (Go's FormatFloat 'g', -1)", () => {
  test.each([
    [0, "0"],
    [1, "1"],
    [-1.5, "-1.5"],
    [0.001, "0.001"],
    [0.0001, "0.0001"],
    [0.00001, "1e-05"],
    [123456, "123456"],
    [999999, "999999"],
    [1000000, "1e+06"],
    [1234567, "1.234567e+06"],
    [1764169547.123, "1.764169547123e+09"],
    [2 ** 64, "1.8446744073709552e+19"],
    [0.1 + 0.2, "0.30000000000000004"],
    [Number.POSITIVE_INFINITY, "+Inf"],
    [Number.NEGATIVE_INFINITY, "-Inf"],
    [Number.NaN, "NaN"],
  ])("%p → %s", (value, text) => {
    expect(formatValue(value)).toBe(text);
  });
});

describe("bucket helpers", () => {
  test("exponentialBuckets doubles from the start", () => {
    expect(exponentialBuckets(0.001, 2, 4)).toEqual([0.001, 0.002, 0.004, 0.008]);
  });
  test("linearBuckets steps by width", () => {
    expect(linearBuckets(60, 5, 3)).toEqual([60, 65, 70]);
  });
  test("reject nonsense", () => {
    expect(() => exponentialBuckets(0, 2, 3)).toThrow();
    expect(() => linearBuckets(0, 0, 3)).toThrow();
  });
});
