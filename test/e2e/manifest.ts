/**
 * What the end-to-end suites (netns and guest) share: the Services they publish as a manifest file
 * for kproxy's --services-file, and counting which pod answered.
 */
import { HTTP_PORT } from "./topology.ts";

export const NS = "e2e";
export const NODE_NAME = "node-a";

export interface Svc {
  readonly name: string;
  readonly clusterIP: string;
  readonly port?: number;
  readonly protocol?: "TCP" | "UDP";
  readonly targetPort?: number;
  /** Defaults to NodePort when `nodePort` is set, else ClusterIP. */
  readonly type?: "ClusterIP" | "NodePort" | "LoadBalancer";
  readonly nodePort?: number;
  readonly family?: "IPv4" | "IPv6";
  readonly affinity?: boolean;
  readonly local?: boolean;
  readonly healthCheckNodePort?: number;
  /** Endpoint IPs; `@node` after one puts it on another node. */
  readonly endpoints: readonly string[];
}

/** Services and one EndpointSlice each (none without endpoints), as a multi-document manifest. */
export function manifest(services: readonly Svc[]): string {
  const docs: unknown[] = [];
  for (const s of services) {
    const protocol = s.protocol ?? "TCP";
    const family = s.family ?? "IPv4";
    docs.push({
      apiVersion: "v1",
      kind: "Service",
      metadata: { namespace: NS, name: s.name },
      spec: {
        type: s.type ?? (s.nodePort ? "NodePort" : "ClusterIP"),
        clusterIP: s.clusterIP,
        clusterIPs: [s.clusterIP],
        ipFamilies: [family],
        ports: [{ name: "p", port: s.port ?? 80, targetPort: s.targetPort ?? HTTP_PORT, protocol, ...(s.nodePort ? { nodePort: s.nodePort } : {}) }],
        ...(s.affinity ? { sessionAffinity: "ClientIP" } : {}),
        ...(s.local ? { externalTrafficPolicy: "Local" } : {}),
        ...(s.healthCheckNodePort ? { healthCheckNodePort: s.healthCheckNodePort } : {}),
      },
    });
    if (s.endpoints.length === 0) continue;
    docs.push({
      apiVersion: "discovery.k8s.io/v1",
      kind: "EndpointSlice",
      metadata: { namespace: NS, name: `${s.name}-1`, labels: { "kubernetes.io/service-name": s.name } },
      addressType: family,
      ports: [{ name: "p", port: s.targetPort ?? HTTP_PORT, protocol }],
      endpoints: s.endpoints.map((e) => {
        const [ip, node] = e.split("@");
        return { addresses: [ip], conditions: { ready: true }, nodeName: node ?? NODE_NAME };
      }),
    });
  }
  return `${docs.map((d) => JSON.stringify(d)).join("\n---\n")}\n`;
}

/** How many answers came from each responder. */
export function tally(bodies: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const b of bodies) out[b] = (out[b] ?? 0) + 1;
  return out;
}
