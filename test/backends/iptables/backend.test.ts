import { describe, expect, test } from "bun:test";
import { IptablesBackend, type ServiceHealthPorts, servicePortProblem } from "../../../src/backends/iptables/backend.ts";
import { splitRestoreInput } from "../../../src/backends/iptables/chunks.ts";
import { cleanupInput, cleanupIptables } from "../../../src/backends/iptables/cleanup.ts";
import { staleConntrackOps } from "../../../src/backends/iptables/conntrack-cleanup.ts";
import { defaultRuleOptions, type RuleOptions } from "../../../src/backends/iptables/index.ts";
import { applySysctls, conntrackMax, plannedSysctls } from "../../../src/backends/iptables/sysctls.ts";
import { memoryLogger } from "../../../src/log.ts";
import { createMetrics } from "../../../src/metrics.ts";
import type { ChangeSet, Snapshot } from "../../../src/model/types.ts";
import type { Exec, ExecOptions, ExecResult } from "../../../src/system/exec.ts";
import type { Sysctl } from "../../../src/system/sysctl.ts";
import { FakeClock } from "../../helpers/fake-clock.ts";
import { endpoint, servicePort, snapshot } from "./helpers.ts";

/**
 * A fake kernel behind a fake Exec: chains and rules per binary family ("iptables-legacy",
 * "ip6tables-nft", ...) and table, driven by the same argv the backend sends to the real tools.
 */
class FakeIptables implements Exec {
  readonly calls: { argv: string[]; stdin?: string }[] = [];
  /** `${base}/${table}` → chain → rules (argument strings). */
  readonly tables = new Map<string, Map<string, string[]>>();
  failRestores = 0;
  /** Binaries (e.g. "ip6tables-legacy") that fail as on a node without IPv6 in the kernel. */
  readonly broken = new Set<string>();
  /** `conntrack -R` succeeds (otherwise it fails, as an old conntrack would, and each deletion runs alone). */
  conntrackBatches = true;
  /** What `iptables --version` prints; unset: the command fails. */
  version: string | undefined;

  private table(base: string, table: string): Map<string, string[]> {
    const key = `${base}/${table}`;
    let t = this.tables.get(key);
    if (!t) {
      t = new Map();
      for (const builtin of ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]) t.set(builtin, []);
      this.tables.set(key, t);
    }
    return t;
  }

  chainsOf(base: string, table: string): string[] {
    return [...this.table(base, table).keys()];
  }

  deleteChain(base: string, table: string, chain: string): void {
    this.table(base, table).delete(chain);
  }

  restores(): string[] {
    return this.calls.filter((c) => c.argv[0]?.endsWith("-restore")).map((c) => c.stdin ?? "");
  }

  clear(): void {
    this.calls.length = 0;
  }

  async run(argv: readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
    const stdin = typeof options.stdin === "string" ? options.stdin : undefined;
    this.calls.push(stdin === undefined ? { argv: [...argv] } : { argv: [...argv], stdin });
    const ok = (stdout = ""): ExecResult => ({ code: 0, stdout, stderr: "", timedOut: false });
    const fail = (stderr: string): ExecResult => ({ code: 1, stdout: "", stderr, timedOut: false });
    const bin = argv[0] ?? "";
    const base = bin.replace(/-(save|restore)$/, "");
    if (this.broken.has(base)) {
      return { code: 3, stdout: "", stderr: `${base}: can't initialize ip6tables table \`nat': Table does not exist`, timedOut: false };
    }
    if (argv[1] === "--version") return this.version === undefined ? fail("unknown option") : ok(this.version);
    if (bin.startsWith("conntrack")) {
      // `conntrack -R -` runs one command per stdin line; each is recorded as if run on its own.
      if (argv[1] === "-R") {
        for (const line of (stdin ?? "").split("\n")) if (line !== "") this.calls.push({ argv: ["conntrack", ...line.split(" ")] });
        return this.conntrackBatches ? ok() : fail("conntrack v1.4.7 (conntrack-tools): -R is not supported here");
      }
      return fail("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.");
    }
    if (bin.endsWith("-save")) {
      const tableName = argv[argv.indexOf("-t") + 1] ?? "filter";
      const lines = [`*${tableName}`];
      for (const [chain, rules] of this.table(base, tableName)) lines.push(`:${chain} - [0:0]`);
      for (const [chain, rules] of this.table(base, tableName)) for (const r of rules) lines.push(`-A ${chain} ${r}`);
      lines.push("COMMIT");
      return ok(lines.join("\n") + "\n");
    }
    if (bin.endsWith("-restore")) {
      if (this.failRestores > 0) {
        this.failRestores--;
        return fail("iptables-restore: line 3 failed");
      }
      let current: Map<string, string[]> | undefined;
      for (const line of (stdin ?? "").split("\n")) {
        if (line.startsWith("*")) current = this.table(base, line.slice(1));
        else if (line.startsWith(":")) current?.set(line.slice(1, line.indexOf(" ")), []);
        else if (line.startsWith("-X ")) current?.delete(line.slice(3));
        else if (line.startsWith("-A ")) {
          const [, chain, ...rest] = line.split(" ");
          current?.get(chain as string)?.push(rest.join(" "));
        } else if (line.startsWith("-D ")) {
          const [, chain, ...rest] = line.split(" ");
          const rules = current?.get(chain as string);
          const i = rules?.indexOf(rest.join(" ")) ?? -1;
          if (i >= 0) rules?.splice(i, 1);
        }
      }
      return ok();
    }
    // iptables -w 5 -t <table> <verb> <chain> ...
    const tableName = argv[4] as string;
    const verb = argv[5];
    const chain = argv[6] as string;
    const rule = argv.slice(7).join(" ");
    const t = this.table(base, tableName);
    switch (verb) {
      case "-S":
        return t.has(chain) ? ok() : fail("No chain/target/match by that name.");
      case "-N":
        if (t.has(chain)) return fail("Chain already exists.");
        t.set(chain, []);
        return ok();
      case "-C":
        return t.get(chain)?.includes(rule) ? ok() : fail("Bad rule");
      case "-I":
      case "-A":
        t.get(chain)?.[verb === "-I" ? "unshift" : "push"](rule);
        return ok();
      case "-D": {
        const rules = t.get(chain);
        const i = rules?.indexOf(rule) ?? -1;
        if (i < 0) return fail("Bad rule");
        rules?.splice(i, 1);
        return ok();
      }
    }
    return fail(`unexpected ${argv.join(" ")}`);
  }
}

const web = servicePort("ns", "web", "http", { clusterIP: "10.96.0.10", port: 80 });
const api = servicePort("ns", "api", "", { clusterIP: "10.96.0.11", port: 443 });
const dns = servicePort("ns", "dns", "dns", { clusterIP: "10.96.0.53", port: 53, protocol: "UDP", nodePort: 30053, type: "NodePort" });
const web6 = servicePort("ns", "web", "http", { clusterIP: "fd00:96::10", port: 80 });

function world(entries: Parameters<typeof snapshot>[0]): Snapshot {
  return snapshot(entries);
}

const full: ChangeSet = { changed: new Set(), full: true, triggerTimes: [] };
const partialOf = (...keys: string[]): ChangeSet => ({ changed: new Set(keys), full: false, triggerTimes: [] });

function makeBackend(
  exec: FakeIptables,
  extra: {
    flavour?: "legacy" | "nft";
    pieceLines?: number;
    serviceHealth?: ServiceHealthPorts;
    ruleOptions?: RuleOptions;
    collectGarbage?: () => void;
    largeInputChars?: number;
  } = {},
) {
  const metrics = createMetrics({ proc: null });
  const logger = memoryLogger();
  const backend = new IptablesBackend({
    exec,
    flavour: extra.flavour ?? "legacy",
    ruleOptions: extra.ruleOptions ?? { ...defaultRuleOptions, clusterCIDRs: ["10.244.0.0/16"] },
    nodePortAddresses: [],
    localAddresses: () => [],
    metrics,
    logger,
    ...(extra.pieceLines !== undefined ? { pieceLines: extra.pieceLines } : {}),
    ...(extra.serviceHealth ? { serviceHealth: extra.serviceHealth } : {}),
    ...(extra.collectGarbage ? { collectGarbage: extra.collectGarbage } : {}),
    ...(extra.largeInputChars !== undefined ? { largeInputChars: extra.largeInputChars } : {}),
  });
  return { backend, metrics, logger };
}

const verbs = (exec: FakeIptables, verb: string) => exec.calls.filter((c) => c.argv[5] === verb);
const counter = (c: { collect(): readonly { value: number }[] }) => c.collect()[0]?.value ?? 0;

const webEps = [endpoint("10.244.1.10", 8080), endpoint("10.244.1.11", 8080)];
const apiEps = [endpoint("10.244.1.20", 8443)];

describe("IptablesBackend", () => {
  test("first sync creates canaries, jump chains and jumps once; later syncs and restarts add none", async () => {
    const exec = new FakeIptables();
    const { backend } = makeBackend(exec);
    const snap = world([[web, webEps]]);
    const result = await backend.sync(snap, full);
    for (const table of ["mangle", "nat", "filter"]) expect(exec.chainsOf("iptables-legacy", table)).toContain("KUBE-PROXY-CANARY");
    const inserts = verbs(exec, "-I");
    expect(inserts.length).toBeGreaterThanOrEqual(12);
    expect(exec.tables.get("iptables-legacy/nat")?.get("PREROUTING")).toEqual(['-m comment --comment kubernetes service portals -j KUBE-SERVICES']);
    // The canary and jumps go in before the restore that fills the chains.
    const firstRestore = exec.calls.findIndex((c) => c.argv[0] === "iptables-legacy-restore");
    expect(exec.calls.findLastIndex((c) => c.argv[5] === "-I")).toBeLessThan(firstRestore);
    expect(result.rules?.["nat"]).toBeGreaterThan(0);
    expect(result.partial).toBe(false);

    exec.clear();
    await backend.sync(snap, full);
    expect(verbs(exec, "-I")).toHaveLength(0);
    expect(verbs(exec, "-N")).toHaveLength(0);
    // A periodic full sync only looks at the canaries; the jumps are known to be there.
    expect(verbs(exec, "-C")).toHaveLength(0);
    expect(verbs(exec, "-S")).toHaveLength(3);

    exec.clear();
    const restarted = makeBackend(exec).backend;
    await restarted.sync(snap, full);
    expect(verbs(exec, "-I")).toHaveLength(0);
    for (const chain of ["PREROUTING", "OUTPUT", "POSTROUTING"]) {
      expect(exec.tables.get("iptables-legacy/nat")?.get(chain)).toHaveLength(1);
    }
  });

  test("a partial sync rewrites only the changed service port's chains; no setup commands", async () => {
    const exec = new FakeIptables();
    const { backend } = makeBackend(exec);
    await backend.sync(world([[web, webEps], [api, apiEps]]), full);
    exec.clear();
    const moved = [endpoint("10.244.1.10", 8080), endpoint("10.244.1.12", 8080)];
    const result = await backend.sync(world([[web, moved], [api, apiEps]]), partialOf(web.key));
    expect(result.partial).toBe(true);
    const [text] = exec.restores();
    expect(text).toContain("10.244.1.12:8080");
    expect(text).not.toContain("10.244.1.20:8443");
    // The removed endpoint's chain is deleted; top-level chains whose content did not change are left out.
    expect(text).toMatch(/^-X KUBE-SEP-/m);
    expect(text).not.toContain(":KUBE-SERVICES");
    expect(text).not.toContain("-A KUBE-POSTROUTING");
    expect(exec.tables.get("iptables-legacy/nat")?.get("KUBE-SERVICES")?.length).toBe(3);
    expect(verbs(exec, "-I")).toHaveLength(0);
    // A change that does alter a top-level chain rewrites that chain, whole.
    exec.clear();
    await backend.sync(world([[web, []], [api, apiEps]]), partialOf(web.key));
    const [second] = exec.restores();
    expect(second).toContain(":KUBE-SERVICES - [0:0]");
    expect(second).toContain("-d 10.96.0.11 --dport 443");
    expect(second).toContain("ns/web:http has no endpoints");
    expect(second).not.toContain("-A KUBE-POSTROUTING");
    // One -S per canary table, and no iptables-save: the chain set is known from the last sync.
    expect(verbs(exec, "-S")).toHaveLength(3);
    expect(exec.calls.filter((c) => c.argv[0]?.endsWith("-save"))).toHaveLength(0);
  });

  test("partial syncs of random changes leave the kernel as a full sync would, writing only what changed", async () => {
    const pool = [
      servicePort("ns", "a", "http", { clusterIP: "10.96.1.1", port: 80 }),
      servicePort("ns", "b", "dns", { clusterIP: "10.96.1.2", port: 53, protocol: "UDP" }),
      servicePort("ns", "c", "np", { type: "NodePort", clusterIP: "10.96.1.3", port: 80, nodePort: 30003 }),
      servicePort("ns", "d", "ext", { clusterIP: "10.96.1.4", port: 80, externalIPs: ["192.168.50.4"] }),
      servicePort("ns", "e", "local", {
        type: "NodePort",
        clusterIP: "10.96.1.5",
        port: 80,
        nodePort: 30005,
        externalPolicyLocal: true,
        internalPolicyLocal: true,
      }),
    ];
    const ips = ["10.244.1.1", "10.244.1.2", "10.244.1.3", "10.244.2.1"];
    let seed = 12345;
    const random = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return (seed >>> 16) % n;
    };
    const current = new Map<string, [ReturnType<typeof servicePort>, ReturnType<typeof endpoint>[]]>();
    const kernelOf = (exec: FakeIptables) =>
      ["filter", "nat"].map((table) =>
        [...(exec.tables.get(`iptables-legacy/${table}`) ?? new Map<string, string[]>())].toSorted(([x], [y]) => x.localeCompare(y)),
      );
    const exec = new FakeIptables();
    const { backend } = makeBackend(exec);
    await backend.sync(world([]), full);
    let withoutTopLevel = 0;
    let withTopLevel = 0;
    for (let step = 0; step < 200; step++) {
      const sp = pool[random(pool.length)] as (typeof pool)[number];
      const op = random(4);
      if (op === 0) current.delete(sp.key);
      else {
        const eps = ips.filter(() => random(2) === 0).map((ip) => endpoint(ip, 8080, { nodeName: ip.startsWith("10.244.1.") ? "test-node" : "other" }));
        // op 1: the same service port object with new endpoints; op 2: a new object (as after an update); op 3: same endpoints.
        const entry = current.get(sp.key);
        if (op === 3 && entry) current.set(sp.key, [entry[0], [...entry[1]]]);
        else current.set(sp.key, [op === 2 || !entry ? { ...sp } : entry[0], eps]);
      }
      exec.clear();
      const result = await backend.sync(world([...current.values()]), partialOf(sp.key));
      expect(result.partial).toBe(true);
      expect(result.endpoints).toBe([...current.values()].reduce((n, [, eps]) => n + eps.length, 0));
      for (const text of exec.restores()) {
        if (text.includes("*filter")) withTopLevel++;
        else withoutTopLevel++;
      }
      const reference = new FakeIptables();
      await makeBackend(reference).backend.sync(world([...current.values()]), full);
      expect(kernelOf(exec)).toEqual(kernelOf(reference));
    }
    expect(withoutTopLevel).toBeGreaterThan(10);
    expect(withTopLevel).toBeGreaterThan(10);
  });

  test("a partial sync that changes no rule restores nothing", async () => {
    const exec = new FakeIptables();
    const { backend } = makeBackend(exec);
    await backend.sync(world([[web, webEps], [api, apiEps]]), full);
    exec.clear();
    const result = await backend.sync(world([[web, [...webEps]], [api, apiEps]]), partialOf(web.key));
    expect(result.partial).toBe(true);
    expect(exec.restores()).toEqual([]);
    expect(result.rules?.nat).toBe(0);
  });

  test("a failed restore throws, is counted, and makes the next sync full", async () => {
    const exec = new FakeIptables();
    const { backend, metrics } = makeBackend(exec);
    await backend.sync(world([[web, webEps], [api, apiEps]]), full);
    exec.failRestores = 1;
    await expect(backend.sync(world([[web, webEps.slice(0, 1)], [api, apiEps]]), partialOf(web.key))).rejects.toThrow(/line 3 failed/);
    expect(counter(metrics.iptablesRestoreFailuresTotal)).toBe(1);
    expect(counter(metrics.iptablesPartialRestoreFailuresTotal)).toBe(1);
    exec.clear();
    const result = await backend.sync(world([[web, webEps.slice(0, 1)], [api, apiEps]]), partialOf(web.key));
    expect(result.partial).toBe(false);
    expect(exec.restores()[0]).toContain("10.244.1.20:8443");
    // After a failure the kernel's chains are read again rather than trusted.
    expect(exec.calls.some((c) => c.argv[0] === "iptables-legacy-save")).toBe(true);

    exec.failRestores = 1;
    await expect(backend.sync(world([[web, webEps]]), full)).rejects.toThrow();
    expect(counter(metrics.iptablesRestoreFailuresTotal)).toBe(2);
    expect(counter(metrics.iptablesPartialRestoreFailuresTotal)).toBe(1);
  });

  test("a missing canary (flushed table) turns a partial sync into a full one and restores the jumps", async () => {
    const exec = new FakeIptables();
    const { backend, logger } = makeBackend(exec);
    await backend.sync(world([[web, webEps], [api, apiEps]]), full);
    // iptables -t nat -F; iptables -t nat -X
    for (const chain of exec.chainsOf("iptables-legacy", "nat")) {
      if (["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"].includes(chain)) exec.tables.get("iptables-legacy/nat")?.set(chain, []);
      else exec.deleteChain("iptables-legacy", "nat", chain);
    }
    exec.clear();
    const result = await backend.sync(world([[web, webEps], [api, apiEps]]), partialOf(web.key));
    expect(result.partial).toBe(false);
    expect(logger.lines.join("\n")).toContain("canary");
    expect(exec.chainsOf("iptables-legacy", "nat")).toContain("KUBE-PROXY-CANARY");
    expect(exec.tables.get("iptables-legacy/nat")?.get("PREROUTING")).toHaveLength(1);
    expect(exec.restores()[0]).toContain("10.244.1.20:8443");
  });

  test("a periodic full sync after a flush restores the jumps too", async () => {
    const exec = new FakeIptables();
    const { backend } = makeBackend(exec);
    await backend.sync(world([[web, webEps]]), full);
    exec.tables.get("iptables-legacy/nat")?.set("PREROUTING", []);
    exec.deleteChain("iptables-legacy", "nat", "KUBE-PROXY-CANARY");
    await backend.sync(world([[web, webEps]]), full);
    expect(exec.tables.get("iptables-legacy/nat")?.get("PREROUTING")).toHaveLength(1);
  });

  test("with a canary interval, syncs in between skip the check; the first one after it looks again", async () => {
    const exec = new FakeIptables();
    const clock = new FakeClock();
    const backend = new IptablesBackend({
      exec,
      flavour: "legacy",
      ruleOptions: defaultRuleOptions,
      nodePortAddresses: [],
      localAddresses: () => [],
      metrics: createMetrics({ proc: null }),
      logger: memoryLogger(),
      canaryCheckIntervalMs: 1000,
      clock,
    });
    await backend.sync(world([[web, webEps]]), full);
    exec.clear();
    await clock.advance(400);
    await backend.sync(world([[web, webEps.slice(1)]]), partialOf(web.key));
    expect(verbs(exec, "-S")).toHaveLength(0);
    exec.deleteChain("iptables-legacy", "nat", "KUBE-PROXY-CANARY");
    await clock.advance(700);
    const result = await backend.sync(world([[web, webEps]]), partialOf(web.key));
    expect(verbs(exec, "-S").length).toBeGreaterThanOrEqual(3);
    expect(result.partial).toBe(false);
    expect(exec.chainsOf("iptables-legacy", "nat")).toContain("KUBE-PROXY-CANARY");
  });

  test("a removed service's chains are deleted by the next full sync", async () => {
    const exec = new FakeIptables();
    const { backend } = makeBackend(exec);
    await backend.sync(world([[web, webEps], [api, apiEps]]), full);
    const before = exec.chainsOf("iptables-legacy", "nat").filter((c) => c.startsWith("KUBE-SVC-"));
    expect(before).toHaveLength(2);
    await backend.sync(world([[web, webEps]]), full);
    expect(exec.chainsOf("iptables-legacy", "nat").filter((c) => c.startsWith("KUBE-SVC-"))).toHaveLength(1);
    expect(exec.chainsOf("iptables-legacy", "nat").filter((c) => c.startsWith("KUBE-SEP-"))).toHaveLength(2);
  });

  test("a service port with a malformed field is skipped with a warning naming it; the others are written", async () => {
    const exec = new FakeIptables();
    const { backend, logger } = makeBackend(exec);
    const bad = servicePort("ns", "bad", "", { clusterIP: "10.96.0.999", port: 80 });
    const badEndpoint = [...webEps, endpoint("10.244.1.300", 8080)];
    await backend.sync(world([[web, badEndpoint], [bad, apiEps]]), full);
    const text = exec.restores()[0] ?? "";
    expect(text).toContain("-d 10.96.0.10 --dport 80");
    expect(text).not.toContain("10.96.0.999");
    expect(text).not.toContain("10.244.1.300");
    expect(logger.lines.join("\n")).toContain("ns/bad");
    // A partial sync checks the changed service ports: a bad one appearing then is caught as well.
    await backend.sync(world([[web, webEps]]), full);
    exec.clear();
    const worse = servicePort("ns", "worse", "", { clusterIP: "10.96.0.998", port: 80 });
    const result = await backend.sync(world([[web, [...webEps, endpoint("10.244.1.301", 8080)]], [worse, apiEps]]), partialOf(web.key, worse.key));
    expect(result.partial).toBe(true);
    expect(exec.restores().join("")).not.toContain("10.244.1.301");
    expect(exec.restores().join("")).not.toContain("10.96.0.998");
    expect(logger.lines.join("\n")).toContain("ns/worse");
    expect(servicePortProblem(web)).toBeUndefined();
    expect(servicePortProblem(servicePort("ns", 'x"y', "", { clusterIP: "10.96.0.1", port: 80 }))).toContain("name");
    expect(servicePortProblem(servicePort("ns", "p", "", { clusterIP: "10.96.0.1", port: 70000 }))).toContain("port");
  });

  test("IPv6 service ports go to ip6tables, and the family keeps being synced after its last service", async () => {
    const exec = new FakeIptables();
    const { backend } = makeBackend(exec);
    await backend.sync(world([[web, webEps], [web6, [endpoint("fd00:244:1::a", 8080)]]]), full);
    expect(exec.chainsOf("ip6tables-legacy", "nat").some((c) => c.startsWith("KUBE-SVC-"))).toBe(true);
    expect(exec.chainsOf("ip6tables-legacy", "nat")).toContain("KUBE-PROXY-CANARY");
    await backend.sync(world([[web, webEps]]), full);
    expect(exec.chainsOf("ip6tables-legacy", "nat").some((c) => c.startsWith("KUBE-SVC-"))).toBe(false);
  });

  test("a family the node's iptables cannot serve is left out with one warning; the other family syncs and stays healthy", async () => {
    const exec = new FakeIptables();
    exec.broken.add("ip6tables-legacy");
    const { backend, logger } = makeBackend(exec);
    const ipv6Eps = [endpoint("fd00:244:1::a", 8080)];
    await backend.sync(world([[web, webEps], [web6, ipv6Eps]]), full);
    expect(exec.chainsOf("iptables-legacy", "nat").some((c) => c.startsWith("KUBE-SVC-"))).toBe(true);
    const warnings = () => logger.lines.filter((l) => l.includes("does not support IPv6"));
    expect(warnings()).toHaveLength(1);
    exec.clear();
    await backend.sync(world([[web, webEps], [web6, ipv6Eps]]), full);
    expect(exec.calls.some((c) => c.argv[0]?.startsWith("ip6tables"))).toBe(false);
    expect(warnings()).toHaveLength(1);
  });

  test("MASQUERADE gets --random-fully when the node's iptables has it", async () => {
    const masquerade = (exec: FakeIptables) => exec.tables.get("iptables-legacy/nat")?.get("KUBE-POSTROUTING")?.find((r) => r.includes("MASQUERADE"));
    const modern = new FakeIptables();
    modern.version = "iptables v1.8.9 (legacy)\n";
    await makeBackend(modern).backend.sync(world([[web, webEps]]), full);
    expect(masquerade(modern)).toEndWith("-j MASQUERADE --random-fully");
    const old = new FakeIptables();
    old.version = "iptables v1.4.21\n";
    await makeBackend(old).backend.sync(world([[web, webEps]]), full);
    expect(masquerade(old)).toEndWith("-j MASQUERADE");
  });

  test("a family that synced once and then fails is a failed sync, not a missing family", async () => {
    const exec = new FakeIptables();
    const { backend } = makeBackend(exec);
    const both = world([[web, webEps], [web6, [endpoint("fd00:244:1::a", 8080)]]]);
    await backend.sync(both, full);
    exec.broken.add("ip6tables-legacy");
    await expect(backend.sync(both, full)).rejects.toThrow("IPv6");
  });

  test("UDP: a removed endpoint's flows and a service leaving the no-endpoints state are cleared in conntrack", async () => {
    const exec = new FakeIptables();
    const { backend } = makeBackend(exec);
    await backend.sync(world([[dns, []]]), full);
    exec.clear();
    await backend.sync(world([[dns, [endpoint("10.244.1.10", 5353), endpoint("10.244.1.11", 5353)]]]), partialOf(dns.key));
    const cleared = () => exec.calls.filter((c) => c.argv[0] === "conntrack" && c.argv[1] !== "-R").map((c) => c.argv.slice(1).join(" "));
    const batches = () => exec.calls.filter((c) => c.argv[0] === "conntrack" && c.argv[1] === "-R").length;
    expect(cleared()).toEqual(["-D --orig-dst 10.96.0.53 -p udp", "-D -p udp --dport 30053"]);
    expect(batches()).toBe(1);
    exec.clear();
    await backend.sync(world([[dns, [endpoint("10.244.1.11", 5353)]]]), partialOf(dns.key));
    expect(cleared()).toEqual([
      "-D --orig-dst 10.96.0.53 --dst-nat 10.244.1.10 -p udp",
      "-D -p udp --dport 30053 --dst-nat 10.244.1.10",
    ]);
    exec.clear();
    await backend.sync(world([[web, [endpoint("10.244.1.10", 8080)]], [dns, [endpoint("10.244.1.11", 5353)]]]), partialOf(web.key));
    expect(cleared()).toEqual([]);
    expect(batches()).toBe(0);

    // A conntrack without -R: the same deletions, one process each.
    exec.conntrackBatches = false;
    await backend.sync(world([[web, [endpoint("10.244.1.10", 8080)]], [dns, []]]), partialOf(dns.key));
    exec.clear();
    await backend.sync(world([[web, [endpoint("10.244.1.10", 8080)]], [dns, [endpoint("10.244.1.12", 5353)]]]), partialOf(dns.key));
    expect(cleared()).toEqual(["-D --orig-dst 10.96.0.53 -p udp", "-D -p udp --dport 30053", "-D --orig-dst 10.96.0.53 -p udp", "-D -p udp --dport 30053"]);
  });

  test("the first sync after a start leaves conntrack alone: the kept rules still match the flows", async () => {
    const exec = new FakeIptables();
    const { backend } = makeBackend(exec);
    await backend.sync(world([[dns, [endpoint("10.244.1.10", 5353)]]]), full);
    expect(exec.calls.filter((c) => c.argv[0] === "conntrack")).toEqual([]);
  });

  test("health check node ports follow the services and their local endpoint counts", async () => {
    const exec = new FakeIptables();
    const seen: { ports?: Map<string, number>; local?: Map<string, number> } = {};
    const health: ServiceHealthPorts = {
      async syncServices(desired) {
        seen.ports = new Map(desired);
      },
      syncEndpoints(local) {
        seen.local = new Map(local);
      },
      async close() {},
    };
    const { backend } = makeBackend(exec, { serviceHealth: health });
    const lb = servicePort("ns", "lb", "", {
      clusterIP: "10.96.0.20",
      port: 80,
      type: "LoadBalancer",
      nodePort: 30080,
      externalPolicyLocal: true,
      healthCheckNodePort: 32000,
    });
    await backend.sync(
      world([[lb, [endpoint("10.244.1.10", 8080, { isLocal: true }), endpoint("10.244.2.10", 8080, { nodeName: "other" })]], [web, webEps]]),
      full,
    );
    expect(seen.ports).toEqual(new Map([["ns/lb", 32000]]));
    expect(seen.local).toEqual(new Map([["ns/lb", 1]]));
  });

  test("legacy: a large input is restored whole, with memory freed before (what generating it left) and after", async () => {
    const exec = new FakeIptables();
    const collectedAt: number[] = [];
    const { backend } = makeBackend(exec, { collectGarbage: () => collectedAt.push(exec.restores().length), largeInputChars: 3000 });
    const entries: [ReturnType<typeof servicePort>, ReturnType<typeof endpoint>[]][] = [];
    for (let i = 0; i < 6; i++) entries.push([servicePort("ns", `s${i}`, "", { clusterIP: `10.96.1.${i}`, port: 80 }), [endpoint(`10.244.1.${i}`, 80)]]);
    const result = await backend.sync(world(entries), full);
    expect(exec.restores()).toHaveLength(1);
    expect(exec.restores()[0]!.length).toBeGreaterThanOrEqual(3000);
    expect(collectedAt).toEqual([0, 1]);
    // The sync loop learns that this sync's memory is already released.
    expect(result.memoryReleased).toBe(true);
    const small = await backend.sync(world(entries.slice(0, 1)), full);
    expect(exec.restores()[1]!.length).toBeLessThan(3000);
    expect(collectedAt).toEqual([0, 1]);
    expect(small.memoryReleased).toBe(false);
  });

  test("nft: a large full or partial restore goes in bottom-up pieces; a small partial one in one piece", async () => {
    const exec = new FakeIptables();
    // Restores done when each collection ran: the garbage of generating goes before the pieces do.
    const collectedAt: number[] = [];
    const { backend } = makeBackend(exec, {
      flavour: "nft",
      pieceLines: 8,
      collectGarbage: () => collectedAt.push(exec.restores().length),
      largeInputChars: 3000,
    });
    const entries: [ReturnType<typeof servicePort>, ReturnType<typeof endpoint>[]][] = [];
    for (let i = 0; i < 6; i++) {
      entries.push([servicePort("ns", `s${i}`, "", { clusterIP: `10.96.1.${i}`, port: 80 }), [endpoint(`10.244.1.${i}`, 80), endpoint(`10.244.2.${i}`, 80)]]);
    }
    await backend.sync(world(entries), full);
    const pieces = exec.restores();
    expect(pieces.length).toBeGreaterThan(3);
    expect(pieces.join("").length).toBeGreaterThanOrEqual(3000);
    expect(collectedAt).toEqual([0, pieces.length]);
    const firstWith = (re: RegExp) => pieces.findIndex((p) => re.test(p));
    expect(firstWith(/^:KUBE-SEP-/m)).toBeLessThan(firstWith(/^:KUBE-SVC-/m));
    expect(firstWith(/^:KUBE-SVC-/m)).toBeLessThan(firstWith(/^:KUBE-SERVICES /m));
    expect(pieces.at(-1)).toContain("*filter");
    // Every chain the full text declares is declared by exactly one piece.
    const declared = pieces.flatMap((p) => p.split("\n").filter((l) => l.startsWith(":") && !l.startsWith(":KUBE-SERVICES") && !l.startsWith(":KUBE-NODEPORTS") && !l.startsWith(":KUBE-EXTERNAL") && !l.startsWith(":KUBE-FORWARD") && !l.startsWith(":KUBE-PROXY-FIREWALL")));
    expect(new Set(declared).size).toBe(declared.length);
    expect(exec.chainsOf("iptables-nft", "nat").filter((c) => c.startsWith("KUBE-SEP-"))).toHaveLength(12);

    exec.clear();
    await backend.sync(world(entries.slice(1)), partialOf((entries[0] as (typeof entries)[0])[0].key));
    expect(exec.restores()).toHaveLength(1);
    // A small input: no collection delays it.
    expect(exec.restores()[0]!.length).toBeLessThan(3000);
    expect(collectedAt).toHaveLength(2);
    expect(exec.chainsOf("iptables-nft", "nat").filter((c) => c.startsWith("KUBE-SEP-"))).toHaveLength(10);

    // Every remaining service's endpoints move at once: a partial input as large as a full one.
    const moved = entries.slice(1).map(([sp], i): (typeof entries)[0] => [sp, [endpoint(`10.244.3.${i}`, 80), endpoint(`10.244.4.${i}`, 80)]]);
    exec.clear();
    const result = await backend.sync(world(moved), partialOf(...moved.map(([sp]) => sp.key)));
    expect(result.partial).toBe(true);
    const partialPieces = exec.restores();
    expect(partialPieces.length).toBeGreaterThan(1);
    const firstIn = (re: RegExp) => partialPieces.findIndex((p) => re.test(p));
    expect(firstIn(/^:KUBE-SEP-/m)).toBeLessThan(firstIn(/^:KUBE-SVC-/m));
    expect(firstIn(/^-X KUBE-SEP-/m)).toBe(partialPieces.length - 1);
    const afterPartial = exec.chainsOf("iptables-nft", "nat").sort();
    const reference = new FakeIptables();
    await makeBackend(reference, { flavour: "nft", pieceLines: 8 }).backend.sync(world(moved), full);
    expect(afterPartial).toEqual(reference.chainsOf("iptables-nft", "nat").sort());
  });

  test("flavour auto asks the node once", async () => {
    const exec = new FakeIptables();
    const metrics = createMetrics({ proc: null });
    const backend = new IptablesBackend({
      exec,
      flavour: "auto",
      ruleOptions: defaultRuleOptions,
      nodePortAddresses: [],
      localAddresses: () => [],
      metrics,
      logger: memoryLogger(),
    });
    await backend.sync(world([[web, webEps]]), full);
    await backend.sync(world([[web, webEps]]), full);
    expect(backend.iptablesFlavour).toBe("nft");
    expect(exec.calls.filter((c) => c.argv.join(" ") === "iptables-nft-save -t mangle")).toHaveLength(1);
  });
});

describe("splitRestoreInput", () => {
  test("a small input stays one piece", () => {
    const text = "*filter\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n";
    expect(splitRestoreInput(text, 100)).toEqual([text]);
  });
});

describe("staleConntrackOps", () => {
  test("TCP service ports are never cleared; a deleted UDP service clears its endpoints' flows", () => {
    const tcp = snapshot([[web, webEps]]);
    expect(staleConntrackOps(tcp, snapshot([]))).toEqual([]);
    const udp = snapshot([[dns, [endpoint("10.244.1.10", 5353)]]]);
    expect(staleConntrackOps(udp, snapshot([])).map((op) => op.kind)).toEqual(["serviceNAT", "portNAT"]);
  });
});

describe("sysctls", () => {
  const conntrack = {
    maxPerCore: 32768,
    min: 131072,
    tcpEstablishedTimeout: 86_400_000,
    tcpCloseWaitTimeout: 3_600_000,
    tcpBeLiberal: false,
    udpTimeout: 0,
    udpStreamTimeout: 0,
  };

  test("nf_conntrack_max is maxPerCore × cores, at least min; 0 per core leaves it", () => {
    expect(conntrackMax(conntrack, 2)).toBe(131072);
    expect(conntrackMax(conntrack, 8)).toBe(262144);
    expect(conntrackMax({ maxPerCore: 0, min: 5 }, 8)).toBe(0);
    const names = plannedSysctls({ conntrack: { ...conntrack, tcpBeLiberal: true }, localhostNodePorts: true, cores: 8 });
    expect(names).toEqual([
      { name: "net.ipv4.conf.all.route_localnet", value: 1 },
      { name: "net.netfilter.nf_conntrack_max", value: 262144 },
      { name: "net.netfilter.nf_conntrack_tcp_timeout_established", value: 86400 },
      { name: "net.netfilter.nf_conntrack_tcp_timeout_close_wait", value: 3600 },
      { name: "net.netfilter.nf_conntrack_tcp_be_liberal", value: 1 },
    ]);
  });

  test("each failure is a warning; hashsize only grows; a missing br_netfilter is reported", async () => {
    const values = new Map<string, string>([["net.netfilter.nf_conntrack_max", "65536"], ["hashsize", "100000"]]);
    const sysctl: Sysctl = {
      async get(name) {
        return values.get(name);
      },
      async set(name, value) {
        if (name === "net.ipv4.conf.all.route_localnet") throw new Error("EROFS: read-only file system");
        values.set(name, String(value));
      },
    };
    const logger = memoryLogger();
    const failed = await applySysctls({ conntrack, localhostNodePorts: true, cores: 8, sysctl, conntrackParameters: sysctl, logger });
    expect(failed).toEqual(["net.ipv4.conf.all.route_localnet"]);
    expect(values.get("net.netfilter.nf_conntrack_max")).toBe("262144");
    expect(values.get("hashsize")).toBe("100000");
    const log = logger.lines.join("\n");
    expect(log).toContain("read-only");
    expect(log).toContain("br_netfilter");
  });
});

describe("cleanup", () => {
  const save = [
    "*nat",
    ":PREROUTING ACCEPT [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    ":KUBE-SERVICES - [0:0]",
    ":KUBE-SVC-ABC - [0:0]",
    ":KUBE-PORTALS-HOST - [0:0]",
    ":KUBE-MARK-DROP - [0:0]",
    ":CNI-HOSTPORT - [0:0]",
    '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    "-A OUTPUT -j KUBE-PORTALS-HOST",
    "-A OUTPUT -j CNI-HOSTPORT",
    "-A KUBE-SERVICES -j KUBE-SVC-ABC",
    "COMMIT",
  ].join("\n");

  test("deletes jumps into proxy chains, then flushes and deletes them; kubelet's and others' stay", () => {
    expect(cleanupInput("nat", save)).toBe(
      [
        "*nat",
        '-D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-D OUTPUT -j KUBE-PORTALS-HOST",
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-SVC-ABC - [0:0]",
        ":KUBE-PORTALS-HOST - [0:0]",
        "-X KUBE-SERVICES",
        "-X KUBE-SVC-ABC",
        "-X KUBE-PORTALS-HOST",
        "COMMIT",
        "",
      ].join("\n"),
    );
    expect(cleanupInput("nat", "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\nCOMMIT\n")).toBeUndefined();
  });

  test("after a sync, cleanup removes every proxy chain of both families; a second run changes nothing", async () => {
    const exec = new FakeIptables();
    const { backend } = makeBackend(exec);
    await backend.sync(world([[web, webEps], [web6, [endpoint("fd00:244:1::a", 8080)]]]), full);
    const removed = await cleanupIptables({ exec, logger: memoryLogger(), flavours: ["legacy"] });
    expect(removed).toBeGreaterThan(10);
    for (const base of ["iptables-legacy", "ip6tables-legacy"]) {
      for (const table of ["nat", "filter", "mangle"]) {
        expect(exec.chainsOf(base, table).filter((c) => c.startsWith("KUBE-") && c !== "KUBE-FIREWALL")).toEqual([]);
        for (const builtin of ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]) {
          expect(exec.tables.get(`${base}/${table}`)?.get(builtin)?.filter((r) => /KUBE-(?!FIREWALL)/.test(r)) ?? []).toEqual([]);
        }
      }
    }
    exec.clear();
    expect(await cleanupIptables({ exec, logger: memoryLogger(), flavours: ["legacy"] })).toBe(0);
    expect(exec.restores()).toHaveLength(0);
  });
});
