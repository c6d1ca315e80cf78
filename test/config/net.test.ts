import { describe, expect, test } from "bun:test";
import {
  cidrContains,
  formatCIDR,
  formatIP,
  ipFamily,
  isCIDR,
  isIP,
  joinHostPort,
  parseCIDR,
  parseDualStackCIDRs,
  parseIP,
  parsePortRange,
  splitHostPort,
} from "../../src/config/net.ts";

describe("IP addresses", () => {
  test("valid IPv4 and IPv6 forms parse with their family", () => {
    for (const ip of ["0.0.0.0", "10.244.1.2", "255.255.255.255"]) expect(ipFamily(ip)).toBe(4);
    for (const ip of ["::", "::1", "fd00::1", "2001:db8:0:0:0:0:0:1", "::ffff:10.0.0.1", "fe80::a:b:c:d", "1:2:3:4:5:6:7:8"]) expect(ipFamily(ip)).toBe(6);
  });

  test("malformed addresses are rejected", () => {
    for (const bad of ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3.-4", "a.b.c.d", ":::", "1::2::3", "12345::", "fe80::1%eth0", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7::8", "localhost"]) {
      expect(isIP(bad)).toBe(false);
    }
  });

  test("IPv6 prints in canonical compressed form", () => {
    const canonical = (text: string) => {
      const ip = parseIP(text);
      if (!ip) throw new Error(`not an IP: ${text}`);
      return formatIP(ip);
    };
    expect(canonical("2001:0db8:0000:0000:0000:0000:0000:0001")).toBe("2001:db8::1");
    expect(canonical("0:0:0:0:0:0:0:0")).toBe("::");
    expect(canonical("1:0:0:2:0:0:0:3")).toBe("1:0:0:2::3");
    expect(canonical("1:0:2:3:4:5:6:7")).toBe("1:0:2:3:4:5:6:7");
    expect(canonical("10.1.2.3")).toBe("10.1.2.3");
  });
});

describe("CIDRs", () => {
  test("host bits are cleared and the prefix kept", () => {
    const canonical = (text: string) => {
      const cidr = parseCIDR(text);
      if (!cidr) throw new Error(`not a CIDR: ${text}`);
      return formatCIDR(cidr);
    };
    expect(canonical("10.244.3.7/16")).toBe("10.244.0.0/16");
    expect(canonical("10.244.3.7/20")).toBe("10.244.0.0/20");
    expect(canonical("fd00:10:244::5/56")).toBe("fd00:10:244::/56");
    expect(canonical("fd00:10:244::5/40")).toBe("fd00:10:200::/40");
  });

  test("bad prefixes and addresses are rejected", () => {
    for (const bad of ["10.0.0.0", "10.0.0.0/33", "fd00::/129", "10.0.0.0/-1", "10.0.0.0/08", "x/8", "10.0.0.0/"]) expect(isCIDR(bad)).toBe(false);
    expect(isCIDR("0.0.0.0/0")).toBe(true);
    expect(isCIDR("::/0")).toBe(true);
  });

  test("containment respects prefix and family", () => {
    expect(cidrContains("10.244.0.0/16", "10.244.255.1")).toBe(true);
    expect(cidrContains("10.244.0.0/16", "10.245.0.1")).toBe(false);
    expect(cidrContains("10.244.0.0/15", "10.245.0.1")).toBe(true);
    expect(cidrContains("0.0.0.0/0", "::1")).toBe(false);
    expect(cidrContains("fd00::/8", "fdff::1")).toBe(true);
    expect(cidrContains("fd00::/8", "fe00::1")).toBe(false);
  });

  test("dual-stack lists need one CIDR or two of different families", () => {
    expect(parseDualStackCIDRs("10.244.0.0/16")?.length).toBe(1);
    expect(parseDualStackCIDRs("10.244.0.0/16,fd00:10:244::/56")?.map((c) => c.family)).toEqual([4, 6]);
    expect(parseDualStackCIDRs("10.244.0.0/16, fd00:10:244::/56")?.length).toBe(2);
    expect(parseDualStackCIDRs("10.244.0.0/16,10.245.0.0/16")).toBeNull();
    expect(parseDualStackCIDRs("10.0.0.0/8,fd00::/8,10.1.0.0/16")).toBeNull();
    expect(parseDualStackCIDRs("10.244.0.0/16,")).toBeNull();
  });
});

describe("host:port", () => {
  test("splits IPv4, bracketed IPv6 and names", () => {
    expect(splitHostPort("0.0.0.0:10256")).toEqual({ host: "0.0.0.0", port: 10256 });
    expect(splitHostPort("[::1]:10249")).toEqual({ host: "::1", port: 10249 });
    expect(splitHostPort("node1:80")).toEqual({ host: "node1", port: 80 });
    expect(splitHostPort("127.0.0.1:0")).toEqual({ host: "127.0.0.1", port: 0 });
  });

  test("rejects missing or out-of-range ports and unbracketed IPv6", () => {
    for (const bad of ["0.0.0.0", "0.0.0.0:", "0.0.0.0:65536", "0.0.0.0:http", "::1:80", "[::1]80", "[::1"]) expect(splitHostPort(bad)).toBeNull();
  });

  test("joins with brackets for IPv6", () => {
    expect(joinHostPort("::", 10256)).toBe("[::]:10256");
    expect(joinHostPort("10.0.0.1", 80)).toBe("10.0.0.1:80");
  });
});

describe("port ranges", () => {
  test("upstream's forms", () => {
    expect(parsePortRange("")).toEqual({ base: 0, size: 0 });
    expect(parsePortRange("30000-32767")).toEqual({ base: 30000, size: 2768 });
    expect(parsePortRange("30000+2767")).toEqual({ base: 30000, size: 2768 });
    expect(parsePortRange("8080")).toEqual({ base: 8080, size: 1 });
  });

  test("malformed or reversed ranges", () => {
    for (const bad of ["a-b", "2000-1000", "1-70000", "65535+1", "1-", "-5", "1-2-3"]) expect(parsePortRange(bad)).toBeNull();
  });
});
