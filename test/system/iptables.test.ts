import { describe, expect, test } from "bun:test";
import type { Exec } from "../../src/system/exec.ts";
import { chainsIn, detectIptablesFlavour, Iptables, iptablesCommands, supportsRandomFully } from "../../src/system/iptables.ts";
import { isRoot, Netns } from "../helpers/netns.ts";
import { hasTool, needs } from "../helpers/require.ts";

/** A fake Exec answering `*-save` commands from a table of outputs. */
function saveOutputs(outputs: Record<string, string>): Exec {
  return {
    async run(argv) {
      const key = argv.join(" ");
      const stdout = outputs[key];
      return stdout === undefined
        ? { code: 1, stdout: "", stderr: "not found", timedOut: false }
        : { code: 0, stdout, stderr: "", timedOut: false };
    },
  };
}

describe("detectIptablesFlavour", () => {
  test("a kubelet hint chain in nft's mangle table decides nft", async () => {
    const exec = saveOutputs({
      "iptables-nft-save -t mangle": "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n",
      "iptables-legacy-save": "*filter\n-A INPUT -j ACCEPT\n-A INPUT -j ACCEPT\nCOMMIT\n",
    });
    expect(await detectIptablesFlavour(exec)).toBe("nft");
  });

  test("a kubelet canary in legacy's mangle table decides legacy", async () => {
    const exec = saveOutputs({
      "ip6tables-legacy-save -t mangle": "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n",
    });
    expect(await detectIptablesFlavour(exec)).toBe("legacy");
  });

  test("without hints the flavour holding more rules wins, nft on a tie", async () => {
    const legacyHeavy = saveOutputs({
      "iptables-legacy-save": "*nat\n-A PREROUTING -j X\n-A POSTROUTING -j Y\nCOMMIT\n",
      "iptables-nft-save": "*nat\n-A PREROUTING -j X\nCOMMIT\n",
    });
    expect(await detectIptablesFlavour(legacyHeavy)).toBe("legacy");
    expect(await detectIptablesFlavour(saveOutputs({}))).toBe("nft");
  });
});

test("chainsIn reads chain names from save output", () => {
  expect([...chainsIn("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A X -j Y\nCOMMIT\n")]).toEqual([
    "PREROUTING",
    "KUBE-SERVICES",
  ]);
});

test("iptablesCommands names the flavour's binaries per family", () => {
  expect(iptablesCommands("IPv6", "legacy")).toEqual({
    iptables: "ip6tables-legacy",
    save: "ip6tables-legacy-save",
    restore: "ip6tables-legacy-restore",
  });
});

const kernelTest = needs(isRoot() && ["ip", "iptables-nft", "iptables-legacy"].every(hasTool), "needs root, ip and iptables (nft and legacy)");

describe("supportsRandomFully", () => {
  test("1.6.2 and later have MASQUERADE --random-fully; older or unreadable versions do not", () => {
    expect(supportsRandomFully("iptables v1.8.9 (nf_tables)\n")).toBe(true);
    expect(supportsRandomFully("iptables v1.6.2\n")).toBe(true);
    expect(supportsRandomFully("iptables v1.6.1\n")).toBe(false);
    expect(supportsRandomFully("iptables v1.4.21\n")).toBe(false);
    expect(supportsRandomFully("ip6tables v2.0.0 (legacy)")).toBe(true);
    expect(supportsRandomFully("")).toBe(false);
  });
});

describe("Iptables against the kernel", () => {
  for (const flavour of ["nft", "legacy"] as const) {
    for (const family of ["IPv4", "IPv6"] as const) {
      kernelTest(`${flavour} ${family}: restore, ensure rules idempotently, delete chains`, async () => {
        const ns = await Netns.create("ipt");
        try {
          const ipt = new Iptables(ns.exec, family, flavour);
          await ipt.restore("*nat\n:KUBE-TEST - [0:0]\n-A KUBE-TEST -j RETURN\nCOMMIT\n");
          expect(await ipt.chainExists("nat", "KUBE-TEST")).toBe(true);
          expect(await ipt.chainExists("nat", "KUBE-MISSING")).toBe(false);

          const jump = { table: "nat", chain: "PREROUTING", args: ["-m", "comment", "--comment", "kproxy test", "-j", "KUBE-TEST"] } as const;
          expect(await ipt.ensureRule(jump)).toBe(true);
          expect(await ipt.ensureRule(jump)).toBe(false);
          const jumps = (await ipt.save("nat")).split("\n").filter((l) => l.includes("-j KUBE-TEST"));
          expect(jumps).toHaveLength(1);

          await ipt.ensureChain("filter", "KUBE-EMPTY");
          await ipt.ensureChain("filter", "KUBE-EMPTY");
          expect(await ipt.chains("filter")).toContain("KUBE-EMPTY");

          // Every iptables a current distribution ships has it, in both flavours and families.
          expect(supportsRandomFully(await ipt.version())).toBe(true);

          await ipt.deleteRule(jump);
          await ipt.deleteRule(jump);
          await ipt.deleteChains("nat", ["KUBE-TEST", "KUBE-NEVER-EXISTED"]);
          expect(await ipt.chains("nat")).not.toContain("KUBE-TEST");
        } finally {
          await ns.delete();
        }
      });
    }
  }

  kernelTest("a bad line makes restore fail and leaves the existing rules in place", async () => {
    const ns = await Netns.create("ipt");
    try {
      const ipt = new Iptables(ns.exec, "IPv4", "nft");
      await ipt.restore("*nat\n:KUBE-KEEP - [0:0]\n-A KUBE-KEEP -j RETURN\nCOMMIT\n");
      const err = await ipt
        .restore("*nat\n:KUBE-KEEP - [0:0]\n-A KUBE-KEEP -j NO-SUCH-TARGET\nCOMMIT\n")
        .catch((e: unknown) => e as Error);
      expect(err).toBeInstanceOf(Error);
      expect(String(err)).toContain("iptables-nft-restore");
      expect(await ns.run(["iptables-nft", "-t", "nat", "-S", "KUBE-KEEP"])).toContain("-A KUBE-KEEP -j RETURN");
    } finally {
      await ns.delete();
    }
  });

  kernelTest("detection inside a namespace follows the flavour that holds the rules", async () => {
    const ns = await Netns.create("ipt");
    try {
      await ns.run(["iptables-legacy", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT"]);
      expect(await detectIptablesFlavour(ns.exec)).toBe("legacy");
      await ns.run(["iptables-nft", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"]);
      expect(await detectIptablesFlavour(ns.exec)).toBe("nft");
    } finally {
      await ns.delete();
    }
  });
});
