import { describe, expect } from "bun:test";
import { Netns, isRoot } from "../../helpers/netns.ts";
import { needs } from "../../helpers/require.ts";

const rootTest = needs(isRoot(), "needs root for a network namespace");
const FIXTURE = new URL("./fixtures/dual-stack-nodeport.ts", import.meta.url).pathname;

/**
 * A dual-stack NodePort service has an IPv4 and an IPv6 relay on the same port. Each family's
 * clients must reach that family's endpoints, whatever opens first and however many relay threads
 * share the port (one thread per port with ClientIP affinity, or the main thread alone).
 */
describe("dual-stack NodePort (in a network namespace)", () => {
  for (const [label, args] of [
    ["relayed on the main thread", ["0"]],
    ["relayed by one thread", ["1"]],
    ["relayed by two threads", ["2"]],
    ["ClientIP affinity (one thread per port)", ["2", "affinity"]],
  ] as const) {
    rootTest(
      `IPv4 and IPv6 clients on one NodePort each reach their family's endpoint, TCP and UDP: ${label}`,
      async () => {
        const ns = await Netns.create("dual");
        try {
          const proc = ns.spawn([process.execPath, FIXTURE, ...args]);
          const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
          expect(err).toBe("");
          expect(code).toBe(0);
          expect(JSON.parse(out.trim())).toEqual({ tcp4: "ipv4-endpoint", tcp6: "ipv6-endpoint", udp4: "ipv4-endpoint", udp6: "ipv6-endpoint" });
        } finally {
          await ns.delete();
        }
      },
      20_000,
    );
  }
});
