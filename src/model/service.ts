/**
 * A validated Service becomes one ServicePort per port per IP family that has a ClusterIP, with the
 * family's external IPs, load-balancer IPs and source ranges, following upstream's newBaseServiceInfo.
 */
import { intern } from "./intern.ts";
import { canonicalCIDR, canonicalIP, cidrFamilyOf, ipFamilyOf } from "./ip.ts";
import type { ServiceObject } from "./objects.ts";
import type { IPFamily, Protocol, ServicePort, SessionAffinity } from "./types.ts";

export const DEFAULT_CLIENT_IP_TIMEOUT_SECONDS = 10800;
/** Legacy annotation read when spec.loadBalancerSourceRanges is empty. */
export const SOURCE_RANGES_ANNOTATION = "service.beta.kubernetes.io/load-balancer-source-ranges";

export function servicePortKey(family: IPFamily, namespace: string, name: string, portName: string, protocol: Protocol): string {
  return `${family}/${namespace}/${name}:${portName}/${protocol}`;
}

/** Shared by every service port without such addresses: most have none, and there are many ports. */
const NO_ADDRESSES: readonly string[] = [];

function ipsOfFamily(values: readonly string[], family: IPFamily): readonly string[] {
  if (values.length === 0) return NO_ADDRESSES;
  const out: string[] = [];
  for (const v of values) if (ipFamilyOf(v) === family) out.push(family === "IPv6" ? canonicalIP(v) : v);
  return out;
}

function cidrsOfFamily(values: readonly string[], family: IPFamily): readonly string[] {
  if (values.length === 0) return NO_ADDRESSES;
  const out: string[] = [];
  for (const v of values) if (cidrFamilyOf(v) === family) out.push(family === "IPv6" ? canonicalCIDR(v) : v);
  return out;
}

/** ClusterIPs by family: spec.clusterIPs, or spec.clusterIP for objects written before dual-stack. */
function clusterIPsByFamily(svc: ServiceObject): Map<IPFamily, string> {
  const ips = svc.spec.clusterIPs?.length ? svc.spec.clusterIPs : svc.spec.clusterIP ? [svc.spec.clusterIP] : [];
  const out = new Map<IPFamily, string>();
  for (const ip of ips) {
    const family = ipFamilyOf(ip);
    if (family && !out.has(family)) out.set(family, canonicalIP(ip));
  }
  return out;
}

function sourceRanges(svc: ServiceObject): string[] {
  const spec = svc.spec.loadBalancerSourceRanges;
  if (spec && spec.length > 0) return spec.map((s) => s.trim());
  const annotation = svc.metadata.annotations?.[SOURCE_RANGES_ANNOTATION]?.trim();
  if (!annotation) return [];
  // An unparsable annotation entry is dropped rather than failing the service: the annotation is
  // not validated by the API server.
  return annotation
    .split(",")
    .map((s) => s.trim())
    .filter((s) => cidrFamilyOf(s) !== undefined);
}

/**
 * Whether traffic can reach the service from outside the cluster network; externalTrafficPolicy only
 * means something then (upstream apiservice.ExternallyAccessible).
 */
function externallyAccessible(svc: ServiceObject): boolean {
  const t = svc.spec.type;
  return t === "LoadBalancer" || t === "NodePort" || (t === "ClusterIP" && (svc.spec.externalIPs?.length ?? 0) > 0);
}

/** Service ports of every family, in spec order (IPv4 first). Empty for headless and ExternalName services. */
export function servicePortsOf(svc: ServiceObject): ServicePort[] {
  const spec = svc.spec;
  if (spec.type === "ExternalName") return [];
  if (!spec.clusterIP && !spec.clusterIPs?.length) return [];
  if (spec.clusterIP === "None" || spec.clusterIPs?.[0] === "None") return [];
  const clusterIPs = clusterIPsByFamily(svc);
  if (clusterIPs.size === 0) return [];

  const namespace = intern(svc.metadata.namespace);
  const name = svc.metadata.name;
  const type = intern(spec.type) as ServicePort["type"];
  const externalPolicyLocal = externallyAccessible(svc) && spec.externalTrafficPolicy === "Local";
  const internalPolicyLocal = spec.internalTrafficPolicy === "Local";
  const healthCheckNodePort = type === "LoadBalancer" && externalPolicyLocal ? (spec.healthCheckNodePort ?? 0) : 0;
  const sessionAffinity: SessionAffinity =
    spec.sessionAffinity === "ClientIP"
      ? {
          type: "ClientIP",
          timeoutSeconds: spec.sessionAffinityConfig?.clientIP?.timeoutSeconds ?? DEFAULT_CLIENT_IP_TIMEOUT_SECONDS,
        }
      : NO_AFFINITY;
  const externalIPs = spec.externalIPs ?? [];
  const ingressIPs: string[] = [];
  for (const ing of svc.status?.loadBalancer?.ingress ?? []) {
    // ipMode Proxy: the load balancer delivers to the node with its own address as destination, so
    // no rule for the ingress IP must capture that traffic.
    if (ing.ip && (ing.ipMode == null || ing.ipMode === "VIP")) ingressIPs.push(ing.ip);
  }
  const ranges = sourceRanges(svc);

  const out: ServicePort[] = [];
  for (const family of ["IPv4", "IPv6"] as const) {
    const clusterIP = clusterIPs.get(family);
    if (!clusterIP) continue;
    const familyExternalIPs = ipsOfFamily(externalIPs, family);
    const familyLBIPs = ipsOfFamily(ingressIPs, family);
    const familyRanges = cidrsOfFamily(ranges, family);
    for (const p of spec.ports ?? []) {
      const portName = intern(p.name);
      const protocol = intern(p.protocol) as Protocol;
      const servicePortName = portName ? `${namespace}/${name}:${portName}` : `${namespace}/${name}`;
      out.push({
        key: servicePortKey(family, namespace, name, portName, protocol),
        namespace,
        name,
        portName,
        servicePortName,
        protocol,
        family,
        type,
        clusterIP,
        port: p.port,
        nodePort: p.nodePort ?? 0,
        targetPort: p.targetPort ?? p.port,
        externalIPs: familyExternalIPs,
        loadBalancerIPs: familyLBIPs,
        loadBalancerSourceRanges: familyRanges,
        externalPolicyLocal,
        internalPolicyLocal,
        healthCheckNodePort,
        sessionAffinity,
      });
    }
  }
  return out;
}

const NO_AFFINITY: SessionAffinity = { type: "None" };

function sameList(a: readonly string[], b: readonly string[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function sameServicePort(a: ServicePort, b: ServicePort): boolean {
  return (
    a.key === b.key &&
    a.type === b.type &&
    a.clusterIP === b.clusterIP &&
    a.port === b.port &&
    a.nodePort === b.nodePort &&
    a.targetPort === b.targetPort &&
    a.externalPolicyLocal === b.externalPolicyLocal &&
    a.internalPolicyLocal === b.internalPolicyLocal &&
    a.healthCheckNodePort === b.healthCheckNodePort &&
    a.sessionAffinity.type === b.sessionAffinity.type &&
    (a.sessionAffinity.type !== "ClientIP" ||
      (b.sessionAffinity.type === "ClientIP" && a.sessionAffinity.timeoutSeconds === b.sessionAffinity.timeoutSeconds)) &&
    sameList(a.externalIPs, b.externalIPs) &&
    sameList(a.loadBalancerIPs, b.loadBalancerIPs) &&
    sameList(a.loadBalancerSourceRanges, b.loadBalancerSourceRanges)
  );
}
