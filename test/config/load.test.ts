import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  ConfigError,
  checkConfig,
  configToJSON,
  configToYAML,
  defaultConfig,
  effectiveDetectLocalMode,
  effectiveProxyMode,
  loadConfigFile,
  nodeName,
  parseConfigObject,
  parseConfigText,
  writeConfigFile,
} from "../../src/config/index.ts";

const HEAD = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
const root = join(import.meta.dir, "..", "..");

/** The ConfigError a document produces; fails the test when it loads. */
function problemsOf(text: string, source = "test.yaml"): ConfigError {
  try {
    parseConfigText(text, source);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error(`expected ${JSON.stringify(text)} to be rejected`);
}

describe("the product brief's sample", () => {
  test("loads as it is, without warnings", () => {
    const { config, warnings } = loadConfigFile(join(root, "examples", "config-sample.yaml"));
    expect(warnings).toEqual([]);
    expect(config.mode).toBe("ipvs");
    expect(effectiveProxyMode(config)).toBe("ipvs");
    expect(config.ipvs.syncPeriod).toBe(30_000);
    expect(config.ipvs.minSyncPeriod).toBe(10_000);
    expect(config.iptables.syncPeriod).toBe(30_000);
    expect(config.iptables.minSyncPeriod).toBe(10_000);
    expect(config.iptables.masqueradeBit).toBe(14);
    expect(config.iptables.masqueradeAll).toBe(false);
    expect(config.clusterCIDR).toBe("10.244.0.0/16");
    expect(config.bindAddress).toBe("0.0.0.0");
    expect(config.clientConnection).toEqual({
      kubeconfig: "/var/lib/kube-proxy/kubeconfig.conf",
      acceptContentTypes: "",
      contentType: "application/vnd.kubernetes.protobuf",
      qps: 5,
      burst: 10,
    });
    // Everything the sample leaves out keeps its default.
    const defaults = defaultConfig();
    expect(config.conntrack).toEqual(defaults.conntrack);
    expect(config.healthzBindAddress).toBe(defaults.healthzBindAddress);
  });
});

describe("defaults", () => {
  // Upstream's defaulted v1alpha1 document (kube-proxy's scheme round-trip test data), with the
  // userspace-era udpIdleTimeout and the kproxy iptables.flavour extension added.
  const upstreamDefaults = `${HEAD}bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 10
  contentType: application/vnd.kubernetes.protobuf
  kubeconfig: ""
  qps: 5
clusterCIDR: ""
configSyncPeriod: 15m0s
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpBeLiberal: false
  tcpCloseWaitTimeout: 1h0m0s
  tcpEstablishedTimeout: 24h0m0s
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: 0.0.0.0:10256
hostnameOverride: ""
iptables:
  flavour: auto
  localhostNodePorts: true
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 1s
  syncPeriod: 30s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 30s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
logging:
  flushFrequency: 5s
  format: text
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: 127.0.0.1:10249
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 1s
  syncPeriod: 30s
nodePortAddresses: null
oomScoreAdj: -999
portRange: ""
showHiddenMetricsForVersion: ""
udpIdleTimeout: 250ms
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
`;

  test("an empty document, a comment-only one and a header-only one all give upstream's defaults", () => {
    const upstream = parseConfigText(upstreamDefaults, "upstream").config;
    expect(parseConfigText("", "empty").config).toEqual(upstream);
    expect(parseConfigText("# nothing here\n", "comments").config).toEqual(upstream);
    expect(parseConfigText(HEAD, "header").config).toEqual(upstream);
    expect(defaultConfig()).toEqual(upstream);
  });

  test("the defaults in the numbers kproxy uses", () => {
    const c = defaultConfig();
    expect(c.healthzBindAddress).toBe("0.0.0.0:10256");
    expect(c.metricsBindAddress).toBe("127.0.0.1:10249");
    expect(c.iptables).toMatchObject({ masqueradeBit: 14, syncPeriod: 30_000, minSyncPeriod: 1_000, localhostNodePorts: true, flavour: "auto" });
    expect(c.ipvs).toMatchObject({ syncPeriod: 30_000, minSyncPeriod: 0, scheduler: "", excludeCIDRs: [] });
    expect(c.conntrack).toMatchObject({ maxPerCore: 32768, min: 131072, tcpEstablishedTimeout: 86_400_000, tcpCloseWaitTimeout: 3_600_000 });
    expect(c.oomScoreAdj).toBe(-999);
    expect(c.udpIdleTimeout).toBe(250);
    expect(c.configSyncPeriod).toBe(900_000);
    expect(c.logging).toMatchObject({ format: "text", verbosity: 0, flushFrequency: 5_000 });
    expect(effectiveProxyMode(c)).toBe("iptables");
    expect(effectiveDetectLocalMode(c)).toBe("ClusterCIDR");
  });

  test("examples/config-full.yaml is exactly the defaults and names no unknown field", () => {
    const { config, warnings } = loadConfigFile(join(root, "examples", "config-full.yaml"));
    expect(warnings).toEqual([]);
    expect(config).toEqual(defaultConfig());
    const body = readFileSync(join(root, "examples", "config-full.yaml"), "utf8").replace(/^#.*\n/gm, "");
    expect(body).toBe(configToYAML(defaultConfig()));
  });

  test("an IPv6 bindAddress moves the server defaults to IPv6", () => {
    const { config } = parseConfigText(`${HEAD}bindAddress: "::"\n`);
    expect(config.healthzBindAddress).toBe("[::]:10256");
    expect(config.metricsBindAddress).toBe("[::1]:10249");
  });

  test("a bind address without a port gets the default port", () => {
    const { config } = parseConfigText(`${HEAD}healthzBindAddress: 10.1.2.3\nmetricsBindAddress: "::1"\n`);
    expect(config.healthzBindAddress).toBe("10.1.2.3:10256");
    expect(config.metricsBindAddress).toBe("[::1]:10249");
  });

  test("zero periods mean the default as upstream, but an explicit zero minSyncPeriod is kept", () => {
    const { config } = parseConfigText(`${HEAD}iptables:\n  syncPeriod: 0s\n  minSyncPeriod: 0s\nconfigSyncPeriod: "0"\nclientConnection:\n  qps: 0\n  burst: 0\n`);
    expect(config.iptables.syncPeriod).toBe(30_000);
    expect(config.iptables.minSyncPeriod).toBe(0);
    expect(config.configSyncPeriod).toBe(900_000);
    expect(config.clientConnection.qps).toBe(5);
    expect(config.clientConnection.burst).toBe(10);
  });

  test("empty values (YAML null) count as absent", () => {
    const { config } = parseConfigText(`${HEAD}clientConnection:\n  kubeconfig:\nnodePortAddresses:\nipvs:\n`);
    expect(config.clientConnection.kubeconfig).toBe("");
    expect(config.nodePortAddresses).toEqual([]);
    expect(config.ipvs).toEqual(defaultConfig().ipvs);
  });
});

describe("fields that take several forms", () => {
  test("YAML is read as upstream reads it: yes/on are booleans, 10:20 and dates stay strings", () => {
    const { config } = parseConfigText(`${HEAD}ipvs:\n  strictARP: yes\niptables:\n  masqueradeAll: on\n  localhostNodePorts: off\nhostnameOverride: 2024-01-01\nshowHiddenMetricsForVersion: "1.29"\n`);
    expect(config.ipvs.strictARP).toBe(true);
    expect(config.iptables.masqueradeAll).toBe(true);
    expect(config.iptables.localhostNodePorts).toBe(false);
    expect(config.hostnameOverride).toBe("2024-01-01");
    const written = configToYAML({ ...config, hostnameOverride: "yes" });
    expect(parseConfigText(written).config.hostnameOverride).toBe("yes");
    expect(parseConfigText(`${HEAD}hostnameOverride: 10:20\n`).config.hostnameOverride).toBe("10:20");
  });

  test("dual-stack clusterCIDR loads; two CIDRs of one family do not", () => {
    expect(parseConfigText(`${HEAD}clusterCIDR: 10.244.0.0/16,fd00:10:244::/56\n`).config.clusterCIDR).toBe("10.244.0.0/16,fd00:10:244::/56");
    const err = problemsOf(`${HEAD}clusterCIDR: 10.244.0.0/16,10.245.0.0/16\n`);
    expect(err.problems).toHaveLength(1);
    expect(err.problems[0]).toStartWith('clusterCIDR: "10.244.0.0/16,10.245.0.0/16" is not a valid cluster CIDR');
  });

  test("nodePortAddresses takes CIDRs and primary", () => {
    const { config } = parseConfigText(`${HEAD}nodePortAddresses: [192.168.0.0/16, "fd00::/64", primary]\n`);
    expect(config.nodePortAddresses).toEqual(["192.168.0.0/16", "fd00::/64", "primary"]);
  });

  test("portRange forms", () => {
    for (const range of ["", "30000-32767", "30000+2767", "8080"]) {
      expect(parseConfigText(`${HEAD}portRange: "${range}"\n`).config.portRange).toBe(range);
    }
  });

  test("logging.flushFrequency takes a duration or nanoseconds", () => {
    expect(parseConfigText(`${HEAD}logging:\n  flushFrequency: 2s\n`).config.logging.flushFrequency).toBe(2_000);
    expect(parseConfigText(`${HEAD}logging:\n  flushFrequency: 3000000000\n`).config.logging.flushFrequency).toBe(3_000);
  });

  test("every mode loads; userspace keeps its udpIdleTimeout", () => {
    for (const mode of ["", "iptables", "ipvs", "userspace"]) expect(parseConfigText(`${HEAD}mode: "${mode}"\n`).config.mode).toBe(mode as never);
    expect(parseConfigText(`${HEAD}mode: userspace\nudpIdleTimeout: 1m\n`).config.udpIdleTimeout).toBe(60_000);
  });
});

describe("bad input: one readable line per problem, naming path, value and expectation", () => {
  const cases: { name: string; yaml: string; line: string }[] = [
    { name: "masqueradeBit out of range", yaml: "iptables:\n  masqueradeBit: 40\n", line: "iptables.masqueradeBit: 40 is out of range, expected an integer from 0 to 31" },
    { name: "negative masqueradeBit", yaml: "iptables:\n  masqueradeBit: -1\n", line: "iptables.masqueradeBit: -1 is out of range, expected an integer from 0 to 31" },
    { name: "fractional masqueradeBit", yaml: "iptables:\n  masqueradeBit: 1.5\n", line: "iptables.masqueradeBit: 1.5 is not an integer" },
    { name: "wrong type", yaml: "iptables:\n  masqueradeAll: \"yes\"\n", line: 'iptables.masqueradeAll: "yes" is not a boolean, expected true or false' },
    { name: "section of the wrong type", yaml: "ipvs: fast\n", line: 'ipvs: "fast" is not a mapping' },
    { name: "unknown mode", yaml: "mode: nftables\n", line: 'mode: "nftables" is not a valid proxy mode, expected one of "iptables", "ipvs", "userspace" or "" (meaning iptables)' },
    { name: "bad duration", yaml: "iptables:\n  syncPeriod: 30\n", line: 'iptables.syncPeriod: 30 is not a string, expected a Go duration such as "30s"' },
    { name: "duration without unit", yaml: "iptables:\n  syncPeriod: \"30\"\n", line: 'iptables.syncPeriod: "30" is not a valid duration (missing unit after 30)' },
    { name: "duration with unknown unit", yaml: "configSyncPeriod: 15min\n", line: 'configSyncPeriod: "15min" is not a valid duration (unknown unit "min")' },
    { name: "negative duration", yaml: "conntrack:\n  tcpCloseWaitTimeout: -1s\n", line: 'conntrack.tcpCloseWaitTimeout: "-1s" is negative, expected a duration of 0s or more' },
    { name: "bad IP", yaml: "bindAddress: 300.1.1.1\n", line: 'bindAddress: "300.1.1.1" is not a valid IP address' },
    { name: "port out of range", yaml: "healthzBindAddress: 0.0.0.0:99999\n", line: 'healthzBindAddress: "0.0.0.0:99999" is not a valid address, expected IP:port with a port from 0 to 65535' },
    { name: "host name instead of IP", yaml: "metricsBindAddress: localhost:10249\n", line: 'metricsBindAddress: "localhost:10249" is not a valid address' },
    { name: "bad CIDR", yaml: "clusterCIDR: 10.244.0.0/33\n", line: 'clusterCIDR: "10.244.0.0/33" is not a valid cluster CIDR' },
    { name: "bad CIDR in a list", yaml: "ipvs:\n  excludeCIDRs: [10.0.0.0/8, 10.1.0.0]\n", line: 'ipvs.excludeCIDRs[1]: "10.1.0.0" is not a valid CIDR' },
    { name: "bad nodePortAddresses entry", yaml: "nodePortAddresses: [all]\n", line: 'nodePortAddresses[0]: "all" is not a valid CIDR, expected a CIDR such as 192.168.0.0/16 or "primary"' },
    { name: "negative qps", yaml: "clientConnection:\n  qps: -1\n", line: "clientConnection.qps: -1 is out of range, expected a number of 0 or more" },
    { name: "negative burst", yaml: "clientConnection:\n  burst: -5\n", line: "clientConnection.burst: -5 is out of range, expected an integer of 0 or more" },
    { name: "oomScoreAdj out of range", yaml: "oomScoreAdj: 2000\n", line: "oomScoreAdj: 2000 is out of range, expected an integer from -1000 to 1000" },
    { name: "bad portRange", yaml: "portRange: 2000-1000\n", line: 'portRange: "2000-1000" is not a valid port range' },
    { name: "unknown scheduler", yaml: "ipvs:\n  scheduler: fastest\n", line: 'ipvs.scheduler: "fastest" is not a known IPVS scheduler' },
    { name: "unknown flavour", yaml: "iptables:\n  flavour: xtables\n", line: 'iptables.flavour: "xtables" is not a valid iptables flavour, expected one of "auto", "legacy", "nft"' },
    { name: "featureGates value", yaml: "featureGates:\n  Foo: maybe\n", line: 'featureGates.Foo: "maybe" is not a boolean' },
    { name: "minSyncPeriod longer than syncPeriod", yaml: "iptables:\n  minSyncPeriod: 1m\n", line: 'iptables.minSyncPeriod: "1m0s" is longer than iptables.syncPeriod (30s), expected at most the sync period' },
    { name: "bridge detection without a bridge", yaml: "detectLocalMode: BridgeInterface\n", line: 'detectLocal.bridgeInterface: "" is empty, expected an interface name when detectLocalMode is BridgeInterface' },
    { name: "unknown detectLocalMode", yaml: "detectLocalMode: Magic\n", line: 'detectLocalMode: "Magic" is not a valid local traffic detection mode' },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const err = problemsOf(HEAD + c.yaml);
      expect(err.problems).toHaveLength(1);
      expect(err.problems[0]).toStartWith(c.line);
      expect(err.message).toContain(c.line);
      expect(err.message).not.toContain("    at ");
    });
  }

  test("wrong apiVersion and kind, and a missing apiVersion", () => {
    const wrong = problemsOf("apiVersion: kubeproxy.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n");
    expect(wrong.problems).toEqual([
      'apiVersion: "kubeproxy.config.k8s.io/v1beta1" is not supported, expected kubeproxy.config.k8s.io/v1alpha1',
      'kind: "KubeletConfiguration" is not supported, expected KubeProxyConfiguration',
    ]);
    const missing = problemsOf("kind: KubeProxyConfiguration\nmode: ipvs\n");
    expect(missing.problems).toEqual(["apiVersion: missing, expected kubeproxy.config.k8s.io/v1alpha1"]);
  });

  test("YAML syntax errors name the line and column", () => {
    const err = problemsOf(`${HEAD}iptables:\n  syncPeriod: [30s\n`, "bad.yaml");
    expect(err.problems.length).toBeGreaterThanOrEqual(1);
    expect(err.problems[0]).toMatch(/^bad\.yaml:\d+:\d+: YAML syntax error: /);
    const duplicate = problemsOf(`${HEAD}mode: ipvs\nmode: iptables\n`, "dup.yaml");
    expect(duplicate.problems[0]).toMatch(/^dup\.yaml:4:1: YAML syntax error: .*unique/);
  });

  test("a document that is not a mapping, or several documents", () => {
    expect(problemsOf("- a\n- b\n", "list.yaml").problems[0]).toStartWith('list.yaml: ["a","b"] is not a mapping');
    expect(problemsOf(`${HEAD}---\n${HEAD}`, "two.yaml").problems[0]).toBe("two.yaml: holds 2 YAML documents, expected one KubeProxyConfiguration");
  });

  test("a missing file is a ConfigError naming the file", () => {
    const dir = mkdtempSync(join(tmpdir(), "kproxy-config-"));
    try {
      const path = join(dir, "absent.yaml");
      let caught: unknown;
      try {
        loadConfigFile(path);
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(ConfigError);
      expect((caught as ConfigError).problems).toEqual([`${path}: cannot read the config file: no such file`]);
      expect(() => loadConfigFile(dir)).toThrow("is a directory");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("every problem of a document is reported at once, in document order", () => {
    const err = problemsOf(`${HEAD}mode: nope\niptables:\n  masqueradeBit: 32\n  syncPeriod: soon\noomScoreAdj: -1001\nbogusField: 1\n`);
    expect(err.problems.map((p) => p.split(":")[0])).toEqual(["mode", "iptables.masqueradeBit", "iptables.syncPeriod", "oomScoreAdj"]);
    expect(err.warnings).toEqual(["bogusField: unknown field, ignored"]);
  });

  test("a bad document is rejected quickly", () => {
    const started = performance.now();
    for (let i = 0; i < 20; i++) problemsOf(`${HEAD}mode: nope\niptables:\n  masqueradeBit: 99\n`);
    expect((performance.now() - started) / 20).toBeLessThan(50);
  });
});

describe("unknown fields", () => {
  test("are warned about with their path and the rest still loads", () => {
    const { config, warnings } = parseConfigText(`${HEAD}mode: ipvs\nresourceContainer: /kube-proxy\niptables:\n  masqueradeBit: 5\n  flavor: nft\nipvs:\n  ipSet:\n    hashSize: 1024\n`);
    expect(warnings).toEqual(["resourceContainer: unknown field, ignored", "iptables.flavor: unknown field, ignored", "ipvs.ipSet: unknown field, ignored"]);
    expect(config.mode).toBe("ipvs");
    expect(config.iptables.masqueradeBit).toBe(5);
    expect(config.iptables.flavour).toBe("auto");
  });
});

describe("writing the effective configuration back", () => {
  const custom = `${HEAD}mode: ipvs
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
featureGates:
  TopologyAwareHints: true
nodePortAddresses: [primary, 10.0.0.0/8]
logging:
  format: json
  verbosity: 4
  vmodule:
    - filePattern: proxier*
      verbosity: 6
ipvs:
  scheduler: wrr
  minSyncPeriod: 1500us
  excludeCIDRs: [192.168.0.0/24]
  tcpTimeout: 15m
conntrack:
  udpTimeout: 30s
  tcpBeLiberal: true
iptables:
  flavour: legacy
  minSyncPeriod: 0s
healthzBindAddress: 127.0.0.1:0
windowsRunAsService: true
`;

  test("YAML round trip gives the same config, defaults and custom values alike", () => {
    for (const config of [defaultConfig(), parseConfigText(custom).config]) {
      const again = parseConfigText(configToYAML(config), "written.yaml");
      expect(again.warnings).toEqual([]);
      expect(again.config).toEqual(config);
    }
  });

  test("writeConfigFile writes a file that loads back equal", () => {
    const dir = mkdtempSync(join(tmpdir(), "kproxy-config-"));
    try {
      const config = parseConfigText(custom).config;
      const path = join(dir, "effective.yaml");
      writeConfigFile(path, config);
      const text = readFileSync(path, "utf8");
      expect(text).toContain("minSyncPeriod: 1.5ms");
      expect(text).toContain("tcpTimeout: 15m0s");
      expect(loadConfigFile(path).config).toEqual(config);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("/configz JSON is keyed by the API group and carries Go durations", () => {
    const config = parseConfigText(custom).config;
    const body = JSON.parse(configToJSON(config)) as Record<string, Record<string, unknown>>;
    expect(Object.keys(body)).toEqual(["kubeproxy.config.k8s.io"]);
    const inner = body["kubeproxy.config.k8s.io"] ?? {};
    expect(inner["mode"]).toBe("ipvs");
    expect(inner["apiVersion"]).toBeUndefined();
    expect(inner["configSyncPeriod"]).toBe("15m0s");
    expect((inner["ipvs"] as Record<string, unknown>)["minSyncPeriod"]).toBe("1.5ms");
    expect(inner["featureGates"]).toEqual({ TopologyAwareHints: true });
    expect(parseConfigObject({ apiVersion: "kubeproxy.config.k8s.io/v1alpha1", kind: "KubeProxyConfiguration", ...inner }).config).toEqual(config);
  });

  test("checkConfig catches a value set wrongly in code", () => {
    const config = defaultConfig();
    expect(() => checkConfig({ ...config, iptables: { ...config.iptables, masqueradeBit: 77 } })).toThrow("iptables.masqueradeBit: 77 is out of range");
    expect(checkConfig(config).config).toEqual(config);
  });
});

describe("node name", () => {
  test("hostnameOverride wins, else the machine's hostname; trimmed and lower-cased", () => {
    expect(nodeName("  Node-7 ", () => "ignored")).toBe("node-7");
    expect(nodeName("", () => "Edge-Box.Local\n")).toBe("edge-box.local");
    expect(() => nodeName(" ", () => "  ")).toThrow("hostnameOverride");
  });
});

describe("missing values inside lists", () => {
  test("name the missing field", () => {
    const err = problemsOf(`${HEAD}logging:\n  vmodule:\n    - verbosity: 3\n`);
    expect(err.problems).toEqual(["logging.vmodule[0].filePattern: missing, expected a file name pattern"]);
  });
});
