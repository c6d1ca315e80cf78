/** The client against the fake API server over real TLS: CA verification and each kind of credential. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KubeClient } from "../../src/kube/client.ts";
import { ApiError, NetworkError } from "../../src/kube/errors.ts";
import { loadRestConfig, type RestConfig } from "../../src/kube/kubeconfig.ts";
import { staticToken } from "../../src/kube/token.ts";
import { version } from "../../src/version.ts";
import { FakeApiServer, type KubeconfigOptions } from "../fixtures/apiserver.ts";

let server: FakeApiServer;
let dir: string;

beforeAll(async () => {
  server = await FakeApiServer.start({ tls: true, clientCertAuth: true });
  dir = await mkdtemp(join(tmpdir(), "kproxy-kubeconfig-"));
});

afterAll(async () => {
  await server?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function clientFor(opts: KubeconfigOptions): Promise<KubeClient> {
  const path = join(dir, `kubeconfig-${Object.values(opts).join("-")}`);
  await writeFile(path, server.kubeconfigYAML(opts));
  return new KubeClient({ config: await loadRestConfig({ kubeconfigPath: path }), qps: 0 });
}

function lastRequest() {
  const r = server.requests.at(-1);
  if (!r) throw new Error("no request recorded");
  return r;
}

describe("client over TLS against the fake API server", () => {
  for (const opts of [
    { auth: "token" },
    { auth: "tokenFile" },
    { auth: "clientCert" },
    { auth: "clientCert", inline: true },
    { auth: "token", inline: true },
  ] as KubeconfigOptions[]) {
    test(`authenticates with ${JSON.stringify(opts)}`, async () => {
      const client = await clientFor(opts);
      server.create("services", { metadata: { name: `svc-${server.requests.length}`, namespace: "default" }, spec: { clusterIP: "10.0.0.1" } });
      const body = (await client.get("/api/v1/services")) as { items: unknown[] };
      expect(body.items.length).toBeGreaterThan(0);
      const req = lastRequest();
      expect(req.userAgent).toBe(`kproxy/${version}`);
      expect(req.headers.get("accept")).toBe("application/json");
      if (opts.auth === "clientCert") {
        expect(req.clientCertVerified).toBe(true);
        expect(req.headers.get("authorization")).toBeNull();
      } else {
        expect(req.headers.get("authorization")).toBe(`Bearer ${server.token}`);
      }
    });
  }

  test("insecure-skip-tls-verify connects without a CA", async () => {
    const client = await clientFor({ auth: "token", insecure: true });
    expect(await client.get("/api/v1/nodes")).toMatchObject({ kind: "NodeList" });
  });

  test("verification is on by default: an unknown CA is a network error", async () => {
    const config: RestConfig = { server: server.url, tls: { insecureSkipVerify: false }, auth: { kind: "token", token: staticToken(server.token) }, origin: "t" };
    const err = await new KubeClient({ config, qps: 0 }).get("/api/v1/nodes").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NetworkError);
  });

  test("a wrong token is a 401 ApiError with the Status reason", async () => {
    const config: RestConfig = { server: server.url, tls: { ca: server.caPem, insecureSkipVerify: false }, auth: { kind: "token", token: staticToken("wrong") }, origin: "t" };
    const err = await new KubeClient({ config, qps: 0 }).get("/api/v1/nodes").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ status: 401, reason: "Unauthorized" });
  });

  test("a client certificate from another CA does not authenticate", async () => {
    const config: RestConfig = {
      server: server.url,
      tls: { ca: server.caPem, cert: server.foreignCertPem, key: server.foreignKeyPem, insecureSkipVerify: false },
      auth: { kind: "none" },
      origin: "t",
    };
    const err = await new KubeClient({ config, qps: 0 }).get("/api/v1/nodes").catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 401 });
  });
});
