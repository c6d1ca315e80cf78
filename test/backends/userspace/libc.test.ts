import { describe, expect, test } from "bun:test";
import { sockaddr, sockaddrIP, sockaddrPort } from "../../../src/backends/userspace/libc.ts";

const view = (bytes: Uint8Array) => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);

describe("sockaddr", () => {
  test("IPv4 and IPv6 literals round-trip through sockaddr_in / sockaddr_in6, port in network order", () => {
    for (const [host, length] of [["10.1.2.3", 16], ["fd00::1", 28], ["2001:db8:0:1:1:1:1:1", 28], ["::", 28], ["fe80::1:0:0:1", 28]] as const) {
      const sa = sockaddr(host, 8080) as Uint8Array;
      expect(sa.byteLength).toBe(length);
      expect(sockaddrIP(view(sa))).toBe(host);
      expect(sockaddrPort(view(sa))).toBe(8080);
    }
  });

  test("a v4-mapped IPv6 peer reads as plain IPv4 (one affinity key per client); non-IPs give nothing", () => {
    expect(sockaddrIP(view(sockaddr("::ffff:10.0.0.1", 1) as Uint8Array))).toBe("10.0.0.1");
    expect(sockaddrIP(view(sockaddr("0:0:0:0:0:0:0:1", 1) as Uint8Array))).toBe("::1");
    expect(sockaddr("example.com", 80)).toBeUndefined();
    expect(sockaddr("10.0.0.256", 80)).toBeUndefined();
  });
});
