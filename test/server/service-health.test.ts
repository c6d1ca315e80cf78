import { describe, expect, test } from "bun:test";
import { memoryLogger } from "../../src/log.ts";
import { ServiceHealthServer, serviceHealthBody } from "../../src/server/service-health.ts";

function setup() {
  let healthy = true;
  const logger = memoryLogger();
  const server = new ServiceHealthServer({ health: { isHealthy: () => healthy }, logger, nodeIPs: ["127.0.0.1"] });
  const get = async (nsName: string) => {
    const port = server.portOf(nsName);
    if (port === undefined) throw new Error(`${nsName} is not served`);
    const res = await fetch(`http://127.0.0.1:${port}/`);
    return { status: res.status, body: await res.text(), headers: res.headers };
  };
  return { server, get, logger, setHealthy: (h: boolean) => (healthy = h) };
}

describe("serviceHealthBody", () => {
  test("is upstream's tab-indented document", () => {
    expect(serviceHealthBody("ns", "web", 2, true)).toBe(
      '{\n\t"service": {\n\t\t"namespace": "ns",\n\t\t"name": "web"\n\t},\n\t"localEndpoints": 2,\n\t"serviceProxyHealthy": true\n}',
    );
  });
});

describe("ServiceHealthServer", () => {
  test("503 without local endpoints, 200 with them, 503 again when the proxier is unhealthy", async () => {
    const { server, get, setHealthy } = setup();
    try {
      await server.syncServices(new Map([["ns/web", 0]]));
      let res = await get("ns/web");
      expect(res.status).toBe(503);
      expect(JSON.parse(res.body)).toEqual({ service: { namespace: "ns", name: "web" }, localEndpoints: 0, serviceProxyHealthy: true });
      expect(res.headers.get("x-load-balancing-endpoint-weight")).toBe("0");

      server.syncEndpoints(new Map([["ns/web", 3], ["ns/unknown", 1]]));
      res = await get("ns/web");
      expect(res.status).toBe(200);
      expect(res.body).toBe(serviceHealthBody("ns", "web", 3, true));
      expect(res.headers.get("content-type")).toBe("application/json");
      expect(res.headers.get("x-content-type-options")).toBe("nosniff");
      expect(res.headers.get("x-load-balancing-endpoint-weight")).toBe("3");

      setHealthy(false);
      res = await get("ns/web");
      expect(res.status).toBe(503);
      expect(JSON.parse(res.body).serviceProxyHealthy).toBe(false);

      // A service missing from the next endpoints sync has none.
      setHealthy(true);
      server.syncEndpoints(new Map());
      expect((await get("ns/web")).status).toBe(503);
    } finally {
      await server.close();
    }
  });

  test("syncServices opens new services, keeps unchanged ones on their port, closes removed ones", async () => {
    const { server, get } = setup();
    try {
      await server.syncServices(new Map([["ns/a", 0], ["ns/b", 0]]));
      const portA = server.portOf("ns/a")!;
      const portB = server.portOf("ns/b")!;
      server.syncEndpoints(new Map([["ns/a", 1]]));

      await server.syncServices(new Map([["ns/a", 0], ["other/c", 0]]));
      expect(server.served()).toEqual(["ns/a", "other/c"]);
      expect(server.portOf("ns/a")).toBe(portA);
      // Kept instance kept its endpoint count too.
      expect((await get("ns/a")).status).toBe(200);
      await expect(fetch(`http://127.0.0.1:${portB}/`)).rejects.toThrow();
    } finally {
      await server.close();
    }
    expect(server.served()).toEqual([]);
  });

  test("a port that cannot be opened is logged and skipped, and tried again on the next sync", async () => {
    const { server, logger } = setup();
    const holder = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("holder") });
    const port = holder.port!;
    try {
      await server.syncServices(new Map([["ns/web", port]]));
      expect(server.served()).toEqual([]);
      expect(logger.lines.some((l) => l.includes("Failed to start healthcheck") && l.includes("ns/web"))).toBe(true);
      await holder.stop(true);
      await server.syncServices(new Map([["ns/web", port]]));
      expect(server.portOf("ns/web")).toBe(port);
    } finally {
      await holder.stop(true);
      await server.close();
    }
  });
});
