import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { applyFlags, CliError, helpText, parseArgs, resolveConfig } from "../src/cli.ts";
import { ConfigError, type ReadTextFile, configToYAML, defaultConfig, parseConfigText, writeConfigFile } from "../src/config/index.ts";

const SAMPLE = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
clusterCIDR: 10.244.0.0/16
mode: "ipvs"
hostnameOverride: from-file
logging:
  verbosity: 1
ipvs:
  minSyncPeriod: 10s
`;

/** A fake file system for resolveConfig: a missing path fails like the real one. */
function files(contents: Record<string, string>): ReadTextFile {
  return (path) => {
    const text = contents[path];
    if (text === undefined) throw Object.assign(new Error(`ENOENT: ${path}`), { code: "ENOENT" });
    return text;
  };
}

function cliErrorOf(argv: string[]): CliError {
  try {
    parseArgs(argv);
  } catch (err) {
    if (err instanceof CliError) return err;
    throw err;
  }
  throw new Error(`expected ${argv.join(" ")} to be rejected`);
}

describe("parseArgs", () => {
  test("no arguments: nothing set", () => {
    expect(parseArgs([])).toEqual({ cleanup: false, version: false, help: false, dryRun: false, demo: false });
  });

  test("--flag=value and --flag value", () => {
    const options = parseArgs([
      "--config=/etc/kproxy/config.yaml",
      "--kubeconfig",
      "/root/.kube/config",
      "--master=https://127.0.0.1:6443",
      "--hostname-override",
      "node-1",
      "--proxy-mode=userspace",
      "--cluster-cidr",
      "10.244.0.0/16,fd00:10:244::/56",
      "--metrics-bind-address=0.0.0.0:10249",
      "--healthz-bind-address",
      "[::]:10256",
      "--write-config-to=/tmp/out.yaml",
      "--services-file",
      "examples/services.yaml",
      "--v=3",
    ]);
    expect(options).toMatchObject({
      configFile: "/etc/kproxy/config.yaml",
      kubeconfig: "/root/.kube/config",
      master: "https://127.0.0.1:6443",
      hostnameOverride: "node-1",
      proxyMode: "userspace",
      clusterCIDR: "10.244.0.0/16,fd00:10:244::/56",
      metricsBindAddress: "0.0.0.0:10249",
      healthzBindAddress: "[::]:10256",
      writeConfigTo: "/tmp/out.yaml",
      servicesFile: "examples/services.yaml",
      verbosity: 3,
    });
  });

  test("booleans: bare, =true, =false, Go spellings", () => {
    expect(parseArgs(["--cleanup"]).cleanup).toBe(true);
    expect(parseArgs(["--cleanup=true"]).cleanup).toBe(true);
    expect(parseArgs(["--cleanup=false"]).cleanup).toBe(false);
    expect(parseArgs(["--dry-run=1", "--demo=T", "--version=0"])).toMatchObject({ dryRun: true, demo: true, version: false });
    expect(parseArgs(["--help"]).help).toBe(true);
    expect(parseArgs(["-h"]).help).toBe(true);
  });

  test("verbosity: --v, -v, -v=N; the last occurrence wins", () => {
    expect(parseArgs(["--v", "4"]).verbosity).toBe(4);
    expect(parseArgs(["-v", "2"]).verbosity).toBe(2);
    expect(parseArgs(["-v=5"]).verbosity).toBe(5);
    expect(parseArgs(["--v=1", "--v=6"]).verbosity).toBe(6);
  });

  test("an empty value is a value", () => {
    expect(parseArgs(["--proxy-mode="]).proxyMode).toBe("");
  });

  test("an unknown flag is named", () => {
    expect(cliErrorOf(["--cleanup", "--frobnicate=1"]).message).toBe("unknown flag: --frobnicate (see --help)");
    expect(cliErrorOf(["-x"]).message).toContain('unknown shorthand flag: "x"');
  });

  test("a kube-proxy flag kproxy reads from the file says where to put it", () => {
    expect(cliErrorOf(["--iptables-sync-period=10s"]).message).toBe(
      "unknown flag: --iptables-sync-period (kproxy takes this setting from the --config file: set iptables.syncPeriod there)",
    );
  });

  test("missing values, bad booleans, bad levels, stray arguments, conflicting sources", () => {
    expect(cliErrorOf(["--config"]).message).toBe("flag needs an argument: --config");
    expect(cliErrorOf(["--cleanup=maybe"]).message).toBe('invalid argument "maybe" for --cleanup: expected true or false');
    expect(cliErrorOf(["--v=high"]).message).toBe('invalid argument "high" for --v: expected a whole number of 0 or more');
    expect(cliErrorOf(["--v=-1"]).message).toContain("--v");
    expect(cliErrorOf(["--cleanup", "true"]).message).toBe('unexpected argument "true": kproxy takes flags only (see --help)');
    expect(cliErrorOf(["--demo", "--services-file=x.yaml"]).message).toContain("--demo and --services-file");
  });
});

describe("helpText", () => {
  test("one line per flag, kube-proxy style", () => {
    const text = helpText();
    const flagLines = text.split("\n").filter((l) => /^\s+(-\w, )?--[a-z-]+/.test(l));
    const names = flagLines.map((l) => /--([a-z-]+)/.exec(l)?.[1]);
    const expected = [
      "cleanup", "cluster-cidr", "config", "demo", "dry-run", "healthz-bind-address", "help", "hostname-override", "kubeconfig",
      "master", "metrics-bind-address", "proxy-mode", "services-file", "v", "version", "write-config-to",
    ];
    expect(names.sort()).toEqual(expected.sort());
    expect(text).toContain("Usage:\n  kproxy [flags]");
    expect(flagLines.find((l) => l.includes("--v "))).toContain("-v, --v Level");
    // Every documented flag is one the parser accepts.
    for (const name of expected) expect(() => parseArgs([`--${name}=1`])).not.toThrow(`unknown flag`);
  });
});

describe("applyFlags and resolveConfig", () => {
  test("explicit flags override the file; the rest of the file stays", () => {
    const { config, warnings } = resolveConfig(
      parseArgs([
        "--config=/etc/kproxy/config.yaml",
        "--proxy-mode=iptables",
        "--cluster-cidr=10.0.0.0/8",
        "--kubeconfig=/other/kubeconfig",
        "--hostname-override=node-7",
        "--metrics-bind-address=0.0.0.0",
        "--healthz-bind-address=127.0.0.1:0",
        "--v=4",
      ]),
      files({ "/etc/kproxy/config.yaml": SAMPLE }),
    );
    expect(warnings).toEqual([]);
    expect(config.mode).toBe("iptables");
    expect(config.clusterCIDR).toBe("10.0.0.0/8");
    expect(config.clientConnection.kubeconfig).toBe("/other/kubeconfig");
    expect(config.hostnameOverride).toBe("node-7");
    expect(config.metricsBindAddress).toBe("0.0.0.0:10249");
    expect(config.healthzBindAddress).toBe("127.0.0.1:0");
    expect(config.logging.verbosity).toBe(4);
    expect(config.ipvs.minSyncPeriod).toBe(10_000);
  });

  test("without flags the file wins, and without a file the defaults", () => {
    const fromFile = resolveConfig(parseArgs(["--config", "c.yaml"]), files({ "c.yaml": SAMPLE })).config;
    expect(fromFile).toEqual(parseConfigText(SAMPLE).config);
    expect(fromFile.hostnameOverride).toBe("from-file");
    expect(resolveConfig(parseArgs([]), files({})).config).toEqual(defaultConfig());
    const flagOnly = resolveConfig(parseArgs(["--proxy-mode", "userspace"]), files({})).config;
    expect(flagOnly).toEqual({ ...defaultConfig(), mode: "userspace" });
  });

  test("a bad flag value names the field, the value and the flag", () => {
    let caught: unknown;
    try {
      resolveConfig(parseArgs(["--proxy-mode=nftables", "--cluster-cidr=10.0.0.0/40"]), files({}));
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    const err = caught as ConfigError;
    expect(err.source).toBe("command line");
    expect(err.problems).toContain(
      'mode: "nftables" is not a valid proxy mode, expected one of "iptables", "ipvs", "userspace" or "" (meaning iptables) (set by --proxy-mode)',
    );
    expect(err.problems.find((p) => p.startsWith("clusterCIDR:"))).toStartWith('clusterCIDR: "10.0.0.0/40" is not a valid cluster CIDR');
    expect(err.problems.find((p) => p.startsWith("clusterCIDR:"))).toEndWith("(set by --cluster-cidr)");
    expect(applyFlags(defaultConfig(), parseArgs(["--cluster-cidr=fd00::/48"])).clusterCIDR).toBe("fd00::/48");
    expect(() => applyFlags(defaultConfig(), parseArgs(["--metrics-bind-address=0.0.0.0:70000"]))).toThrow(
      'metricsBindAddress: "0.0.0.0:70000" is not a valid address',
    );
  });

  test("a missing or broken file is a ConfigError; unknown fields come back as warnings", () => {
    expect(() => resolveConfig(parseArgs(["--config=/nope.yaml"]), files({}))).toThrow("/nope.yaml: cannot read the config file: no such file");
    expect(() => resolveConfig(parseArgs(["--config=b.yaml"]), files({ "b.yaml": "mode: [" }))).toThrow("YAML syntax error");
    const { warnings, config } = resolveConfig(parseArgs(["--config=w.yaml", "--v=2"]), files({ "w.yaml": `${SAMPLE}udpTimeout: 1s\n` }));
    expect(warnings).toEqual(["udpTimeout: unknown field, ignored"]);
    expect(config.logging.verbosity).toBe(2);
  });

  test("--write-config-to output loads back to the same effective configuration", () => {
    const dir = mkdtempSync(join(tmpdir(), "kproxy-cli-"));
    try {
      const first = resolveConfig(parseArgs(["--config=c.yaml", "--proxy-mode=userspace", "--v=3"]), files({ "c.yaml": SAMPLE })).config;
      const out = join(dir, "effective.yaml");
      writeConfigFile(out, first);
      const again = resolveConfig(parseArgs([`--config=${out}`]));
      expect(again.warnings).toEqual([]);
      expect(again.config).toEqual(first);
      expect(configToYAML(again.config)).toBe(configToYAML(first));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
