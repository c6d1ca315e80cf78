/**
 * Stale conntrack entries for UDP and SCTP services. These protocols have no connection teardown
 * the kernel could see, so an entry NATed to an endpoint that is gone keeps sending a client's
 * packets into the void for as long as the client keeps its source port (the classic DNS outage);
 * likewise an entry created while a service had no endpoints (rejected) stays cached after
 * endpoints appear. After a successful sync, kproxy deletes those entries, as upstream's
 * deleteUDPEndpointConnections does.
 */
import type { Logger } from "../../log.ts";
import { categorizeEndpoints } from "../../model/topology.ts";
import type { Endpoint, Protocol, ServicePort, Snapshot } from "../../model/types.ts";
import type { Conntrack, ConntrackFilter } from "../../system/conntrack.ts";
import type { CategorizeEndpoints } from "./rules.ts";

/** Flows a sync makes stale: the filters the Conntrack tool deletes by. */
export type ConntrackOp = ConntrackFilter;

const CONNECTIONLESS: ReadonlySet<Protocol> = new Set(["UDP", "SCTP"]);
const NONE: readonly Endpoint[] = [];

function reachable(snapshot: Snapshot | undefined, sp: ServicePort | undefined, categorize: CategorizeEndpoints): readonly Endpoint[] {
  if (!snapshot || !sp) return NONE;
  return categorize(sp, snapshot.endpoints.get(sp.key) ?? NONE, snapshot.node).allReachableEndpoints;
}

function serviceIPs(sp: ServicePort): string[] {
  return [sp.clusterIP, ...sp.externalIPs, ...sp.loadBalancerIPs].filter((ip) => ip !== "" && ip !== "None");
}

/**
 * What to delete between the rules of `previous` and those of `next`. `keys` narrows the service
 * ports looked at (the changed ones of a partial sync); all of both snapshots otherwise.
 */
export function staleConntrackOps(
  previous: Snapshot | undefined,
  next: Snapshot,
  options: { readonly categorize?: CategorizeEndpoints; readonly keys?: Iterable<string> } = {},
): ConntrackOp[] {
  const categorize = options.categorize ?? categorizeEndpoints;
  const keys = new Set<string>();
  if (options.keys) {
    for (const key of options.keys) keys.add(key);
  } else {
    for (const [key, sp] of previous?.services ?? []) if (CONNECTIONLESS.has(sp.protocol)) keys.add(key);
    for (const [key, sp] of next.services) if (CONNECTIONLESS.has(sp.protocol)) keys.add(key);
  }

  const ops = new Map<string, ConntrackOp>();
  const add = (op: ConntrackOp) => ops.set(JSON.stringify(op), op);
  for (const key of keys) {
    const before = previous?.services.get(key);
    const after = next.services.get(key);
    const sp = after ?? before;
    if (!sp || !CONNECTIONLESS.has(sp.protocol)) continue;
    const { family, protocol } = sp;
    const beforeEndpoints = reachable(previous, before, categorize);
    const afterEndpoints = reachable(next, after, categorize);

    if (before) {
      const kept = new Set(afterEndpoints.map((ep) => `${ep.ip}:${ep.port}`));
      for (const ep of beforeEndpoints) {
        if (kept.has(`${ep.ip}:${ep.port}`)) continue;
        for (const ip of serviceIPs(before)) add({ kind: "serviceNAT", family, protocol, serviceIP: ip, endpointIP: ep.ip });
        if (before.nodePort !== 0) add({ kind: "portNAT", family, protocol, port: before.nodePort, endpointIP: ep.ip });
      }
    }
    if (after && afterEndpoints.length > 0 && beforeEndpoints.length === 0) {
      for (const ip of serviceIPs(after)) add({ kind: "serviceIP", family, protocol, ip });
      if (after.nodePort !== 0) add({ kind: "port", family, protocol, port: after.nodePort });
    }
  }
  return [...ops.values()];
}

/**
 * Runs the deletions, all in one `conntrack -R` (a large sync asks for hundreds, and a process each
 * took seconds); if that fails, one by one, so that one bad deletion does not keep the others from
 * running. Failures are logged (the rules are right, only old flows linger), never thrown.
 */
export async function clearStaleConntrack(conntrack: Conntrack, ops: readonly ConntrackOp[], logger: Logger): Promise<number> {
  if (ops.length === 0) return 0;
  try {
    await conntrack.deleteAll(ops);
    return 0;
  } catch (err) {
    logger.debug(2, "Batched conntrack deletion failed; deleting one by one", { err, deletions: ops.length });
  }
  let failures = 0;
  for (const op of ops) {
    try {
      await conntrack.deleteOne(op);
    } catch (err) {
      failures++;
      // One line is enough to explain a missing conntrack binary; the rest would repeat it.
      if (failures === 1) logger.warn("Could not delete stale conntrack entries", { op: op.kind, err, pending: ops.length });
    }
  }
  return failures;
}
