import { describe, expect, test } from "bun:test";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { needs } from "../../helpers/require.ts";
import { GuestError, guestAvailable, runInGuest, shellQuote } from "./run.ts";
import { resolveModules } from "./image.ts";

describe("resolveModules", () => {
  const dep = [
    "kernel/net/netfilter/ipvs/ip_vs_rr.ko: kernel/net/netfilter/ipvs/ip_vs.ko kernel/net/netfilter/nf_conntrack.ko kernel/lib/libcrc32c.ko",
    "kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko kernel/lib/libcrc32c.ko",
    "kernel/net/netfilter/nf_conntrack.ko: kernel/lib/libcrc32c.ko",
    "kernel/lib/libcrc32c.ko:",
    "kernel/crypto/crc32c_generic.ko:",
    "kernel/arch/x86/crypto/crc32c-intel.ko:",
    "kernel/drivers/net/dummy.ko:",
  ].join("\n");

  test("dependencies load first, each module once, soft dependencies through aliases", () => {
    const order = resolveModules(dep, "kernel/fs/overlayfs/overlay.ko\n", ["ip_vs_rr", "dummy", "ip_vs", "overlay"], "softdep libcrc32c pre: crc32c\n", [
      "alias crypto-crc32c crc32c_intel",
      "alias crc32c crc32c_intel",
      "alias crc32c crc32c_generic",
    ].join("\n"));
    expect(order).toEqual([
      "kernel/crypto/crc32c_generic.ko",
      "kernel/lib/libcrc32c.ko",
      "kernel/net/netfilter/nf_conntrack.ko",
      "kernel/net/netfilter/ipvs/ip_vs.ko",
      "kernel/net/netfilter/ipvs/ip_vs_rr.ko",
      "kernel/drivers/net/dummy.ko",
    ]);
  });

  test("a module that is neither a file nor built in is an error naming it", () => {
    expect(() => resolveModules(dep, "", ["dummy", "ip_vs_nope"])).toThrow(/ip_vs_nope/);
  });
});

test("shellQuote", () => {
  expect(shellQuote("plain/path-1.ts")).toBe("plain/path-1.ts");
  expect(shellQuote("it's a test")).toBe(`'it'\\''s a test'`);
  expect(shellQuote("")).toBe("''");
});

const guest = await guestAvailable();
const guestTest = needs(guest.ok, guest.ok ? "" : guest.reason);

async function qemuProcessesMentioning(text: string): Promise<number> {
  let count = 0;
  for (const pid of await readdir("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    if (cmdline.includes("qemu-system") && cmdline.includes(text)) count++;
  }
  return count;
}

describe("runInGuest", () => {
  guestTest(
    "runs the command in the guest kernel with cwd and env, and returns its output, exit code and files",
    async () => {
      const share = await mkdtemp("/var/tmp/kproxy-vm-test-");
      try {
        const result = await runInGuest({
          command: ["sh", "-c", 'uname -r; pwd; echo "$GREETING"; echo oops >&2; echo made > "$SHARE/out.txt"; test -w /usr && echo usr-writable; exit 3'],
          cwd: "/usr/share",
          env: { GREETING: "hello 'guest'", SHARE: share },
          shareDir: share,
          timeoutMs: 60_000,
        });
        expect(result.code).toBe(3);
        const lines = result.stdout.trim().split("\n");
        expect(lines[0]).toBe(guest.ok ? guest.image.kernelRelease : "?");
        expect(lines.slice(1)).toEqual(["/usr/share", "hello 'guest'", "usr-writable"]);
        expect(result.stderr).toBe("oops\n");
        expect(await readFile(`${share}/out.txt`, "utf8")).toBe("made\n");
        expect(result.bootMs).toBeGreaterThan(0);
        expect(await readFile(result.consoleLog, "utf8")).toContain("kproxy-vm: job done");
        expect(await qemuProcessesMentioning(share)).toBe(0);
      } finally {
        await rm(share, { recursive: true, force: true });
      }
    },
    90_000,
  );

  guestTest(
    "kills qemu on timeout and says so",
    async () => {
      const share = await mkdtemp("/var/tmp/kproxy-vm-test-");
      try {
        const started = performance.now();
        const error = await runInGuest({ command: ["sleep", "600"], shareDir: share, timeoutMs: 1_500 }).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(GuestError);
        expect((error as Error).message).toContain("timed out after 1500 ms");
        expect(performance.now() - started).toBeLessThan(10_000);
        expect(await qemuProcessesMentioning(share)).toBe(0);
      } finally {
        await rm(share, { recursive: true, force: true });
      }
    },
    30_000,
  );

  test("refuses a share under /tmp, which the guest cannot see", async () => {
    const image = { key: "k", kernelPackage: "p", kernelVersion: "v", kernelRelease: "r", kernel: "/nonexistent", initrd: "/nonexistent" };
    await expect(runInGuest({ command: ["true"], shareDir: "/tmp/x", image })).rejects.toThrow(/under \/tmp/);
  });
});
