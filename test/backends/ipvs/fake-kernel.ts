/**
 * A hand-written stand-in for the kernel parts the ipvs mode drives, behind the Exec interface:
 * ipvsadm (-S -n, -R, -L -n [service], --set), ipset (save, restore, list -n), ip (-j addr show,
 * link add/del, -force -batch) and iptables-nft (-save, -restore, -S, -N, -C, -I). Like the real
 * tools, `ipvsadm -R` and `ipset restore` apply line by line and stop at the first bad line.
 */
import type { Exec, ExecOptions, ExecResult } from "../../../src/system/exec.ts";

interface Real {
  address: string;
  port: number;
  weight: number;
  active: number;
  inactive: number;
}

interface Service {
  protocol: string;
  service: string;
  scheduler: string;
  persistence: number;
  flags: string;
  reals: Map<string, Real>;
}

interface Set {
  type: string;
  family: string;
  options: string;
  entries: string[];
}

/** `fd00::1` → `fd00:0000:0000:0000:0000:0000:0000:0001`, as the kernel's %pI6 prints it. */
function expandIPv6(ip: string): string {
  const [head, tail] = ip.includes("::") ? (ip.split("::") as [string, string]) : [ip, ""];
  const left = head === "" ? [] : head.split(":");
  const right = tail === "" ? [] : tail.split(":");
  const groups = [...left, ...Array(8 - left.length - right.length).fill("0"), ...right];
  return groups.map((g) => g.padStart(4, "0")).join(":");
}

/** The kernel's timer frequency (Debian's kernels use 250). */
const HZ = 250;

const PROTO_FLAG: Record<string, string> = { "-t": "tcp", "-u": "udp", "--sctp-service": "sctp" };
const FLAG_OF: Record<string, string> = { tcp: "-t", udp: "-u", sctp: "--sctp-service" };

export class FakeKernel implements Exec {
  readonly calls: { argv: string[]; stdin: string }[] = [];
  readonly services = new Map<string, Service>();
  readonly sets = new Map<string, Set>();
  readonly links = new Map<string, string[]>([
    ["lo", ["127.0.0.1", "::1"]],
    ["eth0", ["192.168.0.2", "fe80::1"]],
  ]);
  readonly rules = new Set<string>();
  /** Rule key → the line iptables-save prints for it. */
  private readonly savedRules = new Map<string, string>();
  readonly chains = new Set<string>();
  readonly restores: string[] = [];
  timeouts = "";
  /** Virtual servers (keys) /proc/net/ip_vs leaves out, as the kernel does when other namespaces have some. */
  readonly procHides = new Set<string>();
  /** Make the next `ipvsadm -R` fail at its first line. */
  failNextIpvsBatch = false;

  callsOf(tool: string, arg?: string): { argv: string[]; stdin: string }[] {
    return this.calls.filter((c) => c.argv[0] === tool && (arg === undefined || c.argv.includes(arg)));
  }

  clearCalls(): void {
    this.calls.length = 0;
  }

  real(service: string, real: string): Real | undefined {
    return this.services.get(service)?.reals.get(real);
  }

  async run(argv: readonly string[], options?: ExecOptions): Promise<ExecResult> {
    const stdin = typeof options?.stdin === "string" ? options.stdin : "";
    this.calls.push({ argv: [...argv], stdin });
    const [tool, ...args] = argv;
    try {
      switch (tool) {
        case "ipvsadm":
          return this.ipvsadm(args, stdin);
        case "ipset":
          return this.ipset(args, stdin);
        case "ip":
          return this.ip(args, stdin);
        case "conntrack":
          // deletions only; nothing is tracked here
          return args[0] === "-R" || args[0] === "-D" ? ok("") : fail(`conntrack: unknown ${args.join(" ")}`);
        case "cat":
          return args[0] === "/proc/net/ip_vs" ? ok(this.procIpvs()) : fail(`cat: ${args[0]}: No such file or directory`);
        default:
          if (tool?.startsWith("iptables") || tool?.startsWith("ip6tables")) return this.iptables(tool, args, stdin);
          return fail(`${tool}: not found`, 127);
      }
    } catch (err) {
      return fail((err as Error).message);
    }
  }

  private ipvsadm(args: string[], stdin: string): ExecResult {
    if (args[0] === "-S") return ok(this.saveIpvs());
    if (args[0] === "-R") {
      for (const line of stdin.split("\n")) {
        if (line.trim() === "") continue;
        if (this.failNextIpvsBatch) {
          this.failNextIpvsBatch = false;
          return fail("Memory allocation problem");
        }
        const problem = this.ipvsLine(line.trim().split(/\s+/));
        if (problem) return fail(problem);
      }
      return ok("");
    }
    if (args[0] === "-L" && args.includes("--timeout")) return ok(`Timeout (tcp tcpfin udp): ${this.timeouts || "900 120 300"}\n`);
    if (args[0] === "-L") {
      const flag = args.find((a) => a in PROTO_FLAG);
      if (flag) {
        const key = `${PROTO_FLAG[flag]} ${args[args.indexOf(flag) + 1]}`;
        const svc = this.services.get(key);
        return svc ? ok(this.list([svc])) : fail("No such service");
      }
      return ok(this.list([...this.services.values()]));
    }
    if (args[0] === "--set") {
      this.timeouts = args.slice(1).join(" ");
      return ok("");
    }
    if (args[0] === "-C") {
      this.services.clear();
      return ok("");
    }
    return fail(`ipvsadm: unknown ${args.join(" ")}`);
  }

  private ipvsLine(w: string[]): string | undefined {
    const cmd = w[0];
    let key = "";
    let real = "";
    let scheduler = "wlc";
    let persistence = 0;
    let flags = "";
    let weight = 1;
    for (let i = 1; i < w.length; i++) {
      const word = w[i] as string;
      if (word in PROTO_FLAG) key = `${PROTO_FLAG[word]} ${w[++i]}`;
      else if (word === "-s") scheduler = w[++i] as string;
      else if (word === "-p") persistence = Number(w[++i]);
      else if (word === "-b") flags = w[++i] as string;
      else if (word === "-r") real = w[++i] as string;
      else if (word === "-w") weight = Number(w[++i]);
    }
    const svc = this.services.get(key);
    switch (cmd) {
      case "-A":
        if (svc) return "Service already exists";
        this.services.set(key, { protocol: key.split(" ")[0] as string, service: key.split(" ")[1] as string, scheduler, persistence, flags, reals: new Map() });
        return undefined;
      case "-E":
        if (!svc) return "No such service";
        Object.assign(svc, { scheduler, persistence, flags });
        return undefined;
      case "-D":
        if (!svc) return "No such service";
        this.services.delete(key);
        return undefined;
      case "-a": {
        if (!svc) return "Service not defined";
        if (svc.reals.has(real)) return "Destination already exists";
        const m = /^\[?(.+?)\]?:(\d+)$/.exec(real) as RegExpExecArray;
        svc.reals.set(real, { address: m[1] as string, port: Number(m[2]), weight, active: 0, inactive: 0 });
        return undefined;
      }
      case "-e": {
        const rs = svc?.reals.get(real);
        if (!rs) return "No such destination";
        rs.weight = weight;
        return undefined;
      }
      case "-d":
        if (!svc?.reals.delete(real)) return "No such destination";
        return undefined;
    }
    return `unknown command ${cmd}`;
  }

  saveIpvs(): string {
    const lines: string[] = [];
    for (const svc of this.services.values()) {
      const flag = FLAG_OF[svc.protocol];
      lines.push(`-A ${flag} ${svc.service} -s ${svc.scheduler}${svc.persistence ? ` -p ${svc.persistence}` : ""}${svc.flags ? ` -b ${svc.flags}` : ""}`);
      for (const [id, rs] of svc.reals) lines.push(`-a ${flag} ${svc.service} -r ${id} -m -w ${rs.weight}`);
    }
    return lines.length ? `${lines.join("\n")}\n` : "";
  }

  /** /proc/net/ip_vs as the kernel prints it: hex addresses and ports, persistence in jiffies, no flags. */
  procIpvs(): string {
    const hex = (hostPort: string): string => {
      const m = /^\[?(.+?)\]?:(\d+)$/.exec(hostPort) as RegExpExecArray;
      const host = m[1] as string;
      const port = Number(m[2]).toString(16).toUpperCase().padStart(4, "0");
      if (host.includes(":")) return `[${expandIPv6(host)}]:${port}`;
      const bytes = host.split(".").map((b) => Number(b).toString(16).toUpperCase().padStart(2, "0"));
      return `${bytes.join("")}:${port}`;
    };
    const lines = ["IP Virtual Server version 1.2.1 (size=4096)", "Prot LocalAddress:Port Scheduler Flags", "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn"];
    for (const [key, svc] of this.services) {
      if (this.procHides.has(key)) continue;
      lines.push(`${svc.protocol.toUpperCase().padEnd(4)} ${hex(svc.service)} ${svc.scheduler} ${svc.persistence ? `persistent ${svc.persistence * HZ} FFFFFFFF` : ""}`);
      for (const [id, rs] of svc.reals) lines.push(`  -> ${hex(id)}      Masq    ${String(rs.weight).padEnd(6)} ${String(rs.active).padEnd(10)} ${String(rs.inactive).padEnd(10)}`);
    }
    return `${lines.join("\n")}\n`;
  }

  private list(services: Service[]): string {
    const lines = ["IP Virtual Server version 1.2.1 (size=4096)", "Prot LocalAddress:Port Scheduler Flags", "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"];
    for (const svc of services) {
      lines.push(`${svc.protocol.toUpperCase()}  ${svc.service} ${svc.scheduler}${svc.persistence ? ` persistent ${svc.persistence}` : ""}`);
      for (const [id, rs] of svc.reals) lines.push(`  -> ${id.padEnd(28)} Masq    ${rs.weight}      ${rs.active}          ${rs.inactive}`);
    }
    return `${lines.join("\n")}\n`;
  }

  private ipset(args: string[], stdin: string): ExecResult {
    if (args[0] === "save") {
      const lines: string[] = [];
      for (const [name, set] of this.sets) {
        if (args[1] !== undefined && args[1] !== name) continue;
        lines.push(`create ${name} ${set.type}${set.family ? ` family ${set.family}` : ""} ${set.options} bucketsize 12 initval 0x1234`);
        for (const e of set.entries) lines.push(`add ${name} ${e}`);
      }
      if (args[1] !== undefined && lines.length === 0) return fail(`ipset v7.17: The set with the given name does not exist`);
      return ok(lines.length ? `${lines.join("\n")}\n` : "");
    }
    if (args[0] === "list" && args[1] === "-n") return ok([...this.sets.keys()].map((n) => `${n}\n`).join(""));
    if (args[0] === "restore") {
      let n = 0;
      for (const line of stdin.split("\n")) {
        n++;
        const w = line.trim().split(/\s+/).filter((x) => x !== "-exist");
        if (w.length === 0 || w[0] === "") continue;
        const [cmd, name, rest] = [w[0], w[1] as string, w.slice(2)];
        const set = this.sets.get(name);
        if (cmd === "create") {
          if (set) continue;
          const fam = rest.indexOf("family");
          this.sets.set(name, {
            type: rest[0] as string,
            family: fam >= 0 ? (rest[fam + 1] as string) : "",
            options: rest.filter((_, i) => i > 0 && i !== fam && i !== fam + 1).join(" "),
            entries: [],
          });
        } else if (!set) return fail(`ipset v7.17: Error in line ${n}: The set with the given name does not exist`);
        else if (cmd === "add") {
          if (!set.entries.includes(rest[0] as string)) set.entries.push(rest[0] as string);
        } else if (cmd === "del") set.entries = set.entries.filter((e) => e !== rest[0]);
        else if (cmd === "flush") set.entries = [];
        else if (cmd === "destroy") this.sets.delete(name);
      }
      return ok("");
    }
    return fail(`ipset: unknown ${args.join(" ")}`);
  }

  private ip(args: string[], stdin: string): ExecResult {
    if (args.join(" ") === "-j addr show") {
      return ok(
        JSON.stringify(
          [...this.links].map(([ifname, addrs]) => ({
            ifname,
            flags: ifname === "kube-ipvs0" ? ["BROADCAST", "NOARP"] : ["UP"],
            addr_info: addrs.map((local) => ({ family: local.includes(":") ? "inet6" : "inet", local })),
          })),
        ),
      );
    }
    if (args[0] === "link" && args[1] === "add") {
      if (this.links.has(args[2] as string)) return fail("RTNETLINK answers: File exists", 2);
      this.links.set(args[2] as string, []);
      return ok("");
    }
    if (args[0] === "link" && args[1] === "del") return this.links.delete(args[2] as string) ? ok("") : fail("Cannot find device", 1);
    if (args[0] === "link" && args[1] === "show") return this.links.has(args[2] as string) ? ok("") : fail("does not exist", 1);
    if (args[0] === "-force" && args[1] === "-batch") {
      let failed = "";
      for (const line of stdin.split("\n")) {
        const w = line.trim().split(/\s+/);
        if (w[0] !== "addr") continue;
        const ip = (w[2] as string).split("/")[0] as string;
        const addrs = this.links.get(w[4] as string);
        if (!addrs) failed = "Cannot find device";
        else if (w[1] === "add") {
          if (addrs.includes(ip)) failed = "RTNETLINK answers: File exists";
          else addrs.push(ip);
        } else if (w[1] === "del") {
          if (!addrs.includes(ip)) failed = "RTNETLINK answers: Cannot assign requested address";
          else addrs.splice(addrs.indexOf(ip), 1);
        }
      }
      return failed ? fail(failed, 1) : ok("");
    }
    return fail(`ip: unknown ${args.join(" ")}`);
  }

  private iptables(tool: string, args: string[], stdin: string): ExecResult {
    if (tool.endsWith("-save")) {
      const table = args[args.indexOf("-t") + 1];
      const inTable = (key: string) => args.indexOf("-t") < 0 || key.startsWith(`${table}/`);
      const lines = [
        ...[...this.chains].filter(inTable).map((key) => `:${key.split("/")[1]} - [0:0]`),
        ...[...this.savedRules].filter(([key]) => inTable(key)).map(([, line]) => line),
      ];
      return ok(lines.map((l) => `${l}\n`).join(""));
    }
    if (tool.endsWith("-restore")) {
      this.restores.push(stdin);
      let table = "";
      for (const line of stdin.split("\n")) {
        if (line.startsWith("*")) table = line.slice(1);
        else if (line.startsWith(":")) this.chains.add(`${table}/${line.slice(1).split(" ")[0]}`);
      }
      return ok("");
    }
    const rest = args.filter((a, i) => !(a === "-w" || args[i - 1] === "-w"));
    const table = rest[1] as string;
    const verb = rest[2];
    const chain = rest[3] as string;
    const rule = `${table}/${chain} ${rest.slice(4).join(" ")}`;
    if (verb === "-S") return this.chains.has(`${table}/${chain}`) ? ok("") : fail("No chain/target/match by that name.");
    if (verb === "-N") {
      this.chains.add(`${table}/${chain}`);
      return ok("");
    }
    if (verb === "-C") return this.rules.has(rule) ? ok("") : fail("Bad rule");
    if (verb === "-I" || verb === "-A") {
      this.rules.add(rule);
      this.savedRules.set(rule, `-A ${chain} ${rest.slice(4).map((a) => (a.includes(" ") ? `"${a}"` : a)).join(" ")}`);
      return ok("");
    }
    if (verb === "-D") {
      this.savedRules.delete(rule);
      return this.rules.delete(rule) ? ok("") : fail("Bad rule");
    }
    return fail(`iptables: unknown ${args.join(" ")}`);
  }
}

function ok(stdout: string): ExecResult {
  return { code: 0, stdout, stderr: "", timedOut: false };
}

function fail(stderr: string, code = 2): ExecResult {
  return { code, stdout: "", stderr, timedOut: false };
}
