/**
 * ApiSource against the fake API server: it follows a scripted history through updates, deletes, a
 * compaction with a forced 410, an outage and a restart, and ends with exactly the server's objects.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { KubeClient, realFetch, type FetchLike } from "../../src/kube/client.ts";
import { staticToken } from "../../src/kube/token.ts";
import type { RestConfig } from "../../src/kube/kubeconfig.ts";
import { memoryLogger } from "../../src/log.ts";
import { ApiSource, microTime, proxyLabelSelector, startingEvent } from "../../src/source/api.ts";
import type { ObjectKind, SourceEvent } from "../../src/source/types.ts";
import { version } from "../../src/version.ts";
import { FakeApiServer, type Resource } from "../fixtures/apiserver.ts";

const NODE = "node-a";
const fastBackoff = { initialMs: 10, factor: 2, capMs: 100, jitter: 0.5, resetAfterMs: 1000 };

interface Mirror {
  readonly objects: Map<ObjectKind, Map<string, unknown>>;
  synced: number;
  readonly events: SourceEvent[];
}

function mirror(): Mirror & { onEvent: (e: SourceEvent) => void } {
  const m: Mirror = { objects: new Map([["Service", new Map()], ["EndpointSlice", new Map()], ["Node", new Map()]]), synced: 0, events: [] };
  return Object.assign(m, {
    onEvent(e: SourceEvent) {
      m.events.push(e);
      if (e.type === "synced") {
        m.synced++;
        return;
      }
      const meta = (e.object as { metadata: { namespace?: string; name: string } }).metadata;
      const key = meta.namespace ? `${meta.namespace}/${meta.name}` : meta.name;
      if (e.type === "upsert") m.objects.get(e.kind)!.set(key, e.object);
      else m.objects.get(e.kind)!.delete(key);
    },
  });
}

/** key → resourceVersion for what the source reported. */
function versions(m: Mirror, kind: ObjectKind): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, obj] of m.objects.get(kind)!) out[key] = (obj as { metadata: { resourceVersion: string } }).metadata.resourceVersion;
  return out;
}

/** key → resourceVersion for what the server holds and kproxy should see. */
function expected(server: FakeApiServer, resource: Resource): Record<string, string> {
  const out: Record<string, string> = {};
  for (const obj of server.list(resource)) {
    const labels: Record<string, string> = obj.metadata.labels ?? {};
    if (resource !== "nodes" && ("service.kubernetes.io/service-proxy-name" in labels || "service.kubernetes.io/headless" in labels)) continue;
    if (resource === "nodes" && obj.metadata.name !== NODE) continue;
    out[obj.metadata.namespace ? `${obj.metadata.namespace}/${obj.metadata.name}` : obj.metadata.name] = obj.metadata.resourceVersion;
  }
  return out;
}

async function until(cond: () => boolean, what: () => string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting: ${what()}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const same = (a: Record<string, string>, b: Record<string, string>) =>
  JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());

function inAgreement(m: Mirror, server: FakeApiServer): boolean {
  return (
    same(versions(m, "Service"), expected(server, "services")) &&
    same(versions(m, "EndpointSlice"), expected(server, "endpointslices")) &&
    same(versions(m, "Node"), expected(server, "nodes"))
  );
}

async function converge(m: Mirror, server: FakeApiServer, step: string): Promise<void> {
  await until(
    () => inAgreement(m, server),
    () =>
      `${step}: source ${JSON.stringify({ s: versions(m, "Service"), e: versions(m, "EndpointSlice"), n: versions(m, "Node") })} server ${JSON.stringify({
        s: expected(server, "services"),
        e: expected(server, "endpointslices"),
        n: expected(server, "nodes"),
      })}`,
  );
}

const svc = (name: string, labels: Record<string, string> = {}, port = 80) => ({
  metadata: { name, namespace: "default", labels },
  spec: { clusterIP: "10.0.0.10", ports: [{ port, protocol: "TCP" }] },
});
const slice = (name: string, service: string, ip: string, labels: Record<string, string> = {}) => ({
  metadata: { name, namespace: "default", labels: { "kubernetes.io/service-name": service, ...labels } },
  addressType: "IPv4",
  endpoints: [{ addresses: [ip], conditions: { ready: true } }],
  ports: [{ port: 8080, protocol: "TCP" }],
});
const node = (name: string, zone: string) => ({ metadata: { name, labels: { "topology.kubernetes.io/zone": zone } }, spec: { podCIDR: "10.244.0.0/24" } });

let cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function startSource(
  server: FakeApiServer,
  extra: { pageSize?: number; fetch?: FetchLike; collectGarbage?: () => void; listGarbageEvery?: number } = {},
) {
  const config: RestConfig = { server: server.url, tls: { ca: server.caPem, insecureSkipVerify: false }, auth: { kind: "token", token: staticToken(server.token) }, origin: "test" };
  const logger = memoryLogger(4);
  const client = new KubeClient({ config, qps: 0, logger, ...(extra.fetch ? { fetch: extra.fetch } : {}) });
  const source = new ApiSource({
    client,
    nodeName: NODE,
    logger,
    hostname: "host-a",
    reflector: { backoff: fastBackoff, pageSize: extra.pageSize ?? 3 },
    ...(extra.collectGarbage ? { collectGarbage: extra.collectGarbage } : {}),
    ...(extra.listGarbageEvery !== undefined ? { listGarbageEvery: extra.listGarbageEvery } : {}),
  });
  const m = mirror();
  const ac = new AbortController();
  const done = source.start(m.onEvent, ac.signal);
  cleanup.push(async () => {
    ac.abort();
    await done;
  });
  return { m, logger };
}

describe("ApiSource", () => {
  test("follows a scripted history through compaction, 410, an outage and a restart", async () => {
    const server = await FakeApiServer.start({ bookmarkIntervalMs: 50 });
    cleanup.push(() => server.stop());
    for (let i = 0; i < 7; i++) server.create("services", svc(`s${i}`));
    server.create("services", svc("other-proxy", { "service.kubernetes.io/service-proxy-name": "foo" }));
    for (let i = 0; i < 7; i++) server.create("endpointslices", slice(`s${i}-abc`, `s${i}`, `10.1.0.${i + 1}`));
    server.create("endpointslices", slice("headless-xyz", "headless", "10.1.9.9", { "service.kubernetes.io/headless": "" }));
    server.create("nodes", node(NODE, "zone-a"));
    server.create("nodes", node("node-b", "zone-b"));

    const { m } = await startSource(server);
    await until(() => m.synced === 1, () => "synced");
    // synced comes after every listed service and slice.
    const syncedAt = m.events.findIndex((e) => e.type === "synced");
    expect(m.events.slice(0, syncedAt).filter((e) => e.type === "upsert" && e.kind !== "Node").length).toBe(14);
    await converge(m, server, "initial list");
    expect(Object.keys(versions(m, "Service"))).not.toContain("default/other-proxy");
    expect(Object.keys(versions(m, "EndpointSlice"))).not.toContain("default/headless-xyz");
    expect(Object.keys(versions(m, "Node"))).toEqual([NODE]);
    await server.waitForWatches(3);

    // Ordinary changes over the watch.
    server.update("services", svc("s1", {}, 81));
    server.delete("services", "default", "s2");
    server.delete("endpointslices", "default", "s2-abc");
    server.create("endpointslices", slice("s1-def", "s1", "10.1.1.2"));
    server.update("nodes", node(NODE, "zone-c"));
    server.update("nodes", node("node-b", "zone-c"));
    // A service that another proxy takes over disappears for us.
    server.update("services", svc("s3", { "service.kubernetes.io/service-proxy-name": "foo" }));
    await converge(m, server, "watch events");

    // Changes while the server is down, then a compaction: the re-watch gets 410 and the re-list must
    // find the deletions it never saw as events.
    await server.setDown(true);
    await new Promise((r) => setTimeout(r, 30));
    server.delete("services", "default", "s4");
    server.delete("endpointslices", "default", "s4-abc");
    server.update("services", svc("s5", {}, 85));
    server.create("services", svc("s9"));
    server.compact();
    const before = server.requests.length;
    await server.setDown(false);
    await converge(m, server, "after outage and compaction");
    const after = server.requests.slice(before);
    expect(after.some((r) => r.query.get("watch") !== "true" && r.path === "/api/v1/services")).toBe(true);

    // A forced HTTP 410 on the next watch request, after the server closes the watches.
    server.failNext(1, 410);
    server.closeWatches();
    server.create("endpointslices", slice("s9-aaa", "s9", "10.1.9.1"));
    await converge(m, server, "forced 410");

    // A restart drops every connection; objects and history survive.
    await server.restart();
    server.update("endpointslices", slice("s9-aaa", "s9", "10.1.9.2"));
    server.delete("services", "default", "s6");
    await converge(m, server, "after restart");
    await server.waitForWatches(3);
    server.create("services", svc("late"));
    await converge(m, server, "after re-watch");
    expect(m.synced).toBe(1);
  }, 15_000);

  test("requests carry the selectors and user agent; the Starting event is posted", async () => {
    const server = await FakeApiServer.start({});
    cleanup.push(() => server.stop());
    server.create("nodes", node(NODE, "zone-a"));
    const { m } = await startSource(server);
    await until(() => m.synced === 1, () => "synced");
    await until(() => server.list("events").length === 1, () => "event");
    await server.waitForWatches(3);
    const byPath = (path: string) => server.requests.filter((r) => r.path === path);
    for (const path of ["/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices"]) {
      const reqs = byPath(path);
      expect(reqs.length).toBeGreaterThanOrEqual(2);
      for (const r of reqs) expect(r.query.get("labelSelector")).toBe(proxyLabelSelector);
      expect(reqs.some((r) => r.query.get("limit") === "3")).toBe(true);
      const watch = reqs.find((r) => r.query.get("watch") === "true");
      expect(watch?.query.get("allowWatchBookmarks")).toBe("true");
      const timeout = Number(watch?.query.get("timeoutSeconds"));
      expect(timeout).toBeGreaterThanOrEqual(300);
      expect(timeout).toBeLessThan(600);
    }
    for (const r of byPath("/api/v1/nodes")) expect(r.query.get("fieldSelector")).toBe(`metadata.name=${NODE}`);
    for (const r of server.requests) expect(r.userAgent).toBe(`kproxy/${version}`);
    const [event] = server.list("events");
    expect(event).toMatchObject({
      metadata: { namespace: "default" },
      reason: "Starting",
      action: "StartKubeProxy",
      type: "Normal",
      reportingController: "kproxy",
      reportingInstance: "kproxy-host-a",
      regarding: { kind: "Node", name: NODE, uid: NODE },
    });
    expect(event.metadata.name).toMatch(new RegExp(`^${NODE}\\.[0-9a-f]+$`));
  });

  test("garbage is collected every N listed objects until the initial lists are in, never for watch events", async () => {
    const server = await FakeApiServer.start({});
    cleanup.push(() => server.stop());
    for (let i = 0; i < 10; i++) server.create("services", svc(`s${i}`));
    let collections = 0;
    const { m } = await startSource(server, { collectGarbage: () => collections++, listGarbageEvery: 4 });
    await until(() => m.synced === 1, () => "synced");
    expect(collections).toBe(2);
    await server.waitForWatches(3);
    for (let i = 10; i < 20; i++) server.create("services", svc(`s${i}`));
    await until(() => (m.objects.get("Service")?.size ?? 0) === 20, () => "watched services");
    expect(collections).toBe(2);
  });

  test("a refused event post is only logged at a verbose level and does not disturb the source", async () => {
    const server = await FakeApiServer.start({});
    cleanup.push(() => server.stop());
    server.create("services", svc("s0"));
    const forbidden = JSON.stringify({ kind: "Status", status: "Failure", reason: "Forbidden", message: "events is forbidden", code: 403 });
    const { m, logger } = await startSource(server, {
      fetch: (url, init) => (url.includes("/events") ? Promise.resolve(new Response(forbidden, { status: 403 })) : realFetch(url, init)),
    });
    await until(() => m.synced === 1, () => "synced");
    await until(() => logger.lines.some((l) => l.includes("Could not post the Starting event")), () => "event failure logged");
    const line = JSON.parse(logger.lines.find((l) => l.includes("Could not post the Starting event"))!);
    expect(line.v).toBe(2);
    expect(line.warning).toBeUndefined();
    expect(line.err).toContain("events is forbidden");
    await converge(m, server, "despite the event failure");
  });

  test("startingEvent has the upstream shape", () => {
    const at = Date.UTC(2026, 0, 2, 3, 4, 5, 678);
    const e = startingEvent({ nodeName: "n1", hostname: "h1", now: at });
    expect(e).toEqual({
      apiVersion: "events.k8s.io/v1",
      kind: "Event",
      metadata: { name: `n1.${(BigInt(at) * 1_000_000n).toString(16)}`, namespace: "default" },
      eventTime: "2026-01-02T03:04:05.678000Z",
      reportingController: "kproxy",
      reportingInstance: "kproxy-h1",
      action: "StartKubeProxy",
      reason: "Starting",
      type: "Normal",
      regarding: { kind: "Node", name: "n1", uid: "n1" },
    });
    expect(microTime(0)).toBe("1970-01-01T00:00:00.000000Z");
  });
});
