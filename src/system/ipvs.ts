import { bunExec, type Exec, ExecError, type ExecResult, runChecked } from "./exec.ts";

/**
 * IPVS through `ipvsadm`: read the kernel's virtual servers with `ipvsadm -S -n`, write changes as
 * one `ipvsadm -R` batch. `ipvsadm -R` applies line by line and stops at the first failing line,
 * so a batch must be exact for the state it was computed from: `diffIpvs` only emits lines that
 * are valid against `current`.
 */
export type IpvsProtocol = "tcp" | "udp" | "sctp";
/** -m (NAT), -g (direct routing), -i (IP-in-IP tunnel). kproxy uses masq. */
export type IpvsForwarding = "masq" | "route" | "tunnel";

export interface RealServer {
  readonly address: string;
  readonly port: number;
  readonly forwarding: IpvsForwarding;
  readonly weight: number;
}

export interface VirtualServer {
  readonly protocol: IpvsProtocol;
  readonly address: string;
  readonly port: number;
  readonly scheduler: string;
  /** Persistence (ClientIP affinity) timeout in seconds; 0 for none. */
  readonly persistenceTimeout: number;
  /** Scheduler flags as ipvsadm prints them after -b (e.g. sh-fallback, sh-port); sorted. */
  readonly flags: readonly string[];
  readonly realServers: readonly RealServer[];
}

export interface RealServerConnections {
  readonly address: string;
  readonly port: number;
  readonly activeConnections: number;
  readonly inactiveConnections: number;
}

export interface IpvsStats {
  readonly connections: number;
  readonly inPackets: number;
  readonly outPackets: number;
  readonly inBytes: number;
  readonly outBytes: number;
}

export interface IpvsTimeouts {
  /** Seconds; 0 leaves the kernel's value unchanged when setting. */
  readonly tcp: number;
  readonly tcpFin: number;
  readonly udp: number;
}

const PROTOCOL_FLAG: Record<IpvsProtocol, string> = { tcp: "-t", udp: "-u", sctp: "--sctp-service" };
const FLAG_PROTOCOL: Record<string, IpvsProtocol> = {
  "-t": "tcp",
  "--tcp-service": "tcp",
  "-u": "udp",
  "--udp-service": "udp",
  "--sctp-service": "sctp",
};
const FORWARDING_FLAG: Record<IpvsForwarding, string> = { masq: "-m", route: "-g", tunnel: "-i" };
const FLAG_FORWARDING: Record<string, IpvsForwarding> = {
  "-m": "masq",
  "--masquerading": "masq",
  "-g": "route",
  "--gatewaying": "route",
  "-i": "tunnel",
  "--ipip": "tunnel",
};
const LIST_FORWARDING: Record<string, IpvsForwarding> = { Masq: "masq", Route: "route", Tunnel: "tunnel", Local: "route" };
const LIST_PROTOCOL: Record<string, IpvsProtocol> = { TCP: "tcp", UDP: "udp", SCTP: "sctp" };

/** The canonical text of an address, so `fd00:0::1` and `fd00::1` compare equal. */
export function canonicalAddress(address: string): string {
  if (!address.includes(":")) return address;
  try {
    return new URL(`http://[${address}]/`).hostname.slice(1, -1);
  } catch {
    return address.toLowerCase();
  }
}

/** `10.0.0.1:80`, or `[fd00::1]:80` for IPv6, as ipvsadm reads and prints them. */
export function formatHostPort(address: string, port: number): string {
  return address.includes(":") ? `[${address}]:${port}` : `${address}:${port}`;
}

/** Splits `10.0.0.1:80` or `[fd00::1]:80`. */
export function parseHostPort(text: string): { address: string; port: number } {
  const match = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:]+):(\d+)$/.exec(text);
  if (!match) throw new Error(`ipvs: cannot parse address ${JSON.stringify(text)}`);
  return { address: canonicalAddress(match[1] as string), port: Number(match[2]) };
}

/** Identity of a virtual server: protocol, address and port. */
export function virtualServerKey(vs: Pick<VirtualServer, "protocol" | "address" | "port">): string {
  return `${vs.protocol} ${formatHostPort(canonicalAddress(vs.address), vs.port)}`;
}

function realServerKey(rs: Pick<RealServer, "address" | "port">): string {
  return formatHostPort(canonicalAddress(rs.address), rs.port);
}

function serviceArgs(vs: Pick<VirtualServer, "protocol" | "address" | "port">): string {
  return `${PROTOCOL_FLAG[vs.protocol]} ${formatHostPort(vs.address, vs.port)}`;
}

function scheduleArgs(vs: VirtualServer): string {
  let args = ` -s ${vs.scheduler}`;
  if (vs.persistenceTimeout > 0) args += ` -p ${vs.persistenceTimeout}`;
  if (vs.flags.length > 0) args += ` -b ${[...vs.flags].sort().join(",")}`;
  return args;
}

/** `ipvsadm -R` lines, one concept each. */
export const ipvsLine = {
  addVirtualServer: (vs: VirtualServer): string => `-A ${serviceArgs(vs)}${scheduleArgs(vs)}`,
  editVirtualServer: (vs: VirtualServer): string => `-E ${serviceArgs(vs)}${scheduleArgs(vs)}`,
  deleteVirtualServer: (vs: Pick<VirtualServer, "protocol" | "address" | "port">): string => `-D ${serviceArgs(vs)}`,
  addRealServer: (vs: Pick<VirtualServer, "protocol" | "address" | "port">, rs: RealServer): string =>
    `-a ${serviceArgs(vs)} -r ${formatHostPort(rs.address, rs.port)} ${FORWARDING_FLAG[rs.forwarding]} -w ${rs.weight}`,
  editRealServer: (vs: Pick<VirtualServer, "protocol" | "address" | "port">, rs: RealServer): string =>
    `-e ${serviceArgs(vs)} -r ${formatHostPort(rs.address, rs.port)} ${FORWARDING_FLAG[rs.forwarding]} -w ${rs.weight}`,
  deleteRealServer: (vs: Pick<VirtualServer, "protocol" | "address" | "port">, rs: Pick<RealServer, "address" | "port">): string =>
    `-d ${serviceArgs(vs)} -r ${formatHostPort(rs.address, rs.port)}`,
};

interface MutableVirtualServer {
  protocol: IpvsProtocol;
  address: string;
  port: number;
  scheduler: string;
  persistenceTimeout: number;
  flags: string[];
  realServers: RealServer[];
}

/**
 * Parses `ipvsadm -S -n`. Firewall-mark services (`-f`) are not kproxy's and are left out, as are
 * their real servers; so is anything on a line kproxy does not model (thresholds, -M, --pe).
 */
export function parseIpvsSave(text: string): VirtualServer[] {
  const servers = new Map<string, MutableVirtualServer>();
  for (const raw of text.split("\n")) {
    const words = raw.trim().split(/\s+/).filter(Boolean);
    const command = words[0];
    if (command !== "-A" && command !== "-a") continue;
    let protocol: IpvsProtocol | undefined;
    let service: string | undefined;
    let scheduler = "wlc";
    let persistenceTimeout = 0;
    let flags: string[] = [];
    let real: string | undefined;
    let forwarding: IpvsForwarding = "route";
    let weight = 1;
    for (let i = 1; i < words.length; i++) {
      const word = words[i] as string;
      const next = words[i + 1];
      if (word in FLAG_PROTOCOL && next !== undefined) {
        protocol = FLAG_PROTOCOL[word];
        service = next;
        i++;
      } else if ((word === "-s" || word === "--scheduler") && next !== undefined) {
        scheduler = next;
        i++;
      } else if ((word === "-p" || word === "--persistent") && next !== undefined && /^\d+$/.test(next)) {
        persistenceTimeout = Number(next);
        i++;
      } else if ((word === "-b" || word === "--sched-flags") && next !== undefined) {
        flags = next.split(",").filter(Boolean).sort();
        i++;
      } else if ((word === "-r" || word === "--real-server") && next !== undefined) {
        real = next;
        i++;
      } else if (word in FLAG_FORWARDING) {
        forwarding = FLAG_FORWARDING[word] as IpvsForwarding;
      } else if ((word === "-w" || word === "--weight") && next !== undefined) {
        weight = Number(next);
        i++;
      }
    }
    if (protocol === undefined || service === undefined) continue;
    const { address, port } = parseHostPort(service);
    const key = virtualServerKey({ protocol, address, port });
    if (command === "-A") {
      servers.set(key, { protocol, address, port, scheduler, persistenceTimeout, flags, realServers: [] });
    } else if (real !== undefined) {
      const rs = parseHostPort(real);
      servers.get(key)?.realServers.push({ address: rs.address, port: rs.port, forwarding, weight });
    }
  }
  return [...servers.values()];
}

/**
 * Parses `ipvsadm -L -n`: per virtual server key, each real server's active and inactive
 * connection counts (graceful termination deletes a real server once both are 0).
 */
export function parseIpvsConnections(text: string): Map<string, RealServerConnections[]> {
  const result = new Map<string, RealServerConnections[]>();
  let current: RealServerConnections[] | undefined;
  for (const line of text.split("\n")) {
    const service = /^(TCP|UDP|SCTP|FWM)\s+(\S+)/.exec(line);
    if (service) {
      const protocol = LIST_PROTOCOL[service[1] as string];
      if (protocol === undefined) {
        current = undefined;
        continue;
      }
      const { address, port } = parseHostPort(service[2] as string);
      current = [];
      result.set(virtualServerKey({ protocol, address, port }), current);
      continue;
    }
    const real = /^\s+->\s+(\S+)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)/.exec(line);
    if (real && current && (real[2] as string) in LIST_FORWARDING) {
      const { address, port } = parseHostPort(real[1] as string);
      current.push({ address, port, activeConnections: Number(real[4]), inactiveConnections: Number(real[5]) });
    }
  }
  return result;
}

/** The kernel's own listing of the IPVS table (of the reading process's network namespace). */
export const IPVS_PROC_FILE = "/proc/net/ip_vs";

export interface IpvsTable {
  /** Virtual servers as `parseIpvsSave` gives them, except that scheduler flags are not listed. */
  readonly virtualServers: VirtualServer[];
  /** Active and inactive connections per real server, by virtual server key. */
  readonly connections: Map<string, RealServerConnections[]>;
}

/** `0A600001:0050` or `[fd00:0000:…:0001]:0050`, as /proc/net/ip_vs prints addresses. */
function parseProcHostPort(text: string): { address: string; port: number } | undefined {
  const colon = text.lastIndexOf(":");
  if (colon < 0) return undefined;
  const port = Number.parseInt(text.slice(colon + 1), 16);
  const host = text.slice(0, colon);
  if (host.startsWith("[")) return { address: canonicalAddress(host.slice(1, -1)), port };
  if (host.length !== 8) return undefined;
  const v = Number.parseInt(host, 16);
  return { address: `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`, port };
}

/**
 * Forwarding names in /proc/net/ip_vs. The kernel reports a masquerading real server whose address
 * is local as `Local`; kproxy writes only masquerading ones, so that reads back as masq.
 */
const PROC_FORWARDING: Record<string, IpvsForwarding> = { Masq: "masq", Local: "masq", Route: "route", Tunnel: "tunnel" };

/**
 * Parses /proc/net/ip_vs: the whole table in one read, with hex addresses and ports, persistence
 * and per real server weight, active and inactive connections. The kernel prints the persistence
 * timeout in jiffies (`persistent 900000 FFFFFFFF` for 3600 s at HZ 250): pass the kernel's HZ to
 * get seconds. It does not show scheduler flags, so its virtual servers carry none.
 * Firewall-mark services and their real servers are left out, as in `parseIpvsSave`.
 */
export function parseProcIpvs(text: string, jiffiesPerSecond = 1): IpvsTable {
  const virtualServers: MutableVirtualServer[] = [];
  const connections = new Map<string, RealServerConnections[]>();
  let current: MutableVirtualServer | undefined;
  let counts: RealServerConnections[] | undefined;
  for (const line of text.split("\n")) {
    if (line.startsWith("  -> ")) {
      if (!current || !counts) continue;
      const w = line.slice(5).trim().split(/\s+/);
      const rs = parseProcHostPort(w[0] ?? "");
      const forwarding = PROC_FORWARDING[w[1] ?? ""];
      if (!rs || forwarding === undefined || w.length < 5) continue;
      current.realServers.push({ address: rs.address, port: rs.port, forwarding, weight: Number(w[2]) });
      counts.push({ address: rs.address, port: rs.port, activeConnections: Number(w[3]), inactiveConnections: Number(w[4]) });
      continue;
    }
    current = undefined;
    counts = undefined;
    const w = line.trim().split(/\s+/);
    const protocol = LIST_PROTOCOL[w[0] ?? ""];
    if (protocol === undefined) continue;
    const service = parseProcHostPort(w[1] ?? "");
    if (!service || w[2] === undefined) continue;
    const at = w.indexOf("persistent", 3);
    const persistenceTimeout = at > 0 ? Math.round(Number(w[at + 1]) / jiffiesPerSecond) : 0;
    current = { protocol, address: service.address, port: service.port, scheduler: w[2], persistenceTimeout, flags: [], realServers: [] };
    counts = [];
    virtualServers.push(current);
    connections.set(virtualServerKey(current), counts);
  }
  return { virtualServers, connections };
}

/**
 * Parses `ipvsadm -L -n --stats --exact`: counters per virtual server key, and per real server
 * under `<virtual server key> -> <address:port>`.
 */
export function parseIpvsStats(text: string): Map<string, IpvsStats> {
  const result = new Map<string, IpvsStats>();
  let service: string | undefined;
  for (const line of text.split("\n")) {
    const match = /^(\s+->\s+)?(TCP|UDP|SCTP|FWM)?\s*(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$/.exec(line);
    if (!match) continue;
    const stats: IpvsStats = {
      connections: Number(match[4]),
      inPackets: Number(match[5]),
      outPackets: Number(match[6]),
      inBytes: Number(match[7]),
      outBytes: Number(match[8]),
    };
    if (match[1] === undefined) {
      const protocol = LIST_PROTOCOL[match[2] ?? ""];
      if (protocol === undefined) {
        service = undefined;
        continue;
      }
      const { address, port } = parseHostPort(match[3] as string);
      service = virtualServerKey({ protocol, address, port });
      result.set(service, stats);
    } else if (service !== undefined) {
      const { address, port } = parseHostPort(match[3] as string);
      result.set(`${service} -> ${formatHostPort(address, port)}`, stats);
    }
  }
  return result;
}

/** Parses `ipvsadm -L -n --timeout`: `Timeout (tcp tcpfin udp): 900 120 300`. */
export function parseIpvsTimeouts(text: string): IpvsTimeouts {
  const match = /Timeout \(tcp tcpfin udp\):\s+(\d+)\s+(\d+)\s+(\d+)/.exec(text);
  if (!match) throw new Error(`ipvs: cannot parse timeouts from ${JSON.stringify(text.trim())}`);
  return { tcp: Number(match[1]), tcpFin: Number(match[2]), udp: Number(match[3]) };
}

function sameSchedule(a: VirtualServer, b: VirtualServer): boolean {
  if (a.scheduler !== b.scheduler || a.persistenceTimeout !== b.persistenceTimeout || a.flags.length !== b.flags.length) return false;
  return a.flags.length === 0 || [...a.flags].sort().join(",") === [...b.flags].sort().join(",");
}

/**
 * The `ipvsadm -R` lines that turn `current` into `wanted`. New servers come first and deletions
 * last, so traffic always has somewhere to go while the batch runs. Every virtual server in
 * `current` that is not wanted is deleted: pass only the servers this caller owns.
 */
export function diffIpvs(current: readonly VirtualServer[], wanted: readonly VirtualServer[]): string[] {
  const have = new Map(current.map((vs) => [virtualServerKey(vs), vs]));
  const want = new Map(wanted.map((vs) => [virtualServerKey(vs), vs]));
  const adds: string[] = [];
  const edits: string[] = [];
  const deletes: string[] = [];
  for (const [key, vs] of want) {
    const existing = have.get(key);
    if (!existing) {
      adds.push(ipvsLine.addVirtualServer(vs));
      const seen = new Set<string>();
      for (const rs of vs.realServers) {
        if (seen.has(realServerKey(rs))) continue;
        seen.add(realServerKey(rs));
        adds.push(ipvsLine.addRealServer(vs, rs));
      }
      continue;
    }
    if (!sameSchedule(existing, vs)) edits.push(ipvsLine.editVirtualServer(vs));
    const haveReal = new Map(existing.realServers.map((rs) => [realServerKey(rs), rs]));
    const wantReal = new Map(vs.realServers.map((rs) => [realServerKey(rs), rs]));
    for (const [rsKey, rs] of wantReal) {
      const old = haveReal.get(rsKey);
      if (!old) adds.push(ipvsLine.addRealServer(vs, rs));
      else if (old.weight !== rs.weight || old.forwarding !== rs.forwarding) edits.push(ipvsLine.editRealServer(vs, rs));
    }
    for (const [rsKey, rs] of haveReal) {
      if (!wantReal.has(rsKey)) deletes.push(ipvsLine.deleteRealServer(vs, rs));
    }
  }
  for (const [key, vs] of have) {
    if (!want.has(key)) deletes.push(ipvsLine.deleteVirtualServer(vs));
  }
  return [...adds, ...edits, ...deletes];
}

/** A command started before its input is known; its stdin is written and closed later. */
export interface StartedCommand {
  write(text: string): void;
  /** Closes stdin and waits for the command to exit. */
  finish(): Promise<ExecResult>;
}

/** An Exec that can also start a command first and feed it afterwards. */
export interface StreamingExec extends Exec {
  start(argv: readonly string[], options?: { readonly timeoutMs?: number }): StartedCommand;
}

export function canStream(exec: Exec): exec is StreamingExec {
  return typeof (exec as Partial<StreamingExec>).start === "function";
}

/**
 * `exec` (bunExec by default) plus `start()` on Bun.spawn with a piped stdin. `start()` always
 * spawns in this process's own namespaces, so wrap only an Exec that does the same.
 */
export function streamingExec(exec: Exec = bunExec): StreamingExec {
  return {
    run: (argv, options) => exec.run(argv, options),
    start(argv, options = {}) {
      let child: ReturnType<typeof Bun.spawn<"pipe", "pipe", "pipe">>;
      try {
        child = Bun.spawn([...argv], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
      } catch (err) {
        const failed: ExecResult = { code: 127, stdout: "", stderr: `${argv[0]}: ${(err as Error).message}`, timedOut: false };
        return { write: () => {}, finish: async () => failed };
      }
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        child.kill("SIGKILL");
      }, options.timeoutMs ?? 60_000);
      const done = Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited])
        .then(([stdout, stderr, code]): ExecResult => ({ code, stdout, stderr, timedOut }))
        .finally(() => clearTimeout(timer));
      done.catch(() => {});
      return {
        write: (text) => {
          // A child that already died (a bad first line) has closed its end; its exit says why.
          try {
            child.stdin.write(text);
          } catch {}
        },
        finish: async () => {
          try {
            await child.stdin.end();
          } catch {}
          return done;
        },
      };
    },
  };
}

/** An `ipvsadm -R` under way whose batch comes later (see Ipvsadm.startBatch). */
export interface PendingIpvsBatch {
  /** Sends the batch and waits for it; an empty batch just lets the tool go. Call once. */
  apply(batch: string | readonly string[]): Promise<void>;
}

/** ipvsadm through an Exec. */
export class Ipvsadm {
  constructor(
    private readonly exec: Exec,
    private readonly binary = "ipvsadm",
    private readonly procFile = IPVS_PROC_FILE,
  ) {}

  /** Whether the kernel has IPVS; `reason` carries ipvsadm's own words when it has not. */
  async available(): Promise<{ ok: true } | { ok: false; reason: string }> {
    const result = await this.exec.run([this.binary, "-L", "-n"], { timeoutMs: 10_000 });
    if (result.code === 0) return { ok: true };
    const reason = (result.stderr.trim() || `${this.binary} exited ${result.code}`).split("\n").slice(0, 2).join("; ");
    return { ok: false, reason };
  }

  /** The kernel's virtual servers (tcp, udp and sctp), from `ipvsadm -S -n`. */
  async save(): Promise<VirtualServer[]> {
    return parseIpvsSave((await runChecked(this.exec, [this.binary, "-S", "-n"], { timeoutMs: 60_000 })).stdout);
  }

  /**
   * The whole table from /proc/net/ip_vs, read with `cat` through the Exec (so it is the table of
   * the namespace the Exec runs in). One small process, where `ipvsadm -S -n` asks the kernel
   * once per virtual server: about 18 × faster at 2,600 virtual servers under emulation.
   * Scheduler flags are not in it; use `save()` where they matter.
   */
  async table(): Promise<IpvsTable> {
    const raw = await this.rawTable();
    const persistent = raw.virtualServers.find((vs) => vs.persistenceTimeout > 0);
    if (!persistent) return raw;
    this.hz ??= await this.kernelHz(persistent);
    const hz = this.hz;
    return {
      virtualServers: raw.virtualServers.map((vs) => (vs.persistenceTimeout > 0 ? { ...vs, persistenceTimeout: Math.round(vs.persistenceTimeout / hz) } : vs)),
      connections: raw.connections,
    };
  }

  /** The table with persistence timeouts in jiffies. */
  private async rawTable(): Promise<IpvsTable> {
    return parseProcIpvs((await runChecked(this.exec, ["cat", this.procFile], { timeoutMs: 60_000 })).stdout);
  }

  /** The kernel's HZ, once per process: a persistent virtual server's jiffies over its seconds (`ipvsadm -L`). */
  private hz: number | undefined;
  private async kernelHz(vs: VirtualServer): Promise<number> {
    const argv = [this.binary, "-L", "-n", PROTOCOL_FLAG[vs.protocol], formatHostPort(vs.address, vs.port)];
    const listed = await runChecked(this.exec, argv, { timeoutMs: 10_000 });
    const seconds = Number(/ persistent (\d+)/.exec(listed.stdout)?.[1]);
    const hz = vs.persistenceTimeout / seconds;
    if (!Number.isInteger(hz) || hz <= 0) throw new Error(`ipvs: cannot tell the kernel's HZ from ${vs.persistenceTimeout} jiffies and ${JSON.stringify(listed.stdout.trim())}`);
    return hz;
  }

  /**
   * Active and inactive connections per real server, keyed by virtualServerKey: of one virtual
   * server (`ipvsadm -L -n` of that service; empty when it does not exist), or of all of them from
   * one read of /proc/net/ip_vs.
   */
  async connections(service?: Pick<VirtualServer, "protocol" | "address" | "port">): Promise<Map<string, RealServerConnections[]>> {
    if (service === undefined) return (await this.rawTable()).connections;
    const key = virtualServerKey(service);
    const argv = [this.binary, "-L", "-n", PROTOCOL_FLAG[service.protocol], formatHostPort(service.address, service.port)];
    const result = await this.exec.run(argv, { timeoutMs: 10_000 });
    if (result.timedOut) throw new ExecError(argv, result);
    // A virtual server that is gone has no connections (ipvsadm: "No such service").
    if (result.code !== 0) return new Map([[key, []]]);
    const listed = parseIpvsConnections(result.stdout);
    return new Map([[key, listed.get(key) ?? []]]);
  }

  async stats(): Promise<Map<string, IpvsStats>> {
    return parseIpvsStats((await runChecked(this.exec, [this.binary, "-L", "-n", "--stats", "--exact"], { timeoutMs: 60_000 })).stdout);
  }

  /** Runs one `ipvsadm -R` batch. Throws ExecError at the first line the kernel refuses. */
  async applyBatch(batch: string | readonly string[]): Promise<void> {
    const text = typeof batch === "string" ? batch : batch.join("\n");
    if (text.trim() === "") return;
    await runChecked(this.exec, [this.binary, "-R"], { stdin: text.endsWith("\n") ? text : `${text}\n`, timeoutMs: 300_000 });
  }

  /**
   * Starts `ipvsadm -R` before the batch is known, when the Exec can stream: the tool's start-up
   * (tens of milliseconds: loading, netlink set-up) then overlaps the planning of the batch,
   * and a small change costs little more than the kernel's own work. Otherwise `apply` is
   * `applyBatch`.
   */
  startBatch(): PendingIpvsBatch {
    if (!canStream(this.exec)) return { apply: (batch) => this.applyBatch(batch) };
    const argv = [this.binary, "-R"];
    const started = this.exec.start(argv, { timeoutMs: 300_000 });
    return {
      apply: async (batch) => {
        const text = typeof batch === "string" ? batch : batch.join("\n");
        if (text.trim() === "") {
          // Nothing to send: the tool reads end of input and exits; nobody waits for it.
          void started.finish().catch(() => {});
          return;
        }
        started.write(text.endsWith("\n") ? text : `${text}\n`);
        const result = await started.finish();
        if (result.code !== 0 || result.timedOut) throw new ExecError(argv, result);
      },
    };
  }

  /** `ipvsadm --set tcp tcpfin udp`; a 0 leaves that timeout as it is. Skipped when all are 0. */
  async setTimeouts(timeouts: IpvsTimeouts): Promise<void> {
    if (timeouts.tcp === 0 && timeouts.tcpFin === 0 && timeouts.udp === 0) return;
    await runChecked(this.exec, [this.binary, "--set", String(timeouts.tcp), String(timeouts.tcpFin), String(timeouts.udp)], {
      timeoutMs: 10_000,
    });
  }

  async timeouts(): Promise<IpvsTimeouts> {
    return parseIpvsTimeouts((await runChecked(this.exec, [this.binary, "-L", "-n", "--timeout"], { timeoutMs: 10_000 })).stdout);
  }

  /** `ipvsadm -C`: removes every virtual server, as upstream's --cleanup does. */
  async clear(): Promise<void> {
    await runChecked(this.exec, [this.binary, "-C"], { timeoutMs: 60_000 });
  }

  /** Deletes one virtual server and its real servers. */
  async deleteVirtualServer(vs: Pick<VirtualServer, "protocol" | "address" | "port">): Promise<void> {
    await this.applyBatch([ipvsLine.deleteVirtualServer(vs)]);
  }
}
