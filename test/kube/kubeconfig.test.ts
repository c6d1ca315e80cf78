import { describe, expect, test } from "bun:test";
import { stringify } from "yaml";
import { inClusterConfig, KubeconfigError, loadRestConfig, parseKubeconfig, type RestConfig } from "../../src/kube/kubeconfig.ts";
import { memoryLogger } from "../../src/log.ts";
import { FakeClock } from "../helpers/fake-clock.ts";
import { b64, FakeFiles } from "./fakes.ts";

const CA = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n";
const CERT = "-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n";
const KEY = "-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n";

function kubeconfig(cluster: Record<string, unknown>, user: Record<string, unknown>, extra: Record<string, unknown> = {}): string {
  return stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [
      { name: "other", cluster: { server: "https://other.example:6443" } },
      { name: "main", cluster },
    ],
    users: [
      { name: "nobody", user: {} },
      { name: "proxy", user },
    ],
    contexts: [
      { name: "ctx-other", context: { cluster: "other", user: "nobody" } },
      { name: "ctx", context: { cluster: "main", user: "proxy", namespace: "kube-system" } },
    ],
    "current-context": "ctx",
    ...extra,
  });
}

async function load(text: string, files = new FakeFiles(), extra: { masterUrl?: string } = {}): Promise<RestConfig> {
  files.set("/etc/kproxy/kubeconfig", text);
  return loadRestConfig({ kubeconfigPath: "/etc/kproxy/kubeconfig", files, clock: new FakeClock(), ...extra });
}

async function loadError(text: string, files = new FakeFiles()): Promise<string> {
  try {
    await load(text, files);
  } catch (err) {
    expect(err).toBeInstanceOf(KubeconfigError);
    return (err as Error).message;
  }
  throw new Error("expected the kubeconfig to be rejected");
}

describe("kubeconfig", () => {
  test("uses the current context's cluster and user (token)", async () => {
    const cfg = await load(kubeconfig({ server: "https://10.0.0.1:6443/", "certificate-authority-data": b64(CA) }, { token: "tok-123" }));
    expect(cfg.server).toBe("https://10.0.0.1:6443");
    expect(cfg.tls).toEqual({ ca: CA, cert: undefined, key: undefined, insecureSkipVerify: false, serverName: undefined });
    expect(cfg.auth.kind).toBe("token");
    if (cfg.auth.kind === "token") expect(await cfg.auth.token.token()).toBe("tok-123");
    expect(cfg.namespace).toBe("kube-system");
    expect(cfg.origin).toContain("context ctx");
  });

  test("CA and client certificate from files, relative paths resolved against the kubeconfig's directory", async () => {
    const files = new FakeFiles().set("/etc/kproxy/pki/ca.crt", CA).set("/etc/kproxy/client.crt", CERT).set("/abs/client.key", KEY);
    const cfg = await load(
      kubeconfig(
        { server: "https://api:6443", "certificate-authority": "pki/ca.crt", "tls-server-name": "kubernetes.default" },
        { "client-certificate": "./client.crt", "client-key": "/abs/client.key" },
      ),
      files,
    );
    expect(cfg.tls).toEqual({ ca: CA, cert: CERT, key: KEY, insecureSkipVerify: false, serverName: "kubernetes.default" });
    expect(cfg.auth).toEqual({ kind: "none" });
  });

  test("inline client certificate data wins over file references", async () => {
    const cfg = await load(
      kubeconfig(
        { server: "https://api:6443", "certificate-authority-data": b64(CA), "certificate-authority": "missing.crt" },
        { "client-certificate-data": b64(CERT), "client-key-data": b64(KEY), "client-certificate": "missing", "client-key": "missing" },
      ),
    );
    expect(cfg.tls.cert).toBe(CERT);
    expect(cfg.tls.key).toBe(KEY);
    expect(cfg.tls.ca).toBe(CA);
  });

  test("basic auth", async () => {
    const cfg = await load(kubeconfig({ server: "https://api:6443" }, { username: "admin", password: "s3cret" }));
    expect(cfg.auth).toEqual({ kind: "basic", username: "admin", password: "s3cret" });
  });

  test("insecure-skip-tls-verify", async () => {
    const cfg = await load(kubeconfig({ server: "https://api:6443", "insecure-skip-tls-verify": true }, { token: "t" }));
    expect(cfg.tls.insecureSkipVerify).toBe(true);
    expect(await loadError(kubeconfig({ server: "https://api:6443", "insecure-skip-tls-verify": true, "certificate-authority-data": b64(CA) }, {}))).toContain(
      "insecure-skip-tls-verify cannot be combined",
    );
  });

  test("tokenFile is read relative to the kubeconfig and re-read after the refresh period", async () => {
    const clock = new FakeClock();
    const files = new FakeFiles().set("/etc/kproxy/token", "first\n");
    files.set("/etc/kproxy/kubeconfig", kubeconfig({ server: "https://api:6443" }, { tokenFile: "token" }));
    const cfg = await loadRestConfig({ kubeconfigPath: "/etc/kproxy/kubeconfig", files, clock, tokenRefreshMs: 60_000 });
    if (cfg.auth.kind !== "token") throw new Error("expected token auth");
    expect(await cfg.auth.token.token()).toBe("first");
    files.set("/etc/kproxy/token", "second");
    await clock.advance(59_000);
    expect(await cfg.auth.token.token()).toBe("first");
    await clock.advance(1_000);
    expect(await cfg.auth.token.token()).toBe("second");
  });

  test("a token wins over a tokenFile", async () => {
    const cfg = await load(kubeconfig({ server: "https://api:6443" }, { token: "inline", tokenFile: "/nonexistent" }));
    if (cfg.auth.kind !== "token") throw new Error("expected token auth");
    expect(await cfg.auth.token.token()).toBe("inline");
  });

  test("--master overrides the cluster's server; --master alone means no credentials", async () => {
    const cfg = await load(kubeconfig({ server: "https://api:6443", "certificate-authority-data": b64(CA) }, { token: "t" }), new FakeFiles(), {
      masterUrl: "https://override:7443",
    });
    expect(cfg.server).toBe("https://override:7443");
    expect(cfg.tls.ca).toBe(CA);
    const bare = await loadRestConfig({ masterUrl: "http://127.0.0.1:8080", files: new FakeFiles() });
    expect(bare.server).toBe("http://127.0.0.1:8080");
    expect(bare.auth).toEqual({ kind: "none" });
  });

  test("unsupported authentication is named in the error", async () => {
    expect(await loadError(kubeconfig({ server: "https://api:6443" }, { exec: { apiVersion: "client.authentication.k8s.io/v1", command: "aws" } }))).toMatch(
      /exec credential plugin \(command "aws"\) is not supported/,
    );
    expect(await loadError(kubeconfig({ server: "https://api:6443" }, { "auth-provider": { name: "oidc", config: {} } }))).toMatch(
      /auth-provider "oidc" is not supported/,
    );
    expect(await loadError(kubeconfig({ server: "https://api:6443" }, { token: "t", as: "someone" }))).toContain("impersonation");
    expect(await loadError(kubeconfig({ server: "https://api:6443", "proxy-url": "http://proxy:3128" }, {}))).toContain("proxy-url is not supported");
  });

  test("inconsistent or incomplete configurations are rejected with a reason", async () => {
    expect(await loadError(kubeconfig({ server: "https://api:6443" }, { "client-certificate-data": b64(CERT) }))).toContain(
      "client-certificate is set without client-key",
    );
    expect(await loadError(kubeconfig({ server: "https://api:6443" }, { token: "t", username: "u", password: "p" }))).toContain("only one is allowed");
    expect(await loadError(kubeconfig({}, { token: "t" }))).toContain("has no server");
    expect(await loadError(kubeconfig({ server: "ftp://x" }, {}))).toContain("must be an http or https URL");
    expect(await loadError(kubeconfig({ server: "https://api" }, {}, { "current-context": "nope" }))).toContain('current-context "nope" names no context');
    expect(await loadError(kubeconfig({ server: "https://api" }, {}, { "current-context": "" }))).toContain("no current-context");
    expect(await loadError(kubeconfig({ server: "https://api", "certificate-authority": "missing.crt" }, {}))).toContain(
      "cannot read certificate-authority /etc/kproxy/missing.crt",
    );
    expect(await loadError("clusters: 7\n")).toContain("invalid kubeconfig at clusters");
    expect(await loadError("a: [\n")).toContain("not valid YAML");
    await expect(loadRestConfig({ kubeconfigPath: "/missing", files: new FakeFiles() })).rejects.toThrow("cannot read kubeconfig /missing");
  });

  test("parseKubeconfig accepts JSON and empty lists", () => {
    const parsed = parseKubeconfig(JSON.stringify({ "current-context": "x", clusters: null }));
    expect(parsed.clusters).toEqual([]);
    expect(parsed["current-context"]).toBe("x");
  });

  test("error messages never contain the token", async () => {
    const msg = await loadError(kubeconfig({ server: "https://api:6443" }, { token: "super-secret-token", username: "u" }));
    expect(msg).not.toContain("super-secret-token");
  });
});

describe("in-cluster configuration", () => {
  const paths = { token: "/sa/token", ca: "/sa/ca.crt", namespace: "/sa/namespace" };

  test("service host and port, token and CA from the service account", async () => {
    const files = new FakeFiles().set("/sa/token", "sa-token\n").set("/sa/ca.crt", CA).set("/sa/namespace", "kube-system");
    const cfg = await inClusterConfig({ env: { KUBERNETES_SERVICE_HOST: "10.96.0.1", KUBERNETES_SERVICE_PORT: "443" }, files, inClusterPaths: paths, clock: new FakeClock() });
    expect(cfg.server).toBe("https://10.96.0.1:443");
    expect(cfg.tls.ca).toBe(CA);
    expect(cfg.namespace).toBe("kube-system");
    expect(cfg.origin).toBe("in-cluster");
    if (cfg.auth.kind !== "token") throw new Error("expected token auth");
    expect(await cfg.auth.token.token()).toBe("sa-token");
  });

  test("chosen when neither kubeconfig nor master is given; IPv6 host is bracketed", async () => {
    const files = new FakeFiles().set("/sa/token", "t").set("/sa/ca.crt", CA);
    const cfg = await loadRestConfig({ env: { KUBERNETES_SERVICE_HOST: "fd00::1", KUBERNETES_SERVICE_PORT: "6443" }, files, inClusterPaths: paths, clock: new FakeClock() });
    expect(cfg.server).toBe("https://[fd00::1]:6443");
    expect(cfg.namespace).toBeUndefined();
  });

  test("the rotating token is re-read periodically; a failed re-read keeps the last good token", async () => {
    const clock = new FakeClock();
    const logger = memoryLogger();
    const files = new FakeFiles().set("/sa/token", "v1").set("/sa/ca.crt", CA);
    const cfg = await inClusterConfig({
      env: { KUBERNETES_SERVICE_HOST: "10.96.0.1", KUBERNETES_SERVICE_PORT: "443" },
      files,
      inClusterPaths: paths,
      clock,
      logger,
      tokenRefreshMs: 60_000,
    });
    if (cfg.auth.kind !== "token") throw new Error("expected token auth");
    const tokenReads = () => files.reads.filter((p) => p === "/sa/token").length;
    const before = tokenReads();
    await cfg.auth.token.token();
    expect(tokenReads()).toBe(before);
    files.set("/sa/token", "v2");
    await clock.advance(60_000);
    expect(await cfg.auth.token.token()).toBe("v2");
    expect(tokenReads()).toBe(before + 1);
    files.remove("/sa/token");
    await clock.advance(60_000);
    expect(await cfg.auth.token.token()).toBe("v2");
    expect(logger.lines.join("\n")).toContain("keeping the previous token");
    expect(logger.lines.join("\n")).not.toContain("v2\"");
  });

  test("outside a cluster the error says what is missing", async () => {
    await expect(loadRestConfig({ env: {}, files: new FakeFiles() })).rejects.toThrow(/KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT/);
    await expect(inClusterConfig({ env: { KUBERNETES_SERVICE_HOST: "h", KUBERNETES_SERVICE_PORT: "1" }, files: new FakeFiles(), inClusterPaths: paths })).rejects.toThrow(
      "cannot read service account token /sa/token",
    );
  });

  test("a missing CA falls back to system roots with a warning", async () => {
    const logger = memoryLogger();
    const files = new FakeFiles().set("/sa/token", "t");
    const cfg = await inClusterConfig({ env: { KUBERNETES_SERVICE_HOST: "h", KUBERNETES_SERVICE_PORT: "1" }, files, inClusterPaths: paths, logger, clock: new FakeClock() });
    expect(cfg.tls.ca).toBeUndefined();
    expect(logger.lines.some((l) => l.includes("Cannot read the in-cluster CA"))).toBe(true);
  });
});
