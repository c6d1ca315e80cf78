/**
 * The proxy model every backend consumes: one entry per service port and IP family, the endpoints
 * merged from that service's EndpointSlices, and facts about this node. Plain readonly data, so a
 * snapshot can be handed to a sync and never changes under it.
 */
export type Protocol = "TCP" | "UDP" | "SCTP";
export type IPFamily = "IPv4" | "IPv6";
export type ServiceType = "ClusterIP" | "NodePort" | "LoadBalancer";

export type SessionAffinity =
  | { readonly type: "None" }
  | { readonly type: "ClientIP"; readonly timeoutSeconds: number };

export interface ServicePort {
  /** Unique key in a snapshot: `${family}/${namespace}/${name}:${portName}/${protocol}`. */
  readonly key: string;
  readonly namespace: string;
  readonly name: string;
  /** The port's name; "" for an unnamed (single) port. */
  readonly portName: string;
  /**
   * Upstream's ServicePortName string: `ns/name:portName`, or `ns/name` when the port is unnamed.
   * Chain-name hashing uses this plus the lower-case protocol.
   */
  readonly servicePortName: string;
  readonly protocol: Protocol;
  readonly family: IPFamily;
  readonly type: ServiceType;
  /** The ClusterIP of this family. */
  readonly clusterIP: string;
  readonly port: number;
  /** 0 when the service port has no NodePort. */
  readonly nodePort: number;
  /** A number or a named container port, as in the Service spec (informational; endpoints carry the resolved port). */
  readonly targetPort: number | string;
  /** externalIPs of this family. */
  readonly externalIPs: readonly string[];
  /** status.loadBalancer.ingress IPs of this family whose ipMode is VIP or unset. */
  readonly loadBalancerIPs: readonly string[];
  /** loadBalancerSourceRanges of this family, as CIDRs. */
  readonly loadBalancerSourceRanges: readonly string[];
  /** externalTrafficPolicy: Local (only meaningful for NodePort/LoadBalancer/externalIPs). */
  readonly externalPolicyLocal: boolean;
  /** internalTrafficPolicy: Local. */
  readonly internalPolicyLocal: boolean;
  /** 0 when none; set for LoadBalancer services with externalTrafficPolicy Local. */
  readonly healthCheckNodePort: number;
  readonly sessionAffinity: SessionAffinity;
}

export interface Endpoint {
  readonly ip: string;
  readonly port: number;
  /** Conditions as in EndpointSlice; a missing condition means ready=true, serving=true, terminating=false (each read on its own, as upstream). */
  readonly ready: boolean;
  readonly serving: boolean;
  readonly terminating: boolean;
  /** On this node (nodeName equals this node's name). */
  readonly isLocal: boolean;
  readonly nodeName: string;
  readonly zone: string;
  /** hints.forZones names; empty when the endpoint carries no zone hints. */
  readonly zoneHints: readonly string[];
  /** hints.forNodes names; empty when the endpoint carries no node hints. */
  readonly nodeHints: readonly string[];
}

export interface NodeInfo {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  /** topology.kubernetes.io/zone, or "". */
  readonly zone: string;
  readonly podCIDRs: readonly string[];
  /** Node IPs (InternalIP first) from status.addresses. */
  readonly addresses: readonly string[];
  /**
   * Whether this node should receive traffic; false while the Node is being deleted
   * (upstream reports nodeEligible=false in /healthz then).
   */
  readonly eligible: boolean;
}

export interface Snapshot {
  /** Every service port of every family, by key. */
  readonly services: ReadonlyMap<string, ServicePort>;
  /** All known endpoints of a service port (before selection), by the service port key. */
  readonly endpoints: ReadonlyMap<string, readonly Endpoint[]>;
  readonly node: NodeInfo;
}

/** What changed since the previous sync. A backend may use `changed` for a partial sync. */
export interface ChangeSet {
  /** Keys of service ports whose service or endpoints changed (including removed ones). */
  readonly changed: ReadonlySet<string>;
  /** True when the whole state must be rewritten (first sync, node change, periodic, after failure). */
  readonly full: boolean;
  /**
   * `endpoints.kubernetes.io/last-change-trigger-time` of the endpoint changes in this set (ms since
   * epoch) newer than the model's start, for the network programming latency metric; empty when none.
   */
  readonly triggerTimes: readonly number[];
}
