/**
 * Which endpoints a service port uses on this node, exactly as upstream's CategorizeEndpoints:
 * Cluster policy takes ready endpoints narrowed by topology hints, Local policy takes this node's
 * ready endpoints, and each falls back (independently) to serving-and-terminating endpoints when it
 * has no ready one.
 */
import { endpointString } from "./endpoints.ts";
import type { Endpoint, NodeInfo, ServicePort } from "./types.ts";

export interface CategorizedEndpoints {
  /** Endpoints for Cluster-policy traffic; empty when the port never uses Cluster policy. */
  readonly clusterEndpoints: readonly Endpoint[];
  /** Endpoints for Local-policy traffic; empty when the port never uses Local policy. */
  readonly localEndpoints: readonly Endpoint[];
  /** Union of the two: every endpoint some traffic from this node may reach. */
  readonly allReachableEndpoints: readonly Endpoint[];
  /**
   * Whether the service has usable endpoints anywhere in the cluster (may be true while
   * allReachableEndpoints is empty): backends REJECT when false, DROP Local traffic when true.
   */
  readonly hasAnyEndpoints: boolean;
}

export interface TopologyOptions {
  /**
   * Honour node hints (trafficDistribution PreferSameNode). Upstream's PreferSameTrafficDistribution
   * gate: beta and on by default since 1.34, GA (locked on) in 1.35.
   */
  readonly preferSameNode?: boolean;
}

export type TopologyMode = "" | "PreferSameZone" | "PreferSameNode";

/** Traffic reaches the port from outside the cluster network (NodePort, LoadBalancer IP or externalIP). */
export function externallyAccessible(port: ServicePort): boolean {
  return port.nodePort !== 0 || port.loadBalancerIPs.length > 0 || port.externalIPs.length > 0;
}

/** Cluster endpoints are needed for internal Cluster policy, and for any external traffic (short-circuit). */
export function usesClusterEndpoints(port: ServicePort): boolean {
  return !port.internalPolicyLocal || externallyAccessible(port);
}

export function usesLocalEndpoints(port: ServicePort): boolean {
  return port.internalPolicyLocal || (port.externalPolicyLocal && externallyAccessible(port));
}

const EMPTY: readonly Endpoint[] = Object.freeze([]);

export function topologyModeFromHints(endpoints: readonly Endpoint[], nodeName: string, zone: string, preferSameNode = true): TopologyMode {
  let hasReady = false;
  let hasForNode = false;
  let allNodeHints = true;
  let hasForZone = false;
  let allZoneHints = true;
  for (const ep of endpoints) {
    if (!ep.ready) continue;
    hasReady = true;
    if (ep.nodeHints.length === 0) allNodeHints = false;
    else if (ep.nodeHints.includes(nodeName)) hasForNode = true;
    if (ep.zoneHints.length === 0) allZoneHints = false;
    else if (ep.zoneHints.includes(zone)) hasForZone = true;
  }
  if (!hasReady) return "";
  if (preferSameNode && allNodeHints && hasForNode) return "PreferSameNode";
  if (allZoneHints && hasForZone) return "PreferSameZone";
  return "";
}

function availableForTopology(ep: Endpoint, mode: TopologyMode, nodeName: string, zone: string): boolean {
  switch (mode) {
    case "":
      return true;
    case "PreferSameNode":
      return ep.nodeHints.includes(nodeName);
    case "PreferSameZone":
      return ep.zoneHints.includes(zone);
  }
}

function allReady(endpoints: readonly Endpoint[]): boolean {
  for (let i = 0; i < endpoints.length; i++) if (!(endpoints[i] as Endpoint).ready) return false;
  return true;
}

export function categorizeEndpoints(
  port: ServicePort,
  endpoints: readonly Endpoint[],
  node: Pick<NodeInfo, "name" | "zone">,
  options: TopologyOptions = {},
): CategorizedEndpoints {
  if (endpoints.length === 0) {
    return { clusterEndpoints: EMPTY, localEndpoints: EMPTY, allReachableEndpoints: EMPTY, hasAnyEndpoints: false };
  }
  let clusterEndpoints: readonly Endpoint[] = EMPTY;
  let localEndpoints: readonly Endpoint[] = EMPTY;
  let hasAnyEndpoints = false;
  let mode: TopologyMode = "";
  let useServingTerminating = false;

  const usesCluster = usesClusterEndpoints(port);
  if (usesCluster) {
    mode = topologyModeFromHints(endpoints, node.name, node.zone, options.preferSameNode ?? true);
    // Usually every endpoint is ready and no topology applies: the list is then its own selection.
    clusterEndpoints =
      mode === "" && allReady(endpoints)
        ? endpoints
        : endpoints.filter((ep) => ep.ready && availableForTopology(ep, mode, node.name, node.zone));
    // Topology was already ignored when no ready endpoint matched it, so an empty list here means
    // no ready endpoint exists anywhere.
    if (clusterEndpoints.length === 0) clusterEndpoints = endpoints.filter((ep) => ep.serving && ep.terminating);
    if (clusterEndpoints.length > 0) hasAnyEndpoints = true;
  }

  if (!usesLocalEndpoints(port)) {
    return { clusterEndpoints, localEndpoints, allReachableEndpoints: clusterEndpoints, hasAnyEndpoints };
  }

  let hasLocalReady = false;
  let hasLocalServingTerminating = false;
  for (const ep of endpoints) {
    if (ep.ready) {
      hasAnyEndpoints = true;
      if (ep.isLocal) hasLocalReady = true;
    } else if (ep.serving && ep.terminating) {
      hasAnyEndpoints = true;
      if (ep.isLocal) hasLocalServingTerminating = true;
    }
  }
  if (hasLocalReady) {
    localEndpoints = endpoints.filter((ep) => ep.isLocal && ep.ready);
  } else if (hasLocalServingTerminating) {
    useServingTerminating = true;
    localEndpoints = endpoints.filter((ep) => ep.isLocal && ep.serving && ep.terminating);
  }

  if (!usesCluster) {
    return { clusterEndpoints, localEndpoints, allReachableEndpoints: localEndpoints, hasAnyEndpoints };
  }
  if (mode === "" && !useServingTerminating) {
    // Every ready endpoint is a cluster endpoint, so the local ones are already included.
    return { clusterEndpoints, localEndpoints, allReachableEndpoints: clusterEndpoints, hasAnyEndpoints };
  }
  const union = new Map<string, Endpoint>();
  for (const ep of clusterEndpoints) union.set(endpointString(ep.ip, ep.port), ep);
  for (const ep of localEndpoints) union.set(endpointString(ep.ip, ep.port), ep);
  return { clusterEndpoints, localEndpoints, allReachableEndpoints: [...union.values()], hasAnyEndpoints };
}
