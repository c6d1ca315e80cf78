import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfigFile } from "../src/config/index.ts";
import { Child } from "./helpers/process.ts";

const MAIN = join(import.meta.dir, "..", "src", "main.ts");
const kproxy = (...args: string[]) => new Child([process.execPath, MAIN, ...args]);

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "kproxy-main-"));
}

describe("kproxy command line", () => {
  test("--version names kproxy, Bun and the target", async () => {
    const child = kproxy("--version");
    expect(await child.exited()).toBe(0);
    expect(child.stdout).toMatch(/^kproxy \S+ \(bun \d+\.\d+\.\d+, .+\)\n$/);
  });

  test("--help lists the operator flags", async () => {
    const child = kproxy("--help");
    expect(await child.exited()).toBe(0);
    for (const flag of ["--config", "--kubeconfig", "--master", "--proxy-mode", "--cleanup", "--write-config-to", "--dry-run", "--services-file"]) {
      expect(child.stdout).toContain(flag);
    }
  });

  test("an unknown flag exits 2 naming it", async () => {
    const child = kproxy("--no-such-flag");
    expect(await child.exited()).toBe(2);
    expect(child.stderr).toContain("--no-such-flag");
  });

  test("a bad configuration exits 1 within a second, one line per problem, no stack trace", async () => {
    const dir = tempDir();
    try {
      const path = join(dir, "bad.yaml");
      writeFileSync(
        path,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\niptables:\n  masqueradeBit: 40\n  syncPeriod: 30 seconds\n",
      );
      const started = Date.now();
      const child = kproxy("--config", path);
      expect(await child.exited()).toBe(1);
      expect(Date.now() - started).toBeLessThan(1000 + 500 /* process start on a loaded machine */);
      expect(child.stderr).toContain(`mode: "nftables" is not a valid proxy mode, expected one of "iptables", "ipvs", "userspace"`);
      expect(child.stderr).toContain("iptables.masqueradeBit: 40 is out of range, expected an integer from 0 to 31");
      expect(child.stderr).toContain(`iptables.syncPeriod: "30 seconds" is not a valid duration`);
      expect(child.stderr).not.toMatch(/^\s+at /m);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a missing config file and a YAML syntax error are reported with the file name", async () => {
    const dir = tempDir();
    try {
      const missing = kproxy("--config", join(dir, "nope.yaml"));
      expect(await missing.exited()).toBe(1);
      expect(missing.stderr).toContain("nope.yaml: cannot read the config file");
      const broken = join(dir, "broken.yaml");
      writeFileSync(broken, "kind: KubeProxyConfiguration\nmode: [ipvs\n");
      const child = kproxy("--config", broken);
      expect(await child.exited()).toBe(1);
      expect(child.stderr).toMatch(/broken\.yaml:\d+:\d+: YAML syntax error/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("--write-config-to writes the effective configuration, flags applied, that loads back", async () => {
    const dir = tempDir();
    try {
      const out = join(dir, "effective.yaml");
      const child = kproxy("--proxy-mode", "ipvs", "--cluster-cidr", "10.244.0.0/16", "--write-config-to", out);
      expect(await child.exited()).toBe(0);
      const { config } = loadConfigFile(out);
      expect(config.mode).toBe("ipvs");
      expect(config.clusterCIDR).toBe("10.244.0.0/16");
      expect(readFileSync(out, "utf8")).toContain("syncPeriod: 30s");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("--dry-run with a manifest prints the iptables-restore input and exits", async () => {
    const dir = tempDir();
    try {
      const manifest = join(dir, "services.yaml");
      writeFileSync(
        manifest,
        [
          "apiVersion: v1\nkind: Service\nmetadata: {namespace: ns1, name: svc1}\nspec:\n  clusterIP: 172.30.0.41\n  ports: [{name: p80, port: 80, protocol: TCP}]",
          "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {namespace: ns1, name: svc1-a, labels: {kubernetes.io/service-name: svc1}}\naddressType: IPv4\nports: [{name: p80, port: 80, protocol: TCP}]\nendpoints: [{addresses: [10.180.0.1]}]",
        ].join("\n---\n"),
      );
      const child = kproxy("--services-file", manifest, "--dry-run", "--hostname-override", "node1");
      expect(await child.exited()).toBe(0);
      expect(child.stdout).toContain("-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\"");
      expect(child.stdout).toContain(":KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]");
      expect(child.stdout).toContain(":KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("the demo serves /healthz and /metrics, and SIGTERM stops it with exit 0", async () => {
    const child = kproxy("--demo", "--healthz-bind-address", "127.0.0.1:0", "--metrics-bind-address", "127.0.0.1:0");
    try {
      const health = await child.waitFor(/"Serving" server="healthz" address="127\.0\.0\.1:0" port=(\d+)/);
      const metrics = await child.waitFor(/"Serving" server="metrics" address="127\.0\.0\.1:0" port=(\d+)/);
      // Both demo backends answer through the NodePort relay, and no kernel rule is written even as root.
      const answers = await child.waitFor(/answers: (.*)\n/);
      expect(answers[1]).toMatch(/backend-a [1-9]/);
      expect(answers[1]).toMatch(/backend-b [1-9]/);
      expect(child.stderr).toContain('reason="portal rules are off for this run"');
      const healthz = await fetch(`http://127.0.0.1:${health[1]}/healthz`);
      expect(healthz.status).toBe(200);
      expect(Object.keys((await healthz.json()) as object)).toEqual(["lastUpdated", "currentTime", "nodeEligible"]);
      const text = await (await fetch(`http://127.0.0.1:${metrics[1]}/metrics`)).text();
      expect(text).toMatch(/^kubeproxy_sync_proxy_rules_last_timestamp_seconds [1-9]/m);
      expect(text).toMatch(/^kproxy_userspace_connections_total\{protocol="TCP"\} 10$/m);
      expect(await (await fetch(`http://127.0.0.1:${metrics[1]}/proxyMode`)).text()).toBe("userspace");
      child.kill("SIGTERM");
      expect(await child.exited()).toBe(0);
    } finally {
      child.kill("SIGKILL");
    }
  });
});
