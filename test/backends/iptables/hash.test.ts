import { describe, expect, test } from "bun:test";
import {
  base32Encode,
  chainsOfServicePort,
  clearChainNameCache,
  endpointChainHash,
  endpointChainName,
  endpointChainNameFor,
  hash16,
  isServiceChainName,
  servicePortChains,
} from "../../../src/backends/iptables/index.ts";
import { servicePort } from "./helpers.ts";

describe("base32", () => {
  // RFC 4648 section 10 test vectors.
  const vectors: [string, string][] = [
    ["", ""],
    ["f", "MY======"],
    ["fo", "MZXQ===="],
    ["foo", "MZXW6==="],
    ["foob", "MZXW6YQ="],
    ["fooba", "MZXW6YTB"],
    ["foobar", "MZXW6YTBOI======"],
  ];
  for (const [input, encoded] of vectors) {
    test(`"${input}" → "${encoded}"`, () => {
      expect(base32Encode(new TextEncoder().encode(input))).toBe(encoded);
    });
  }

  test("hash16 is the first 16 characters of base32(sha256(input))", () => {
    for (const input of ["", "ns1/svc1:p80tcp", "x".repeat(300), "ünïcode/ß:p"]) {
      const digest = new Uint8Array(32);
      Bun.SHA256.hash(input, digest);
      expect(hash16(input)).toBe(base32Encode(digest).slice(0, 16));
    }
  });
});

describe("chain names", () => {
  test("endpointChainHash is KUBE-SEP- + hash16, as one string", () => {
    for (const input of ["ns1/svc1:p80tcp10.180.0.1:80", "", "ns/svc:dnsudp[fd00::1]:53"]) {
      expect(endpointChainHash(input)).toBe(`KUBE-SEP-${hash16(input)}`);
    }
    expect(endpointChainHash("ns1/svc1:p80tcp10.180.0.1:80")).toBe("KUBE-SEP-SXIVWICOYRO3J4NJ");
  });

  test("match upstream's for the design document's check values", () => {
    clearChainNameCache();
    expect(servicePortChains("ns1/svc1:p80", "TCP").cluster).toBe("KUBE-SVC-XPGD46QRK7WJZT7O");
    expect(endpointChainName("ns1/svc1:p80", "TCP", "10.180.0.1:80")).toBe("KUBE-SEP-SXIVWICOYRO3J4NJ");
    // Second lookup comes from the cache and must agree.
    expect(servicePortChains("ns1/svc1:p80", "TCP").cluster).toBe("KUBE-SVC-XPGD46QRK7WJZT7O");
  });

  test("all four service chains share one hash; the protocol is part of it", () => {
    const chains = servicePortChains("ns5/svc5:p80", "TCP");
    expect(chains).toEqual({
      cluster: "KUBE-SVC-NUKIZ6OKUXPJNT4C",
      local: "KUBE-SVL-NUKIZ6OKUXPJNT4C",
      external: "KUBE-EXT-NUKIZ6OKUXPJNT4C",
      firewall: "KUBE-FW-NUKIZ6OKUXPJNT4C",
    });
    expect(servicePortChains("ns5/svc5:p80", "UDP").cluster).not.toBe(chains.cluster);
    for (const name of Object.values(chains)) expect(name.length).toBeLessThanOrEqual(28);
  });

  test("IPv6 endpoints are hashed as [ip]:port", () => {
    expect(endpointChainNameFor("ns1/svc1:p80", "TCP", "fd00::1", 80)).toBe(
      endpointChainName("ns1/svc1:p80", "TCP", "[fd00::1]:80"),
    );
    expect(endpointChainNameFor("ns1/svc1:p80", "TCP", "10.180.0.1", 80)).toBe("KUBE-SEP-SXIVWICOYRO3J4NJ");
  });

  test("the per-object memo answers for the service port it was computed for; endpoint chains hash service port, protocol and endpoint", () => {
    const sp = servicePort("ns1", "svc1", "p80", { clusterIP: "172.30.0.41", port: 80 });
    expect(chainsOfServicePort(sp).cluster).toBe("KUBE-SVC-XPGD46QRK7WJZT7O");
    // As generation names them: service port name + protocol + ip:port, hashed in one go.
    expect(endpointChainHash("ns1/svc1:p80tcp10.180.0.1:80")).toBe("KUBE-SEP-SXIVWICOYRO3J4NJ");
    expect(endpointChainHash("ns2/svc2:p80tcp10.180.0.1:80")).toBe(endpointChainName("ns2/svc2:p80", "TCP", "10.180.0.1:80"));
    expect(endpointChainHash("ns1/svc1:p80udp10.180.0.1:80")).toBe(endpointChainName("ns1/svc1:p80", "UDP", "10.180.0.1:80"));
  });

  test("only per-service chain prefixes count as ours to delete", () => {
    for (const c of ["KUBE-SVC-X", "KUBE-SVL-X", "KUBE-EXT-X", "KUBE-FW-X", "KUBE-SEP-X"]) {
      expect(isServiceChainName(c)).toBe(true);
    }
    for (const c of ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-MARK-MASQ", "KUBE-FORWARD", "DOCKER", "KUBE-PROXY-CANARY"]) {
      expect(isServiceChainName(c)).toBe(false);
    }
  });
});
