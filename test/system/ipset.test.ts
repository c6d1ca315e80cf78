import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { DEFAULT_HASH_OPTIONS, diffIpsets, type Ipset, IpsetTool, ipsetLine, parseIpsetSave } from "../../src/system/ipset.ts";
import { hasTool, needs } from "../helpers/require.ts";
import { isRoot, Netns } from "../helpers/netns.ts";
import { RecordingExec } from "../helpers/recording-exec.ts";

// Output of ipset 7.17 (`ipset save`, same as `ipset list -o save`) against Debian's 6.1 kernel.
const SAVE = `create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 comment bucketsize 12 initval 0xb2a57334
add KUBE-CLUSTER-IP 10.96.0.1,tcp:443 comment "Kubernetes service cluster ip + port for masquerade purpose"
create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xa0fa7923
add KUBE-LOOP-BACK 10.244.1.6,udp:53,10.244.1.6
add KUBE-LOOP-BACK 10.244.1.5,tcp:6443,10.244.1.5
create KUBE-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xa27a2b6f
add KUBE-LOAD-BALANCER-SOURCE-CIDR 1.2.3.4,tcp:80,10.0.0.0/8
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
add KUBE-NODE-PORT-TCP 30080
create KUBE-6-CLUSTER-IP hash:ip,port family inet6 hashsize 1024 maxelem 65536 bucketsize 12 initval 0x7e1284bc
add KUBE-6-CLUSTER-IP fd00::1,tcp:80
create KUBE-X hash:net,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x4ae14337
add KUBE-X 10.1.0.0/16,sctp:99
create KUBE-N hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xf834751d
add KUBE-N 10.1.2.0/24
create KUBE-EMPTY hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xb02ca464
`;

function set(name: string, entries: string[], overrides: Partial<Ipset> = {}): Ipset {
  return { name, type: "hash:ip,port", family: "inet", options: DEFAULT_HASH_OPTIONS, entries, ...overrides };
}

describe("parseIpsetSave", () => {
  const sets = parseIpsetSave(SAVE);
  const byName = new Map(sets.map((s) => [s.name, s]));

  test("reads every set with type, family and options, dropping the kernel's bucketsize and initval", () => {
    expect(sets.map((s) => s.name)).toEqual([
      "KUBE-CLUSTER-IP",
      "KUBE-LOOP-BACK",
      "KUBE-LOAD-BALANCER-SOURCE-CIDR",
      "KUBE-NODE-PORT-TCP",
      "KUBE-6-CLUSTER-IP",
      "KUBE-X",
      "KUBE-N",
      "KUBE-EMPTY",
    ]);
    expect(byName.get("KUBE-CLUSTER-IP")).toEqual({
      name: "KUBE-CLUSTER-IP",
      type: "hash:ip,port",
      family: "inet",
      options: ["hashsize 1024", "maxelem 65536", "comment"],
      entries: ["10.96.0.1,tcp:443"],
    });
    expect(byName.get("KUBE-6-CLUSTER-IP")).toMatchObject({ family: "inet6", entries: ["fd00::1,tcp:80"] });
    expect(byName.get("KUBE-EMPTY")?.entries).toEqual([]);
  });

  test("bitmap sets have no family, and keep their range", () => {
    const bitmap = byName.get("KUBE-NODE-PORT-TCP");
    expect(bitmap).toEqual({ name: "KUBE-NODE-PORT-TCP", type: "bitmap:port", options: ["range 0-65535"], entries: ["30080"] });
    expect(bitmap && "family" in bitmap).toBe(false);
  });

  test("members of every type kproxy uses", () => {
    expect(byName.get("KUBE-LOOP-BACK")?.entries).toEqual(["10.244.1.6,udp:53,10.244.1.6", "10.244.1.5,tcp:6443,10.244.1.5"]);
    expect(byName.get("KUBE-LOAD-BALANCER-SOURCE-CIDR")?.entries).toEqual(["1.2.3.4,tcp:80,10.0.0.0/8"]);
    expect(byName.get("KUBE-X")?.entries).toEqual(["10.1.0.0/16,sctp:99"]);
    expect(byName.get("KUBE-N")?.entries).toEqual(["10.1.2.0/24"]);
  });

  test("a parsed save diffs to nothing against itself", () => {
    expect(diffIpsets(sets, sets)).toBe("");
    expect(parseIpsetSave("")).toEqual([]);
  });
});

describe("diffIpsets", () => {
  test("a new set is created with -exist and filled", () => {
    expect(diffIpsets([], [set("KUBE-CLUSTER-IP", ["10.96.0.1,tcp:443", "10.96.0.10,udp:53"])])).toBe(
      "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 -exist\n" +
        "add KUBE-CLUSTER-IP 10.96.0.1,tcp:443 -exist\n" +
        "add KUBE-CLUSTER-IP 10.96.0.10,udp:53 -exist\n",
    );
  });

  test("only changed members are added and deleted; adds come before deletions", () => {
    const current = [set("KUBE-CLUSTER-IP", ["10.96.0.1,tcp:443", "10.96.0.2,tcp:80"]), set("KUBE-EXTERNAL-IP", ["1.2.3.4,tcp:80"])];
    const wanted = [set("KUBE-CLUSTER-IP", ["10.96.0.1,tcp:443", "10.96.0.3,tcp:80"]), set("KUBE-EXTERNAL-IP", ["1.2.3.4,TCP:80"])];
    expect(diffIpsets(current, wanted)).toBe("add KUBE-CLUSTER-IP 10.96.0.3,tcp:80 -exist\ndel KUBE-CLUSTER-IP 10.96.0.2,tcp:80 -exist\n");
  });

  test("owned sets no longer wanted are flushed and destroyed last; others are left alone", () => {
    const current = [set("KUBE-LOOP-BACK", ["10.244.1.5,tcp:6443,10.244.1.5"], { type: "hash:ip,port,ip" }), set("SOMEONE-ELSE", ["10.0.0.1,tcp:1"])];
    expect(diffIpsets(current, [set("KUBE-CLUSTER-IP", [])], { owned: (name) => name.startsWith("KUBE-") })).toBe(
      "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 -exist\nflush KUBE-LOOP-BACK\ndestroy KUBE-LOOP-BACK\n",
    );
  });

  test("a set whose type or family changed is recreated", () => {
    const lines = diffIpsets([set("KUBE-X", ["10.0.0.1,tcp:80"])], [set("KUBE-X", ["fd00::1,tcp:80"], { family: "inet6" })]).split("\n");
    expect(lines.slice(0, 4)).toEqual([
      "flush KUBE-X",
      "destroy KUBE-X",
      "create KUBE-X hash:ip,port family inet6 hashsize 1024 maxelem 65536 -exist",
      "add KUBE-X fd00::1,tcp:80 -exist",
    ]);
  });

  test("bitmap sets are created without family", () => {
    expect(ipsetLine.create({ name: "KUBE-NODE-PORT-TCP", type: "bitmap:port", options: ["range 0-65535"] })).toBe(
      "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 -exist",
    );
  });

  test("duplicate wanted members are added once", () => {
    expect(diffIpsets([], [set("S", ["10.0.0.1,tcp:80", "10.0.0.1,tcp:80"])]).match(/^add /gm)).toHaveLength(1);
  });
});

describe("IpsetTool with a fake exec", () => {
  test("restore feeds the text to ipset restore and skips empty input", async () => {
    const exec = new RecordingExec();
    const tool = new IpsetTool(exec);
    await tool.restore("");
    expect(exec.calls).toHaveLength(0);
    await tool.restore("flush S");
    expect(exec.calls[0]).toEqual({ argv: ["ipset", "restore"], options: { stdin: "flush S\n", timeoutMs: 300_000 } });
  });

  test("a refused restore throws with ipset's message", async () => {
    const tool = new IpsetTool(new RecordingExec(() => ({ code: 1, stderr: "ipset v7.17: Error in line 1: The set with the given name does not exist\n" })));
    await expect(tool.restore("destroy NOPE\n")).rejects.toThrow(/Error in line 1/);
  });

  test("get returns undefined for a set that does not exist and throws on other failures", async () => {
    const missing = new IpsetTool(new RecordingExec(() => ({ code: 1, stderr: "ipset v7.17: The set with the given name does not exist\n" })));
    expect(await missing.get("NOPE")).toBeUndefined();
    const broken = new IpsetTool(new RecordingExec(() => ({ code: 1, stderr: "ipset v7.17: Kernel error received: Operation not permitted\n" })));
    await expect(broken.get("S")).rejects.toThrow(/Operation not permitted/);
  });
});

// ip_set is in this host's kernel, and sets belong to a network namespace, so the real tool runs
// here in a namespace of the test's own.
const ipsetTest = needs(isRoot() && hasTool("ipset") && hasTool("ip"), "needs root, ipset and ip");

describe("against the kernel, in a network namespace", () => {
  let ns: Netns | undefined;
  beforeAll(async () => {
    if (isRoot() && hasTool("ipset") && hasTool("ip")) ns = await Netns.create("ipset");
  });
  afterAll(async () => {
    await ns?.delete();
  });

  ipsetTest("restore text from diffIpsets makes the kernel hold exactly the wanted sets", async () => {
    if (!ns) throw new Error("no namespace");
    const tool = new IpsetTool(ns.exec);
    const wanted: Ipset[] = [
      set("KUBE-CLUSTER-IP", ["10.96.0.1,tcp:443", "10.96.0.10,udp:53"]),
      set("KUBE-LOOP-BACK", ["10.244.1.5,tcp:6443,10.244.1.5"], { type: "hash:ip,port,ip" }),
      set("KUBE-LOAD-BALANCER-SOURCE-CIDR", ["1.2.3.4,tcp:80,10.0.0.0/8"], { type: "hash:ip,port,net" }),
      set("KUBE-LOAD-BALANCER-SOURCE-IP", ["1.2.3.4,tcp:80,5.6.7.8"], { type: "hash:ip,port,ip" }),
      set("KUBE-6-CLUSTER-IP", ["fd00::1,tcp:80"], { family: "inet6" }),
      set("KUBE-NODE-PORT-LOCAL-SCTP-HASH", ["10.0.0.1,sctp:30001"]),
      set("KUBE-IPVS-IPS", ["10.96.0.1"], { type: "hash:ip" }),
      set("KUBE-LOAD-BALANCER-FW", ["1.2.3.4,tcp:80"]),
      { name: "KUBE-NODE-PORT-TCP", type: "bitmap:port", options: ["range 0-65535"], entries: ["30080", "30081"] },
      set("KUBE-EXTERNAL-IP", ["10.1.0.0/16"], { type: "hash:net" }),
      set("KUBE-NODE-PORT-LOCAL-TCP", ["10.1.0.0/16,tcp:30080"], { type: "hash:net,port" }),
    ];

    await tool.restore(diffIpsets(await tool.save(), wanted));
    expect(diffIpsets(await tool.save(), wanted)).toBe("");
    expect([...((await tool.get("KUBE-NODE-PORT-TCP"))?.entries ?? [])].sort()).toEqual(["30080", "30081"]);

    // one member changes, one set goes, one set changes family
    const changed = wanted
      .filter((s) => s.name !== "KUBE-LOAD-BALANCER-FW")
      .map((s) => {
        if (s.name === "KUBE-CLUSTER-IP") return { ...s, entries: ["10.96.0.1,tcp:443", "10.96.0.11,tcp:8080"] };
        if (s.name === "KUBE-IPVS-IPS") return { ...s, family: "inet6" as const, entries: ["fd00::10"] };
        return s;
      });
    const text = diffIpsets(await tool.save(), changed, { owned: (name) => name.startsWith("KUBE-") });
    expect(text).toContain("del KUBE-CLUSTER-IP 10.96.0.10,udp:53 -exist\n");
    expect(text).toContain("destroy KUBE-LOAD-BALANCER-FW\n");
    await tool.restore(text);
    expect(diffIpsets(await tool.save(), changed)).toBe("");
    expect(await tool.get("KUBE-LOAD-BALANCER-FW")).toBeUndefined();
    expect((await tool.get("KUBE-IPVS-IPS"))?.family).toBe("inet6");

    // the same text a second time is harmless except for destroys, which need the set to exist
    await tool.restore(text.split("\n").filter((l) => !/^(flush|destroy) KUBE-LOAD-BALANCER-FW/.test(l) && !l.startsWith("flush KUBE-IPVS-IPS") && !l.startsWith("destroy KUBE-IPVS-IPS")).join("\n"));
    expect(diffIpsets(await tool.save(), changed)).toBe("");

    await tool.restore(diffIpsets(await tool.save(), []));
    expect(await tool.save()).toEqual([]);
  });
});
