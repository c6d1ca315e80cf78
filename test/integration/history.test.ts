/**
 * The control plane end to end, in process: the fake API server → ApiSource (list/watch over TLS)
 * → ProxyModel. After a scripted history (creates, updates, deletes, a bad object, a compaction
 * forcing a 410, an outage with changes made meanwhile, a restart of the server) the model must
 * equal a model built directly from the server's final objects.
 */
import { expect, test } from "bun:test";
import { KubeClient } from "../../src/kube/client.ts";
import type { RestConfig } from "../../src/kube/kubeconfig.ts";
import { staticToken } from "../../src/kube/token.ts";
import { memoryLogger, silentLogger } from "../../src/log.ts";
import { ProxyModel } from "../../src/model/tracker.ts";
import type { Snapshot } from "../../src/model/types.ts";
import { ApiSource } from "../../src/source/api.ts";
import { FakeApiServer } from "../fixtures/apiserver.ts";
import { eventually } from "../helpers/process.ts";

const NODE = "node-a";

function service(ns: string, name: string, ip: string, ports: { name: string; port: number; protocol?: string }[]) {
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: { namespace: ns, name },
    spec: { type: "ClusterIP", clusterIP: ip, clusterIPs: [ip], ports: ports.map((p) => ({ protocol: "TCP", targetPort: p.port, ...p })) },
  };
}

function slice(ns: string, svc: string, suffix: string, ips: string[], port = 8080, node = NODE) {
  return {
    apiVersion: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata: { namespace: ns, name: `${svc}-${suffix}`, labels: { "kubernetes.io/service-name": svc } },
    addressType: "IPv4",
    ports: [{ name: "http", port, protocol: "TCP" }],
    endpoints: ips.map((ip) => ({ addresses: [ip], conditions: { ready: true }, nodeName: node })),
  };
}

/** A model fed the server's current objects directly, as the truth to compare against. */
function expectedModel(server: FakeApiServer): ProxyModel {
  const model = new ProxyModel({ nodeName: NODE, logger: silentLogger });
  for (const obj of server.list("services")) model.apply({ type: "upsert", kind: "Service", object: obj });
  for (const obj of server.list("endpointslices")) model.apply({ type: "upsert", kind: "EndpointSlice", object: obj });
  for (const obj of server.list("nodes")) if (obj.metadata.name === NODE) model.apply({ type: "upsert", kind: "Node", object: obj });
  model.apply({ type: "synced" });
  return model;
}

function plain(snapshot: Snapshot) {
  const sort = <T>(m: ReadonlyMap<string, T>) => [...m.entries()].sort(([a], [b]) => a.localeCompare(b));
  return {
    services: sort(snapshot.services),
    endpoints: sort(snapshot.endpoints).map(([k, eps]) => [k, [...eps].sort((a, b) => a.ip.localeCompare(b.ip))]),
    node: snapshot.node,
  };
}

test("the model follows creates, updates, deletes, a 410, an outage and a restart to the server's final state", async () => {
  const server = await FakeApiServer.start({ bookmarkIntervalMs: 50 });
  const logger = memoryLogger(2);
  const ac = new AbortController();
  let sourceDone: Promise<void> | undefined;
  try {
    server.create("nodes", { apiVersion: "v1", kind: "Node", metadata: { name: NODE, labels: { "topology.kubernetes.io/zone": "z1" } }, spec: { podCIDR: "10.244.1.0/24" } });
    server.create("services", service("default", "web", "10.96.0.10", [{ name: "http", port: 80 }]));
    server.create("endpointslices", slice("default", "web", "a", ["10.244.1.10", "10.244.1.11"]));
    server.create("services", service("default", "dns", "10.96.0.53", [{ name: "dns", port: 53, protocol: "UDP" }]));

    const config: RestConfig = { server: server.url, tls: { ca: server.caPem, insecureSkipVerify: false }, auth: { kind: "token", token: staticToken(server.token) }, origin: "test" };
    const client = new KubeClient({ config, qps: 0, logger });
    const source = new ApiSource({
      client,
      nodeName: NODE,
      logger,
      postStartingEvent: false,
      reflector: { pageSize: 2, backoff: { initialMs: 10, factor: 2, capMs: 100, jitter: 0.5, resetAfterMs: 1000 } },
    });
    const model = new ProxyModel({ nodeName: NODE, logger });
    sourceDone = source.start((e) => model.apply(e), ac.signal);

    const converged = (step: string) =>
      eventually(
        `model to match the server after ${step}`,
        () => (JSON.stringify(plain(model.snapshot())) === JSON.stringify(plain(expectedModel(server).snapshot())) ? true : undefined),
        10_000,
      );

    await eventually("initial sync", () => (model.isSynced() ? true : undefined));
    await converged("the initial list");
    expect(model.snapshot().endpoints.get("IPv4/default/web:http/TCP")).toHaveLength(2);

    // Updates and deletes while watching.
    server.update("endpointslices", slice("default", "web", "a", ["10.244.1.10", "10.244.1.12"]));
    server.create("services", service("prod", "api", "10.96.1.1", [{ name: "http", port: 443 }]));
    server.create("endpointslices", slice("prod", "api", "x", ["10.244.2.1"], 8443, "node-b"));
    server.delete("services", "default", "dns");
    await converged("updates and deletes");

    // A bad object is skipped with a warning naming it; everything else keeps working.
    server.create("services", service("default", "broken", "10.96.0.999", [{ name: "http", port: 80 }]));
    await eventually("warning for the bad service", () => (logger.lines.some((l) => l.includes("default/broken")) ? true : undefined));
    expect([...model.snapshot().services.keys()].some((k) => k.includes("/broken:"))).toBe(false);
    server.delete("services", "default", "broken");

    // Changes hidden behind a compaction: the watch resumes from a compacted version, gets 410 and re-lists.
    server.closeWatches();
    server.delete("endpointslices", "prod", "api-x");
    server.create("endpointslices", slice("prod", "api", "y", ["10.244.2.2"], 8443));
    server.compact();
    await converged("a compaction and 410");

    // An outage with changes made meanwhile, then a restart of the server.
    await server.setDown(true);
    server.update("services", service("default", "web", "10.96.0.10", [{ name: "http", port: 80 }, { name: "metrics", port: 9090 }]));
    server.delete("services", "prod", "api");
    await server.setDown(false);
    await converged("an outage");

    await server.restart();
    server.create("services", service("default", "late", "10.96.0.77", [{ name: "http", port: 80 }]));
    server.create("endpointslices", slice("default", "late", "a", ["10.244.1.77"]));
    await converged("a restart");
    expect(model.snapshot().services.has("IPv4/default/web:metrics/TCP")).toBe(true);
    expect(model.snapshot().services.has("IPv4/prod/api:http/TCP")).toBe(false);
    expect(model.snapshot().node.zone).toBe("z1");
  } finally {
    ac.abort();
    await sourceDone;
    await server.stop();
  }
}, 60_000);
