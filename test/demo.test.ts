import { afterEach, describe, expect, test } from "bun:test";
import { parseAllDocuments } from "yaml";
import { DEMO_NODE_PORT, demoManifest, portFree, startDemo, type Demo } from "../src/demo.ts";
import { parseEndpointSlice, parseService, servicePortsOf } from "../src/model/index.ts";

const stops: Demo[] = [];
afterEach(async () => {
  for (const d of stops.splice(0)) await d.stop();
});

describe("demo", () => {
  test("the manifest is a valid NodePort Service with one slice per backend, at the backends' real ports", () => {
    const docs = parseAllDocuments(demoManifest(30123, [{ name: "backend-a", port: 4001 }, { name: "backend-b", port: 4002 }])).map((d) => d.toJSON());
    expect(docs).toHaveLength(3);
    const svc = parseService(docs[0]);
    if (!svc.ok) throw new Error(svc.reason);
    const ports = servicePortsOf(svc.value);
    expect(ports.map((p) => [p.type, p.nodePort, p.servicePortName])).toEqual([["NodePort", 30123, "demo/web:http"]]);
    const slices = docs.slice(1).map((d) => {
      const r = parseEndpointSlice(d);
      if (!r.ok) throw new Error(r.reason);
      return r.value;
    });
    expect(slices.map((s) => [s.ports?.[0]?.port, s.endpoints?.[0]?.addresses[0]])).toEqual([
      [4001, "127.0.0.1"],
      [4002, "127.0.0.1"],
    ]);
  });

  test("two backends answer on loopback with their names; the NodePort is 30080 when free", async () => {
    const demo = await startDemo({ isFree: () => true });
    stops.push(demo);
    expect(demo.nodePort).toBe(DEMO_NODE_PORT);
    expect(demo.nodePortNote).toBeUndefined();
    const bodies = await Promise.all(demo.backends.map(async (b) => (await fetch(`http://127.0.0.1:${b.port}/`)).text()));
    expect(bodies).toEqual(["hello from backend-a\n", "hello from backend-b\n"]);
    expect(demo.manifest).toContain(`nodePort: ${DEMO_NODE_PORT}`);
  });

  test("a taken NodePort is replaced by a free one from the NodePort range, and the note says so", async () => {
    const demo = await startDemo({ isFree: (port) => port !== DEMO_NODE_PORT && port !== 30000 });
    stops.push(demo);
    expect(demo.nodePort).toBe(30001);
    expect(demo.nodePortNote).toBe(`port ${DEMO_NODE_PORT} on 127.0.0.1 is taken; the demo's NodePort is 30001 instead`);
    expect(demo.manifest).toContain("nodePort: 30001");
  });

  test("sendRequests prints who answered each request and tallies them", async () => {
    const demo = await startDemo({ isFree: () => true });
    stops.push(demo);
    // Stand in for kproxy's NodePort relay: the "NodePort" is backend-b's own port here.
    const direct = await startDemo({ nodePort: demo.backends[1]?.port ?? 0, isFree: () => true });
    stops.push(direct);
    const lines: string[] = [];
    const tally = await direct.sendRequests((l) => lines.push(l), 3);
    expect(tally).toEqual({ "backend-b": 3 });
    expect(lines[0]).toBe(`request  1 to 127.0.0.1:${demo.backends[1]?.port} answered by backend-b`);
    expect(lines.at(-1)).toBe("answers: backend-b 3");
  });

  test("portFree tells a bound port from a free one", () => {
    const held = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    try {
      expect(portFree("127.0.0.1", held.port)).toBe(false);
    } finally {
      held.stop(true);
    }
    expect(portFree("127.0.0.1", held.port)).toBe(true);
  });
});
