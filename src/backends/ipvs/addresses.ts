/**
 * The dummy interface kube-ipvs0: every address IPVS answers for must be local, or the kernel would
 * route packets for it away before IPVS sees them. The interface stays down, so the node never
 * answers ARP for these addresses on a real link.
 */
import { canonicalAddress } from "../../system/ipvs.ts";
import { type Exec, runChecked } from "../../system/exec.ts";
import { DUMMY_INTERFACE } from "./plan.ts";

export interface NodeAddresses {
  /** Whether kube-ipvs0 exists. */
  readonly dummyExists: boolean;
  /** Addresses on kube-ipvs0. */
  readonly dummy: readonly string[];
  /** Every other local address (all interfaces but kube-ipvs0), loopback included. */
  readonly others: readonly string[];
}

interface IpAddrJson {
  ifname?: string;
  addr_info?: { family?: string; local?: string }[];
}

/** Parses `ip -j addr show`. */
export function parseIpAddr(json: string, device = DUMMY_INTERFACE): NodeAddresses {
  const links = JSON.parse(json.trim() === "" ? "[]" : json) as IpAddrJson[];
  let dummyExists = false;
  const dummy: string[] = [];
  const others: string[] = [];
  for (const link of links) {
    const mine = link.ifname === device;
    if (mine) dummyExists = true;
    for (const info of link.addr_info ?? []) {
      if (typeof info.local !== "string" || (info.family !== "inet" && info.family !== "inet6")) continue;
      (mine ? dummy : others).push(canonicalAddress(info.local));
    }
  }
  return { dummyExists, dummy, others };
}

export async function readNodeAddresses(exec: Exec): Promise<NodeAddresses> {
  return parseIpAddr((await runChecked(exec, ["ip", "-j", "addr", "show"], { timeoutMs: 60_000 })).stdout);
}

/** Creates kube-ipvs0 (a dummy link, left down). */
export async function ensureDummyInterface(exec: Exec): Promise<void> {
  const result = await exec.run(["ip", "link", "add", DUMMY_INTERFACE, "type", "dummy"], { timeoutMs: 10_000 });
  if (result.code !== 0 && !/File exists/.test(result.stderr)) await runChecked(exec, ["ip", "link", "show", DUMMY_INTERFACE]);
}

export async function deleteDummyInterface(exec: Exec): Promise<boolean> {
  const result = await exec.run(["ip", "link", "del", DUMMY_INTERFACE], { timeoutMs: 10_000 });
  return result.code === 0;
}

function prefixed(ip: string): string {
  return ip.includes(":") ? `${ip}/128` : `${ip}/32`;
}

/** `ip -batch` lines that add and remove addresses on kube-ipvs0. */
export function addressBatch(add: readonly string[], remove: readonly string[]): string[] {
  const lines: string[] = [];
  for (const ip of add) lines.push(`addr add ${prefixed(ip)} dev ${DUMMY_INTERFACE}${ip.includes(":") ? " nodad" : ""}`);
  for (const ip of remove) lines.push(`addr del ${prefixed(ip)} dev ${DUMMY_INTERFACE}`);
  return lines;
}

/**
 * Adds and removes addresses in one `ip -batch` (one process however many). `-force` keeps going
 * past a failing line, so one address the kernel refuses does not leave the rest undone; the
 * failure is still reported.
 */
export async function changeAddresses(exec: Exec, add: readonly string[], remove: readonly string[]): Promise<void> {
  const lines = addressBatch(add, remove);
  if (lines.length === 0) return;
  await runChecked(exec, ["ip", "-force", "-batch", "-"], { stdin: `${lines.join("\n")}\n`, timeoutMs: 300_000 });
}
