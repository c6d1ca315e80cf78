import { describe, expect, test } from "bun:test";
import { mergeSlices, sliceInfoOf, type SliceInfo } from "../../src/model/endpoints.ts";
import { parseEndpointSlice } from "../../src/model/objects.ts";
import { slice, type EndpointSpec } from "./builders.ts";

function info(name: string, eps: EndpointSpec[], options: Parameters<typeof slice>[3] = {}): SliceInfo {
  const r = parseEndpointSlice(slice(name, "svc", eps, options));
  if (!r.ok) throw new Error(r.reason);
  return sliceInfoOf(r.value, "node-1");
}

const ids = (m: Map<string, readonly { ip: string; port: number }[]>, key: string) => (m.get(key) ?? []).map((e) => `${e.ip}:${e.port}`);
const KEY = "IPv4/ns/svc:http/TCP";

describe("mergeSlices", () => {
  test("sorted by ip:port text, as upstream sorts endpoint strings", () => {
    const m = mergeSlices([info("a", [{ ip: "10.0.0.1" }, { ip: "10.0.0.10" }, { ip: "10.0.0.2" }])]);
    expect(ids(m, KEY)).toEqual(["10.0.0.10:8080", "10.0.0.1:8080", "10.0.0.2:8080"]);
  });

  test("the result does not depend on the order slices arrive in", () => {
    const a = info("a", [{ ip: "10.0.0.1", ready: false, serving: true, terminating: true }, { ip: "10.0.0.3" }]);
    const b = info("b", [{ ip: "10.0.0.1", ready: true }, { ip: "10.0.0.2" }]);
    const one = mergeSlices([a, b]);
    const two = mergeSlices([b, a]);
    expect(ids(one, KEY)).toEqual(["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]);
    expect(one.get(KEY)).toEqual(two.get(KEY)!);
    expect(one.get(KEY)?.[0]?.terminating).toBe(false);
  });

  test("duplicates inside one slice collapse too; all-terminating copies keep the first", () => {
    const m = mergeSlices([
      info("a", [
        { ip: "10.0.0.1", ready: false, serving: true, terminating: true, nodeName: "n-a" },
        { ip: "10.0.0.1", ready: false, serving: true, terminating: true, nodeName: "n-b" },
      ]),
    ]);
    expect(m.get(KEY)?.map((e) => e.nodeName)).toEqual(["n-a"]);
  });

  test("IPv6 endpoints sort by their bracketed form", () => {
    const m = mergeSlices([info("a", [{ ip: "fd00::2" }, { ip: "fd00::10" }], { addressType: "IPv6" })]);
    expect(ids(m, "IPv6/ns/svc:http/TCP")).toEqual(["fd00::10:8080", "fd00::2:8080"]);
  });

  test("a service with 100 slices of 100 endpoints merges in well under a second", () => {
    const slices = Array.from({ length: 100 }, (_, s) =>
      info(`s-${s}`, Array.from({ length: 100 }, (_, e) => ({ ip: `10.${s}.${e >> 8}.${e & 255}` }))),
    );
    const start = performance.now();
    const m = mergeSlices(slices);
    expect(m.get(KEY)).toHaveLength(10000);
    expect(performance.now() - start).toBeLessThan(500);
  });
});
