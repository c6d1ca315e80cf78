import { describe, expect, test } from "bun:test";
import { canonicalCIDR, canonicalIP, cidrFamilyOf, ipFamilyOf } from "../../src/model/ip.ts";

describe("model IP text", () => {
  test("families as the API names them; a zone, leading zeros or junk are no IP", () => {
    expect(ipFamilyOf("10.96.0.10")).toBe("IPv4");
    expect(ipFamilyOf("fd00::10")).toBe("IPv6");
    expect(ipFamilyOf("::ffff:10.1.2.3")).toBe("IPv6");
    expect(ipFamilyOf("fe80::1%eth0")).toBeUndefined();
    expect(ipFamilyOf("010.96.0.10")).toBeUndefined();
    expect(ipFamilyOf("10.96.0")).toBeUndefined();
    expect(ipFamilyOf("None")).toBeUndefined();
  });

  test("one canonical text per address (RFC 5952), so two spellings make one endpoint", () => {
    expect(canonicalIP("FD00:0:0::0:10")).toBe("fd00::10");
    expect(canonicalIP("2001:db8:0:0:1:0:0:1")).toBe("2001:db8::1:0:0:1");
    expect(canonicalIP("::ffff:10.1.2.3")).toBe("::ffff:a01:203");
    expect(canonicalIP("10.96.0.10")).toBe("10.96.0.10");
    // Not an address: left as it is for the caller's validation to name.
    expect(canonicalIP("fd00::zz")).toBe("fd00::zz");
  });

  test("CIDRs: family with a prefix within it, address part canonical", () => {
    expect(cidrFamilyOf("10.0.0.0/8")).toBe("IPv4");
    expect(cidrFamilyOf("fd00::/64")).toBe("IPv6");
    expect(cidrFamilyOf("10.0.0.0/33")).toBeUndefined();
    expect(cidrFamilyOf("fd00::/129")).toBeUndefined();
    expect(cidrFamilyOf("10.0.0.0")).toBeUndefined();
    expect(canonicalCIDR("FD00:0::/64")).toBe("fd00::/64");
  });
});
