import { describe, expect, test } from "bun:test";
import { KubeClient, userAgent } from "../../src/kube/client.ts";
import { ApiError, NetworkError } from "../../src/kube/errors.ts";
import type { RestConfig } from "../../src/kube/kubeconfig.ts";
import { staticToken } from "../../src/kube/token.ts";
import { memoryLogger } from "../../src/log.ts";
import { version } from "../../src/version.ts";
import { FakeClock } from "../helpers/fake-clock.ts";
import { json, ScriptedFetch, status, WatchStream } from "./scripted-fetch.ts";

const tokenConfig: RestConfig = {
  server: "https://api.test:6443",
  tls: { ca: "CA-PEM", cert: "CERT-PEM", key: "KEY-PEM", insecureSkipVerify: false, serverName: "kubernetes" },
  auth: { kind: "token", token: staticToken("secret-token") },
  origin: "test",
};

function client(fetch: ScriptedFetch, config: RestConfig = tokenConfig, extra: Partial<ConstructorParameters<typeof KubeClient>[0]> = {}) {
  return new KubeClient({ config, fetch: fetch.fetch, clock: new FakeClock(), qps: 0, ...extra });
}

describe("KubeClient", () => {
  test("sends JSON accept, user agent, bearer token and TLS settings; parses JSON", async () => {
    const f = new ScriptedFetch().reply(json(200, { kind: "ServiceList", items: [] }));
    const body = await client(f).get("/api/v1/services", { query: { labelSelector: "!a,!b", limit: 500, continue: undefined } });
    expect(body).toEqual({ kind: "ServiceList", items: [] });
    const req = f.requests[0]!;
    expect(req.url.toString()).toBe("https://api.test:6443/api/v1/services?labelSelector=%21a%2C%21b&limit=500");
    expect(req.headers.get("accept")).toBe("application/json");
    expect(req.headers.get("user-agent")).toBe(`kproxy/${version}`);
    expect(userAgent).toBe(`kproxy/${version}`);
    expect(req.headers.get("authorization")).toBe("Bearer secret-token");
    expect(req.init.tls).toEqual({ ca: "CA-PEM", cert: "CERT-PEM", key: "KEY-PEM", rejectUnauthorized: true, serverName: "kubernetes" });
  });

  test("basic auth, no TLS options for plain http, JSON request body on POST", async () => {
    const f = new ScriptedFetch().reply(json(201, { ok: true }));
    const c = client(f, { server: "http://127.0.0.1:8080", tls: { insecureSkipVerify: false }, auth: { kind: "basic", username: "u", password: "p" }, origin: "t" });
    await c.post("/apis/events.k8s.io/v1/namespaces/default/events", { a: 1 });
    const req = f.requests[0]!;
    expect(req.headers.get("authorization")).toBe(`Basic ${Buffer.from("u:p").toString("base64")}`);
    expect(req.init.tls).toBeUndefined();
    expect(req.method).toBe("POST");
    expect(req.headers.get("content-type")).toBe("application/json");
    expect(JSON.parse(req.body ?? "")).toEqual({ a: 1 });
  });

  test("an error response becomes an ApiError with status and Status reason", async () => {
    const f = new ScriptedFetch().reply(status(403, "Forbidden", 'services is forbidden: User "x" cannot list'), new Response("oops", { status: 502 }));
    const c = client(f);
    const err = await c.get("/api/v1/services").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ status: 403, reason: "Forbidden", message: 'services is forbidden: User "x" cannot list' });
    expect((err as ApiError).retriable).toBe(false);
    const plain = await c.get("/api/v1/nodes").catch((e: unknown) => e);
    expect(plain).toMatchObject({ status: 502, reason: "Unknown" });
    expect((plain as ApiError).retriable).toBe(true);
  });

  test("a fetch failure is a NetworkError that does not leak the token", async () => {
    const f = new ScriptedFetch().reply(Object.assign(new Error("Unable to connect"), { code: "ConnectionRefused" }));
    const err = await client(f).get("/api/v1/services").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NetworkError);
    expect((err as Error).message).toContain("ConnectionRefused");
    expect((err as Error).message).not.toContain("secret-token");
  });

  test("requests time out on the clock", async () => {
    const clock = new FakeClock();
    const f = new ScriptedFetch(); // never answers
    const c = new KubeClient({ config: tokenConfig, fetch: f.fetch, clock, qps: 0, requestTimeoutMs: 5000 });
    const pending = c.get("/api/v1/services").catch((e: unknown) => e);
    await f.waitForRequests(1);
    await clock.advance(5000);
    const err = await pending;
    expect(err).toBeInstanceOf(NetworkError);
    expect((err as Error).message).toContain("timed out after 5000 ms");
  });

  test("requests wait for the rate limiter", async () => {
    const clock = new FakeClock();
    const f = new ScriptedFetch().reply(json(200, {}), json(200, {}), json(200, {}));
    const c = new KubeClient({ config: tokenConfig, fetch: f.fetch, clock, qps: 1, burst: 2 });
    const all = Promise.all([c.get("/a"), c.get("/b"), c.get("/c")]);
    await f.waitForRequests(2);
    await new Promise((r) => setTimeout(r, 20));
    expect(f.requests.length).toBe(2);
    await clock.advance(1000);
    await all;
    expect(f.requests.length).toBe(3);
  });

  test("watch yields events across chunk boundaries and ends with the stream", async () => {
    const stream = new WatchStream([
      { type: "ADDED", object: { metadata: { name: "a" } } },
      { type: "BOOKMARK", object: { metadata: { resourceVersion: "9" } } },
    ], { close: true });
    const f = new ScriptedFetch().reply(stream.response);
    const events = [];
    for await (const e of client(f).watch("/api/v1/services", { query: { resourceVersion: "5" }, idleTimeoutMs: 60_000 })) events.push(e);
    expect(events.map((e) => e.type)).toEqual(["ADDED", "BOOKMARK"]);
    expect(f.requests[0]!.url.searchParams.get("watch")).toBe("true");
    expect(f.requests[0]!.url.searchParams.get("resourceVersion")).toBe("5");
  });

  test("a watch that goes quiet is abandoned after the idle timeout", async () => {
    const clock = new FakeClock();
    const stream = new WatchStream([{ type: "ADDED", object: { metadata: { name: "a" } } }]);
    const f = new ScriptedFetch().reply(stream.response);
    const c = new KubeClient({ config: tokenConfig, fetch: f.fetch, clock, qps: 0 });
    const seen: string[] = [];
    const done = (async () => {
      for await (const e of c.watch("/x", { idleTimeoutMs: 10_000 })) seen.push(e.type);
    })().catch((e: unknown) => e);
    await clock.waitForSleepers(1);
    await clock.advance(10_000);
    const err = await done;
    expect(seen).toEqual(["ADDED"]);
    expect(err).toBeInstanceOf(NetworkError);
    expect((err as Error).message).toContain("no data for 10000 ms");
  });

  test("a refused watch throws ApiError; a broken stream throws NetworkError; abort ends quietly", async () => {
    const broken = new WatchStream([{ type: "ADDED", object: { metadata: { name: "a" } } }]);
    const f = new ScriptedFetch().reply(status(410, "Expired", "too old resource version"), broken.response);
    const c = client(f);
    const gone = await (async () => {
      for await (const _ of c.watch("/x", { idleTimeoutMs: 60_000 })) void _;
    })().catch((e: unknown) => e);
    expect(gone).toMatchObject({ status: 410, reason: "Expired" });
    expect((gone as ApiError).gone).toBe(true);

    const it = c.watch("/x", { idleTimeoutMs: 60_000 });
    expect((await it.next()).value?.type).toBe("ADDED");
    broken.fail();
    expect(await it.next().catch((e: unknown) => e)).toBeInstanceOf(NetworkError);

    const ac = new AbortController();
    const open = new WatchStream([]);
    f.reply(open.response);
    const quiet = (async () => {
      for await (const _ of c.watch("/x", { idleTimeoutMs: 60_000, signal: ac.signal })) void _;
      return "ended";
    })();
    await f.waitForRequests(3);
    ac.abort();
    expect(await quiet).toBe("ended");
  });

  test("debug logging shows method and URL but never the token", async () => {
    const logger = memoryLogger(10);
    const f = new ScriptedFetch().reply(json(200, {}));
    await new KubeClient({ config: tokenConfig, fetch: f.fetch, clock: new FakeClock(), qps: 0, logger }).get("/api/v1/nodes");
    expect(logger.lines.length).toBeGreaterThan(0);
    expect(logger.lines.join("\n")).toContain("/api/v1/nodes");
    expect(logger.lines.join("\n")).not.toContain("secret-token");
  });
});

describe("connect", () => {
  test("builds a client from flags, notes an unsupported content type, and logs no secret", async () => {
    const { connect } = await import("../../src/kube/connect.ts");
    const { FakeFiles } = await import("./fakes.ts");
    const logger = memoryLogger(0);
    const files = new FakeFiles().set(
      "/k/config",
      "current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\nclusters: [{name: k, cluster: {server: 'https://api:6443'}}]\nusers: [{name: u, user: {token: very-secret}}]\n",
    );
    const f = new ScriptedFetch().reply(json(200, { ok: 1 }));
    const c = await connect({ kubeconfigPath: "/k/config", contentType: "application/vnd.kubernetes.protobuf", qps: 0, files, fetch: f.fetch, logger, clock: new FakeClock() });
    expect(await c.get("/version")).toEqual({ ok: 1 });
    expect(f.requests[0]!.headers.get("authorization")).toBe("Bearer very-secret");
    const text = logger.lines.join("\n");
    expect(text).toContain("always uses JSON");
    expect(text).toContain("https://api:6443");
    expect(text).not.toContain("very-secret");
  });
});
