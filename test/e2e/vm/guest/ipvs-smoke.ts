/**
 * Runs inside the guest (see test/system/ipvs.test.ts): drives the real kernel through
 * src/system/ipvs.ts and reports what it saw as one JSON object on stdout; the host test makes the
 * assertions. The guest is thrown away afterwards, so this script changes the root namespace
 * freely.
 *
 * Topology: a client namespace reaches the guest's root namespace (the node) over a veth; two pod
 * namespaces hang off the node over their own veths and serve `/name` with busybox httpd (UDP
 * has a virtual server but no traffic: this busybox has no UDP netcat). The
 * virtual IP lives on the dummy interface kube-ipvs0, as kproxy puts it.
 */
import { bunExec, type Exec, runChecked } from "../../../../src/system/exec.ts";
import { DEFAULT_HASH_OPTIONS, diffIpsets, IpsetTool } from "../../../../src/system/ipset.ts";
import { diffIpvs, Ipvsadm, type VirtualServer } from "../../../../src/system/ipvs.ts";

const exec: Exec = bunExec;
const sh = async (...argv: string[]) => (await runChecked(exec, argv)).stdout;
const inNs = (ns: string, ...argv: string[]) => sh("ip", "netns", "exec", ns, ...argv);

const VIP = "10.96.0.10";
const UDP_VIP = "10.96.0.11";
const pods = [
  { ns: "pod-a", node: "10.250.1.1", ip: "10.250.1.2" },
  { ns: "pod-b", node: "10.250.2.1", ip: "10.250.2.2" },
];

/** One `ip -batch` per namespace: every process start is slow under emulation. */
async function ipBatch(ns: string | null, lines: readonly string[]): Promise<void> {
  const argv = ns === null ? ["ip", "-batch", "-"] : ["ip", "-n", ns, "-batch", "-"];
  await runChecked(exec, argv, { stdin: `${lines.join("\n")}\n` });
}

async function setUp(): Promise<void> {
  await Bun.write("/proc/sys/net/ipv4/ip_forward", "1");
  // As kproxy sets it: IPVS connections get conntrack entries, which masquerading rules need.
  await Bun.write("/proc/sys/net/ipv4/vs/conntrack", "1");
  const root = [
    "link add kube-ipvs0 type dummy",
    `addr add ${VIP}/32 dev kube-ipvs0`,
    `addr add ${UDP_VIP}/32 dev kube-ipvs0`,
    "netns add client",
    "link add node-client type veth peer name eth0 netns client",
    "addr add 10.251.0.1/24 dev node-client",
    "link set node-client up",
  ];
  for (const pod of pods) {
    root.push(
      `netns add ${pod.ns}`,
      `link add node-${pod.ns} type veth peer name eth0 netns ${pod.ns}`,
      `addr add ${pod.node}/24 dev node-${pod.ns}`,
      `link set node-${pod.ns} up`,
    );
  }
  await ipBatch(null, root);
  await ipBatch("client", ["link set lo up", "addr add 10.251.0.2/24 dev eth0", "link set eth0 up", "route add default via 10.251.0.1"]);
  for (const pod of pods) {
    await ipBatch(pod.ns, ["link set lo up", `addr add ${pod.ip}/24 dev eth0`, "link set eth0 up", `route add default via ${pod.node}`]);
    const www = `/tmp/${pod.ns}`;
    await Bun.write(`${www}/name`, `${pod.ns}\n`);
    // busybox httpd daemonizes; it dies with the guest.
    await inNs(pod.ns, "busybox", "httpd", "-p", `${pod.ip}:8080`, "-h", www);
  }
}

function wanted(overrides: Partial<VirtualServer> = {}, reals = pods): VirtualServer[] {
  return [
    {
      protocol: "tcp",
      address: VIP,
      port: 80,
      scheduler: "rr",
      persistenceTimeout: 0,
      flags: [],
      realServers: reals.map((p) => ({ address: p.ip, port: 8080, forwarding: "masq" as const, weight: 1 })),
      ...overrides,
    },
    {
      protocol: "udp",
      address: UDP_VIP,
      port: 53,
      scheduler: "rr",
      persistenceTimeout: 0,
      flags: [],
      realServers: [{ address: pods[0]!.ip, port: 5353, forwarding: "masq", weight: 1 }],
    },
  ];
}

/**
 * Companion rules in the shape of upstream's ipvs mode, using the ipsets and the ipvs match: they
 * prove the image carries the modules (xt_set, xt_ipvs, addrtype, conntrack, MASQUERADE …) and
 * that traffic still flows with them in place.
 */
const COMPANION_RULES = `*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000
-A KUBE-SERVICES ! -s 10.250.0.0/16 -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-NODE-PORT -p tcp -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
COMMIT
*filter
:KUBE-FORWARD - [0:0]
:KUBE-IPVS-FILTER - [0:0]
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m mark --mark 0x00004000/0x00004000 -j ACCEPT
-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-FORWARD -m ipvs --vaddr ${VIP}/32 --vdir ORIGINAL -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
COMMIT
`;

async function fetchNames(count: number): Promise<string[]> {
  const names: string[] = [];
  for (let i = 0; i < count; i++) {
    const result = await exec.run(["ip", "netns", "exec", "client", "curl", "-s", "--max-time", "5", `http://${VIP}/name`]);
    names.push(result.code === 0 ? result.stdout.trim() : `curl exit ${result.code}`);
  }
  return names;
}

async function main(): Promise<void> {
  const started = performance.now();
  const phases: Record<string, number> = {};
  const mark = (name: string) => {
    phases[name] = Math.round(performance.now() - started);
  };
  const ipvs = new Ipvsadm(exec);
  const report: Record<string, unknown> = { available: await ipvs.available() };
  await setUp();
  mark("setUp");

  const firstBatch = diffIpvs(await ipvs.save(), wanted());
  report["firstBatch"] = firstBatch;
  await ipvs.applyBatch(firstBatch);
  report["saveText"] = await sh("ipvsadm", "-S", "-n");
  report["saved"] = await ipvs.save();
  report["diffAfterApply"] = diffIpvs(await ipvs.save(), wanted());
  report["spread"] = await fetchNames(4);
  report["connections"] = Object.fromEntries(await ipvs.connections());
  mark("traffic");

  const ipset = new IpsetTool(exec);
  await ipset.restore(
    diffIpsets(await ipset.save(), [
      { name: "KUBE-CLUSTER-IP", type: "hash:ip,port", family: "inet", options: DEFAULT_HASH_OPTIONS, entries: [`${VIP},tcp:80`, `${UDP_VIP},udp:53`] },
      { name: "KUBE-LOOP-BACK", type: "hash:ip,port,ip", family: "inet", options: DEFAULT_HASH_OPTIONS, entries: pods.map((p) => `${p.ip},tcp:8080,${p.ip}`) },
      { name: "KUBE-NODE-PORT-TCP", type: "bitmap:port", options: ["range 0-65535"], entries: ["30080"] },
    ]),
  );
  report["ipsets"] = await ipset.save();
  await runChecked(exec, ["iptables-nft-restore", "-w", "5", "--noflush"], { stdin: COMPANION_RULES });
  report["companionRules"] = (await sh("iptables-nft-save")).split("\n").filter((l) => l.startsWith("-A ")).length;
  report["spreadWithRules"] = await fetchNames(2);
  const counters = /^\[(\d+):\d+\] -A KUBE-POSTROUTING -j MASQUERADE/m.exec(await sh("iptables-nft-save", "-c", "-t", "nat"));
  report["masqueradedPackets"] = Number(counters?.[1] ?? -1);
  mark("companionRules");

  // Graceful termination's first step: weight 0 keeps the server but sends it no new connections.
  const drained = wanted({ scheduler: "wrr", persistenceTimeout: 30 });
  const first = drained[0]!;
  drained[0] = { ...first, realServers: first.realServers.map((rs) => (rs.address === pods[1]!.ip ? { ...rs, weight: 0 } : rs)) };
  const drainBatch = diffIpvs(await ipvs.save(), drained);
  report["drainBatch"] = drainBatch;
  await ipvs.applyBatch(drainBatch);
  report["savedDrained"] = await ipvs.save();
  report["diffAfterDrain"] = diffIpvs(await ipvs.save(), drained);
  report["afterDrain"] = await fetchNames(3);

  // Back to no persistence: -E without -p must clear it.
  const back = wanted({}, [pods[0]!]);
  const backBatch = diffIpvs(await ipvs.save(), back);
  report["backBatch"] = backBatch;
  await ipvs.applyBatch(backBatch);
  report["diffAfterBack"] = diffIpvs(await ipvs.save(), back);

  await ipvs.setTimeouts({ tcp: 900, tcpFin: 120, udp: 300 });
  report["timeouts"] = await ipvs.timeouts();

  await ipvs.applyBatch(diffIpvs(await ipvs.save(), []));
  report["savedAfterDeleteAll"] = await ipvs.save();
  mark("done");
  report["phasesMs"] = phases;
  console.log(JSON.stringify(report));
}

await main();
