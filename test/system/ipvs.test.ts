import { describe, expect, test } from "bun:test";
import {
  canonicalAddress,
  diffIpvs,
  Ipvsadm,
  ipvsLine,
  parseHostPort,
  parseIpvsConnections,
  parseIpvsSave,
  parseIpvsStats,
  parseIpvsTimeouts,
  parseProcIpvs,
  type StartedCommand,
  type StreamingExec,
  streamingExec,
  type VirtualServer,
  virtualServerKey,
} from "../../src/system/ipvs.ts";
import { guestAvailable, runInGuest } from "../e2e/vm/run.ts";
import { needs } from "../helpers/require.ts";
import { RecordingExec } from "../helpers/recording-exec.ts";

// Output of ipvsadm 1.31 against Debian's 6.1 kernel, taken inside the test guest.
const SAVE = `-A -t 10.96.0.1:443 -s rr
-a -t 10.96.0.1:443 -r 10.244.1.5:6443 -m -w 1
-a -t 10.96.0.1:443 -r 10.244.2.6:6443 -m -w 0
-A -t 10.96.0.3:80 -s mh -b mh-fallback,mh-port
-a -t 10.96.0.3:80 -r 10.244.3.4:80 -i -w 2 --tun-type ipip
-A -u 10.96.0.10:53 -s wrr -p 10800
-a -u 10.96.0.10:53 -r 10.244.1.7:53 -m -w 1
-A --sctp-service 10.96.0.2:9999 -s lc -p 60
-a --sctp-service 10.96.0.2:9999 -r 10.244.3.3:9999 -g -w 3
-A -t [fd00::1]:80 -s sh -b sh-fallback,sh-port
-a -t [fd00::1]:80 -r [fd00:10::5]:8080 -m -w 1
-A -f 12 -s rr
`;

const LIST = `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.96.0.1:443 rr
  -> 10.244.1.5:6443              Masq    1      3          7         
  -> 10.244.2.6:6443              Masq    0      0          2         
TCP  10.96.0.3:80 mh (mh-fallback,mh-port)
  -> 10.244.3.4:80                Tunnel  2      0          0         
UDP  10.96.0.10:53 wrr persistent 10800
  -> 10.244.1.7:53                Masq    1      0          0         
SCTP 10.96.0.2:9999 lc persistent 60
  -> 10.244.3.3:9999              Route   3      0          0         
TCP  [fd00::1]:80 sh (sh-fallback,sh-port)
  -> [fd00:10::5]:8080            Masq    1      1          0         
FWM  12 rr
`;

const STATS = `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  10.96.0.1:443                      12      340      310    45012   120993
  -> 10.244.1.5:6443                    10      300      280    40000   110000
  -> 10.244.2.6:6443                     2       40       30     5012    10993
UDP  10.96.0.10:53                       0        0        0        0        0
  -> 10.244.1.7:53                       0        0        0        0        0
TCP  [fd00::1]:80                        1        5        4      300      500
  -> [fd00:10::5]:8080                   1        5        4      300      500
FWM  12                                  0        0        0        0        0
`;

function vs(overrides: Partial<VirtualServer> = {}): VirtualServer {
  return {
    protocol: "tcp",
    address: "10.96.0.1",
    port: 80,
    scheduler: "rr",
    persistenceTimeout: 0,
    flags: [],
    realServers: [
      { address: "10.244.1.1", port: 8080, forwarding: "masq", weight: 1 },
      { address: "10.244.2.1", port: 8080, forwarding: "masq", weight: 1 },
    ],
    ...overrides,
  };
}

describe("parseIpvsSave", () => {
  const parsed = parseIpvsSave(SAVE);
  const byKey = new Map(parsed.map((s) => [virtualServerKey(s), s]));

  test("reads every tcp, udp and sctp virtual server and leaves firewall-mark services out", () => {
    expect([...byKey.keys()].sort()).toEqual(["sctp 10.96.0.2:9999", "tcp 10.96.0.1:443", "tcp 10.96.0.3:80", "tcp [fd00::1]:80", "udp 10.96.0.10:53"]);
  });

  test("scheduler, persistence and flags", () => {
    expect(byKey.get("udp 10.96.0.10:53")).toMatchObject({ scheduler: "wrr", persistenceTimeout: 10800, flags: [] });
    expect(byKey.get("tcp 10.96.0.3:80")).toMatchObject({ scheduler: "mh", persistenceTimeout: 0, flags: ["mh-fallback", "mh-port"] });
    expect(byKey.get("sctp 10.96.0.2:9999")).toMatchObject({ scheduler: "lc", persistenceTimeout: 60 });
  });

  test("real servers with forwarding method and weight, IPv6 in brackets", () => {
    expect(byKey.get("tcp 10.96.0.1:443")?.realServers).toEqual([
      { address: "10.244.1.5", port: 6443, forwarding: "masq", weight: 1 },
      { address: "10.244.2.6", port: 6443, forwarding: "masq", weight: 0 },
    ]);
    expect(byKey.get("tcp 10.96.0.3:80")?.realServers).toEqual([{ address: "10.244.3.4", port: 80, forwarding: "tunnel", weight: 2 }]);
    expect(byKey.get("sctp 10.96.0.2:9999")?.realServers[0]?.forwarding).toBe("route");
    expect(byKey.get("tcp [fd00::1]:80")).toMatchObject({
      address: "fd00::1",
      realServers: [{ address: "fd00:10::5", port: 8080, forwarding: "masq", weight: 1 }],
    });
  });

  test("empty output is no servers", () => {
    expect(parseIpvsSave("")).toEqual([]);
  });

  test("a parsed save diffs to nothing against itself and regenerates its own lines", () => {
    expect(diffIpvs(parsed, parsed)).toEqual([]);
    const lines = diffIpvs([], parsed);
    const reparsed = parseIpvsSave(lines.join("\n"));
    expect(diffIpvs(reparsed, parsed)).toEqual([]);
    expect(lines).toContain("-A -u 10.96.0.10:53 -s wrr -p 10800");
    expect(lines).toContain("-a -t [fd00::1]:80 -r [fd00:10::5]:8080 -m -w 1");
    expect(lines).toContain("-A --sctp-service 10.96.0.2:9999 -s lc -p 60");
    expect(lines).toContain("-A -t 10.96.0.3:80 -s mh -b mh-fallback,mh-port");
  });
});

describe("parseIpvsConnections", () => {
  test("active and inactive connections per real server, keyed like the save output", () => {
    const conns = parseIpvsConnections(LIST);
    expect(conns.get("tcp 10.96.0.1:443")).toEqual([
      { address: "10.244.1.5", port: 6443, activeConnections: 3, inactiveConnections: 7 },
      { address: "10.244.2.6", port: 6443, activeConnections: 0, inactiveConnections: 2 },
    ]);
    expect(conns.get("tcp [fd00::1]:80")).toEqual([{ address: "fd00:10::5", port: 8080, activeConnections: 1, inactiveConnections: 0 }]);
    expect(conns.get("sctp 10.96.0.2:9999")).toHaveLength(1);
    expect(conns.size).toBe(5);
  });
});

// /proc/net/ip_vs of Debian's 6.1 kernel (HZ 250), as read inside the test guest; the IPv6,
// persistent, Local and FWM lines in the kernel's format.
const PROC = `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  C0A83202:78DC rr  
  -> 0A801262:1F90      Masq    1      0          0         
  -> 0A801261:1F90      Masq    0      3          7         
UDP  0A60000A:0035 wrr persistent 2700000 FFFFFFFF
  -> 0A F4 0107:0035      Masq    1      0          0         
  -> 0AF40107:0035      Local   1      0          2         
FWM  0000000C rr  
  -> 0AF40108:0050      Masq    1      0          0         
SCTP 0A600002:270F lc  
  -> 0AF40303:270F      Route   3      0          0         
TCP  [fd00:0000:0000:0000:0000:0000:0000:0001]:0050 sh  
  -> [fd00:0010:0000:0000:0000:0000:0000:0005]:1F90      Masq    1      1          0         
`;

describe("parseProcIpvs", () => {
  test("hex addresses and ports, persistence from jiffies, weights, forwarding; firewall marks and bad lines left out", () => {
    const { virtualServers } = parseProcIpvs(PROC, 250);
    expect(virtualServers.map(virtualServerKey)).toEqual(["tcp 192.168.50.2:30940", "udp 10.96.0.10:53", "sctp 10.96.0.2:9999", "tcp [fd00::1]:80"]);
    expect(virtualServers[0]).toEqual({
      protocol: "tcp",
      address: "192.168.50.2",
      port: 30940,
      scheduler: "rr",
      persistenceTimeout: 0,
      flags: [],
      realServers: [
        { address: "10.128.18.98", port: 8080, forwarding: "masq", weight: 1 },
        { address: "10.128.18.97", port: 8080, forwarding: "masq", weight: 0 },
      ],
    });
    // a masquerading real server on a local address reads back as masq; a garbled line is skipped
    expect(virtualServers[1]).toMatchObject({ scheduler: "wrr", persistenceTimeout: 10800, realServers: [{ address: "10.244.1.7", port: 53, forwarding: "masq", weight: 1 }] });
    expect(virtualServers[2]?.realServers).toEqual([{ address: "10.244.3.3", port: 9999, forwarding: "route", weight: 3 }]);
    expect(virtualServers[3]?.realServers).toEqual([{ address: "fd00:10::5", port: 8080, forwarding: "masq", weight: 1 }]);
    expect(parseProcIpvs(PROC).virtualServers[1]?.persistenceTimeout).toBe(2_700_000);
  });

  test("connection counts per real server, keyed like the save output", () => {
    const { connections } = parseProcIpvs(PROC);
    expect(connections.get("tcp 192.168.50.2:30940")).toEqual([
      { address: "10.128.18.98", port: 8080, activeConnections: 0, inactiveConnections: 0 },
      { address: "10.128.18.97", port: 8080, activeConnections: 3, inactiveConnections: 7 },
    ]);
    expect(connections.get("tcp [fd00::1]:80")).toEqual([{ address: "fd00:10::5", port: 8080, activeConnections: 1, inactiveConnections: 0 }]);
    expect(connections.has("fwm 12")).toBe(false);
  });

  test("reads back as the save of the same table does (but for scheduler flags)", () => {
    const fromProc = parseProcIpvs(PROC, 250).virtualServers.filter((vs) => vs.protocol !== "udp");
    expect(diffIpvs(fromProc, fromProc)).toEqual([]);
    expect(parseProcIpvs("").virtualServers).toEqual([]);
  });
});

describe("parseIpvsStats", () => {
  test("counters per virtual server and per real server", () => {
    const stats = parseIpvsStats(STATS);
    expect(stats.get("tcp 10.96.0.1:443")).toEqual({ connections: 12, inPackets: 340, outPackets: 310, inBytes: 45012, outBytes: 120993 });
    expect(stats.get("tcp 10.96.0.1:443 -> 10.244.2.6:6443")?.connections).toBe(2);
    expect(stats.get("tcp [fd00::1]:80 -> [fd00:10::5]:8080")?.outBytes).toBe(500);
    expect(stats.size).toBe(7);
  });
});

describe("timeouts and addresses", () => {
  test("parseIpvsTimeouts", () => {
    expect(parseIpvsTimeouts("Timeout (tcp tcpfin udp): 900 120 300\n")).toEqual({ tcp: 900, tcpFin: 120, udp: 300 });
    expect(() => parseIpvsTimeouts("nonsense")).toThrow();
  });

  test("host:port parsing and IPv6 canonical form", () => {
    expect(parseHostPort("10.0.0.1:80")).toEqual({ address: "10.0.0.1", port: 80 });
    expect(parseHostPort("[FD00:0:0::1]:443")).toEqual({ address: "fd00::1", port: 443 });
    expect(() => parseHostPort("10.0.0.1")).toThrow();
    expect(canonicalAddress("fd00:0000::0001")).toBe("fd00::1");
    expect(virtualServerKey(vs({ address: "FD00:0::1" }))).toBe("tcp [fd00::1]:80");
  });
});

describe("diffIpvs", () => {
  test("a new virtual server is added with its real servers, masquerading with weight 1", () => {
    expect(diffIpvs([], [vs({ persistenceTimeout: 10800 })])).toEqual([
      "-A -t 10.96.0.1:80 -s rr -p 10800",
      "-a -t 10.96.0.1:80 -r 10.244.1.1:8080 -m -w 1",
      "-a -t 10.96.0.1:80 -r 10.244.2.1:8080 -m -w 1",
    ]);
  });

  test("only the changed real server is touched; weight changes are edits", () => {
    const current = [vs()];
    const wanted = [
      vs({
        realServers: [
          { address: "10.244.1.1", port: 8080, forwarding: "masq", weight: 0 },
          { address: "10.244.3.1", port: 8080, forwarding: "masq", weight: 1 },
        ],
      }),
    ];
    expect(diffIpvs(current, wanted)).toEqual([
      "-a -t 10.96.0.1:80 -r 10.244.3.1:8080 -m -w 1",
      "-e -t 10.96.0.1:80 -r 10.244.1.1:8080 -m -w 0",
      "-d -t 10.96.0.1:80 -r 10.244.2.1:8080",
    ]);
  });

  test("scheduler, persistence or flags changes edit the virtual server in place", () => {
    expect(diffIpvs([vs()], [vs({ scheduler: "sh", flags: ["sh-port", "sh-fallback"] })])).toEqual(["-E -t 10.96.0.1:80 -s sh -b sh-fallback,sh-port"]);
    expect(diffIpvs([vs({ persistenceTimeout: 60 })], [vs()])).toEqual(["-E -t 10.96.0.1:80 -s rr"]);
    expect(diffIpvs([vs({ flags: ["b", "a"] })], [vs({ flags: ["a", "b"] })])).toEqual([]);
  });

  test("unwanted virtual servers are deleted last; UDP, SCTP and IPv6 use their own flags", () => {
    const lines = diffIpvs(
      [vs({ protocol: "udp", port: 53 }), vs({ protocol: "sctp", port: 9 })],
      [vs({ address: "fd00::10", realServers: [{ address: "fd00::2", port: 80, forwarding: "masq", weight: 1 }] })],
    );
    expect(lines).toEqual([
      "-A -t [fd00::10]:80 -s rr",
      "-a -t [fd00::10]:80 -r [fd00::2]:80 -m -w 1",
      "-D -u 10.96.0.1:53",
      "-D --sctp-service 10.96.0.1:9",
    ]);
  });

  test("duplicate wanted real servers are added once (ipvsadm -R stops at a duplicate)", () => {
    const rs = { address: "10.244.1.1", port: 8080, forwarding: "masq" as const, weight: 1 };
    expect(diffIpvs([], [vs({ realServers: [rs, rs] })])).toEqual(["-A -t 10.96.0.1:80 -s rr", "-a -t 10.96.0.1:80 -r 10.244.1.1:8080 -m -w 1"]);
  });

  test("line builders", () => {
    expect(ipvsLine.deleteVirtualServer(vs())).toBe("-D -t 10.96.0.1:80");
    expect(ipvsLine.addRealServer(vs(), { address: "10.1.1.1", port: 1, forwarding: "route", weight: 5 })).toBe("-a -t 10.96.0.1:80 -r 10.1.1.1:1 -g -w 5");
  });
});

describe("Ipvsadm", () => {
  test("applyBatch feeds the lines to ipvsadm -R and skips an empty batch", async () => {
    const exec = new RecordingExec();
    const ipvs = new Ipvsadm(exec);
    await ipvs.applyBatch([]);
    expect(exec.calls).toHaveLength(0);
    await ipvs.applyBatch(["-A -t 10.96.0.1:80 -s rr", "-D -u 10.96.0.1:53"]);
    expect(exec.calls[0]?.argv).toEqual(["ipvsadm", "-R"]);
    expect(exec.calls[0]?.options?.stdin).toBe("-A -t 10.96.0.1:80 -s rr\n-D -u 10.96.0.1:53\n");
  });

  test("a refused batch throws with ipvsadm's message", async () => {
    const ipvs = new Ipvsadm(new RecordingExec(() => ({ code: 255, stderr: "Service not defined\n" })));
    await expect(ipvs.applyBatch("-a -t 10.96.0.99:80 -r 10.244.1.1:80 -m -w 1")).rejects.toThrow(/Service not defined/);
  });

  test("setTimeouts passes tcp, tcpfin and udp to --set, and does nothing when all are 0", async () => {
    const exec = new RecordingExec();
    const ipvs = new Ipvsadm(exec);
    await ipvs.setTimeouts({ tcp: 0, tcpFin: 0, udp: 0 });
    expect(exec.calls).toHaveLength(0);
    await ipvs.setTimeouts({ tcp: 900, tcpFin: 0, udp: 300 });
    expect(exec.calls[0]?.argv).toEqual(["ipvsadm", "--set", "900", "0", "300"]);
  });

  test("available reports ipvsadm's own words when the kernel has no IPVS", async () => {
    const ipvs = new Ipvsadm(
      new RecordingExec(() => ({
        code: 2,
        stderr: "Can't initialize ipvs: Protocol not available\nAre you sure that IP Virtual Server is built in the kernel or as module?\n",
      })),
    );
    expect(await ipvs.available()).toEqual({
      ok: false,
      reason: "Can't initialize ipvs: Protocol not available; Are you sure that IP Virtual Server is built in the kernel or as module?",
    });
  });

  test("clear and deleteVirtualServer", async () => {
    const exec = new RecordingExec();
    const ipvs = new Ipvsadm(exec);
    await ipvs.clear();
    await ipvs.deleteVirtualServer({ protocol: "udp", address: "fd00::10", port: 53 });
    expect(exec.calls.map((c) => [c.argv, c.options?.stdin])).toEqual([
      [["ipvsadm", "-C"], undefined],
      [["ipvsadm", "-R"], "-D -u [fd00::10]:53\n"],
    ]);
  });

  test("table reads /proc/net/ip_vs once and learns HZ from one persistent service's seconds, once", async () => {
    const exec = new RecordingExec((argv) =>
      argv[0] === "cat" ? { stdout: PROC } : { stdout: "Prot LocalAddress:Port Scheduler Flags\nUDP  10.96.0.10:53 wrr persistent 10800\n" },
    );
    const ipvs = new Ipvsadm(exec);
    const table = await ipvs.table();
    expect(table.virtualServers.find((vs) => vs.protocol === "udp")?.persistenceTimeout).toBe(10800);
    await ipvs.table();
    expect(exec.calls.map((c) => c.argv.join(" "))).toEqual(["cat /proc/net/ip_vs", "ipvsadm -L -n -u 10.96.0.10:53", "cat /proc/net/ip_vs"]);
  });

  test("connections: of one service with ipvsadm -L, empty when it is gone; of all from the proc file", async () => {
    const one = new RecordingExec(() => ({ stdout: LIST.split("\n").slice(0, 6).join("\n") }));
    const conns = await new Ipvsadm(one).connections({ protocol: "tcp", address: "10.96.0.1", port: 443 });
    expect(one.calls.map((c) => c.argv.join(" "))).toEqual(["ipvsadm -L -n -t 10.96.0.1:443"]);
    expect([...conns.keys()]).toEqual(["tcp 10.96.0.1:443"]);
    expect(conns.get("tcp 10.96.0.1:443")?.map((c) => c.activeConnections + c.inactiveConnections)).toEqual([10, 2]);
    const gone = new RecordingExec(() => ({ code: 1, stderr: "No such service\n" }));
    expect(await new Ipvsadm(gone).connections({ protocol: "udp", address: "10.96.0.9", port: 53 })).toEqual(new Map([["udp 10.96.0.9:53", []]]));
    const all = new RecordingExec(() => ({ stdout: PROC }));
    expect((await new Ipvsadm(all).connections()).size).toBe(4);
    expect(all.calls.map((c) => c.argv.join(" "))).toEqual(["cat /proc/net/ip_vs"]);
  });

  test("save reads ipvsadm -S -n", async () => {
    const exec = new RecordingExec(() => ({ stdout: SAVE }));
    const servers = await new Ipvsadm(exec).save();
    expect(exec.calls[0]?.argv).toEqual(["ipvsadm", "-S", "-n"]);
    expect(servers).toHaveLength(5);
  });
});

// The kernel part: one guest boot, in which test/e2e/vm/guest/ipvs-smoke.ts drives IPVS through
// this module and reports what it saw.
const guest = await guestAvailable();
const guestTest = needs(guest.ok, guest.ok ? "" : guest.reason);

/** A streaming fake: remembers what each started command was fed and when it was finished. */
class FakeStreamingExec extends RecordingExec implements StreamingExec {
  readonly started: { argv: readonly string[]; stdin: string; finished: boolean }[] = [];
  constructor(private readonly exitCode = 0) {
    super();
  }
  start(argv: readonly string[]): StartedCommand {
    const entry = { argv, stdin: "", finished: false };
    this.started.push(entry);
    return {
      write: (text) => {
        entry.stdin += text;
      },
      finish: async () => {
        entry.finished = true;
        return { code: this.exitCode, stdout: "", stderr: this.exitCode ? "Service not defined\n" : "", timedOut: false };
      },
    };
  }
}

describe("Ipvsadm.startBatch", () => {
  test("starts ipvsadm -R at once and feeds it the batch later", async () => {
    const exec = new FakeStreamingExec();
    const pending = new Ipvsadm(exec).startBatch();
    expect(exec.started).toEqual([{ argv: ["ipvsadm", "-R"], stdin: "", finished: false }]);
    await pending.apply(["-e -t 10.96.0.1:443 -r 10.244.1.5:6443 -m -w 0"]);
    expect(exec.started[0]).toEqual({ argv: ["ipvsadm", "-R"], stdin: "-e -t 10.96.0.1:443 -r 10.244.1.5:6443 -m -w 0\n", finished: true });
    expect(exec.calls).toEqual([]);
  });

  test("an empty batch lets the tool go without input; a refused one throws", async () => {
    const exec = new FakeStreamingExec();
    await new Ipvsadm(exec).startBatch().apply([]);
    expect(exec.started).toEqual([{ argv: ["ipvsadm", "-R"], stdin: "", finished: true }]);
    await expect(new Ipvsadm(new FakeStreamingExec(255)).startBatch().apply("-d -t 10.96.0.9:80 -r 10.1.1.1:80")).rejects.toThrow(/Service not defined/);
  });

  test("without a streaming Exec it is applyBatch", async () => {
    const exec = new RecordingExec();
    const pending = new Ipvsadm(exec).startBatch();
    expect(exec.calls).toEqual([]);
    await pending.apply(["-D -t 10.96.0.1:443"]);
    expect(exec.calls.map((c) => [c.argv.join(" "), c.options?.stdin])).toEqual([["ipvsadm -R", "-D -t 10.96.0.1:443\n"]]);
  });
});

describe("streamingExec", () => {
  test("a started command gets what is written and reports its output and exit", async () => {
    const exec = streamingExec();
    const cat = exec.start(["cat"]);
    cat.write("one\n");
    cat.write("two\n");
    expect(await cat.finish()).toEqual({ code: 0, stdout: "one\ntwo\n", stderr: "", timedOut: false });
    const failing = exec.start(["sh", "-c", "echo no >&2; exit 3"]);
    expect(await failing.finish()).toMatchObject({ code: 3, stderr: "no\n" });
    expect((await exec.start(["/nonexistent/ipvsadm"]).finish()).code).toBe(127);
  });
});

describe("in a guest kernel with IPVS", () => {
  guestTest(
    "virtual servers made through Ipvsadm appear in ipvsadm -S -n and carry traffic from a client namespace",
    async () => {
      const result = await runInGuest({
        command: [process.execPath, "test/e2e/vm/guest/ipvs-smoke.ts"],
        cwd: `${import.meta.dir}/../..`,
        timeoutMs: 90_000,
      });
      if (result.code !== 0) throw new Error(`guest script failed (${result.code}):\n${result.stderr}\n${result.stdout}`);
      const report = JSON.parse(result.stdout.trim().split("\n").at(-1) ?? "{}");
      console.log(`guest: boot ${result.bootMs} ms, whole run ${Math.round(result.durationMs)} ms, phases ${JSON.stringify(report.phasesMs)}`);

      expect(report.available).toEqual({ ok: true });
      expect(report.saveText).toContain("-A -t 10.96.0.10:80 -s rr\n");
      expect(report.saveText).toContain("-a -t 10.96.0.10:80 -r 10.250.1.2:8080 -m -w 1\n");
      expect(report.saveText).toContain("-a -t 10.96.0.10:80 -r 10.250.2.2:8080 -m -w 1\n");
      expect(report.saveText).toContain("-A -u 10.96.0.11:53 -s rr\n");
      // what we wrote reads back as exactly what we wanted
      expect(report.diffAfterApply).toEqual([]);
      // round robin over two real servers reaches both
      expect(report.spread).toHaveLength(4);
      expect(new Set(report.spread)).toEqual(new Set(["pod-a", "pod-b"]));
      // finished connections show as inactive on the real servers that served them
      const conns = report.connections["tcp 10.96.0.10:80"] as { activeConnections: number; inactiveConnections: number }[];
      expect(conns.reduce((n, c) => n + c.activeConnections + c.inactiveConnections, 0)).toBeGreaterThanOrEqual(4);

      // ipsets through IpsetTool and upstream-shaped companion rules load in the guest kernel, and
      // traffic still flows with them (the client's packets are masqueraded by the rules)
      expect(report.ipsets.map((s: { name: string }) => s.name).sort()).toEqual(["KUBE-CLUSTER-IP", "KUBE-LOOP-BACK", "KUBE-NODE-PORT-TCP"]);
      expect(report.companionRules).toBe(19);
      expect(new Set(report.spreadWithRules)).toEqual(new Set(["pod-a", "pod-b"]));
      expect(report.masqueradedPackets).toBeGreaterThanOrEqual(2);

      // weight 0 drains: new connections only reach the other server
      expect(report.drainBatch).toEqual(["-E -t 10.96.0.10:80 -s wrr -p 30", "-e -t 10.96.0.10:80 -r 10.250.2.2:8080 -m -w 0"]);
      expect(report.diffAfterDrain).toEqual([]);
      expect(report.afterDrain).toEqual(["pod-a", "pod-a", "pod-a"]);
      // -E without -p clears persistence in the kernel, so the diff converges
      expect(report.backBatch).toEqual(["-E -t 10.96.0.10:80 -s rr", "-d -t 10.96.0.10:80 -r 10.250.2.2:8080"]);
      expect(report.diffAfterBack).toEqual([]);
      expect(report.timeouts).toEqual({ tcp: 900, tcpFin: 120, udp: 300 });
      expect(report.savedAfterDeleteAll).toEqual([]);
      expect(result.durationMs).toBeLessThan(60_000);
    },
    120_000,
  );
});
