import { describe, expect, test } from "bun:test";
import { cidrContains, familyOf, isLoopback, joinHostPort } from "../../../src/backends/iptables/index.ts";

describe("ip helpers", () => {
  test("joinHostPort brackets IPv6 only", () => {
    expect(joinHostPort("10.0.0.1", 80)).toBe("10.0.0.1:80");
    expect(joinHostPort("fd00::1", 8080)).toBe("[fd00::1]:8080");
  });

  test("familyOf", () => {
    expect(familyOf("10.0.0.0/8")).toBe("IPv4");
    expect(familyOf("fd00:10::/64")).toBe("IPv6");
  });

  test("isLoopback", () => {
    expect(isLoopback("127.0.0.1")).toBe(true);
    expect(isLoopback("127.1.2.3")).toBe(true);
    expect(isLoopback("::1")).toBe(true);
    expect(isLoopback("0:0:0:0:0:0:0:1")).toBe(true);
    expect(isLoopback("::ffff:127.0.0.1")).toBe(true);
    expect(isLoopback("128.0.0.1")).toBe(false);
    expect(isLoopback("::2")).toBe(false);
    expect(isLoopback("fd00::1")).toBe(false);
  });

  test("cidrContains", () => {
    expect(cidrContains("203.0.113.0/25", "203.0.113.2")).toBe(true);
    expect(cidrContains("203.0.113.0/25", "203.0.113.130")).toBe(false);
    expect(cidrContains(" 192.168.0.0/24", "192.168.0.2")).toBe(true);
    expect(cidrContains("0.0.0.0/0", "8.8.8.8")).toBe(true);
    expect(cidrContains("10.1.2.3", "10.1.2.3")).toBe(true);
    expect(cidrContains("10.1.2.3/32", "10.1.2.4")).toBe(false);
    expect(cidrContains("2001:db8::/64", "2001:db8::1")).toBe(true);
    expect(cidrContains("2001:db8::/64", "2001:db8:0:1::1")).toBe(false);
    expect(cidrContains("2001:db8::/63", "2001:db8:0:1::1")).toBe(true);
    expect(cidrContains("::/0", "fd00::1")).toBe(true);
    // Mixed families and garbage never match.
    expect(cidrContains("10.0.0.0/8", "fd00::1")).toBe(false);
    expect(cidrContains("not-a-cidr", "10.0.0.1")).toBe(false);
    expect(cidrContains("10.0.0.0/33", "10.0.0.1")).toBe(false);
    expect(cidrContains("1:2:3:4:5:6:7:8:9/64", "1::1")).toBe(false);
  });
});
