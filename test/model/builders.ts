/** Small builders for API JSON used across the model tests. */
export function service(name: string, spec: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name, namespace: "ns", ...((extra["metadata"] as object) ?? {}) },
    spec: { clusterIP: "10.96.0.10", ports: [{ name: "http", protocol: "TCP", port: 80, targetPort: 8080 }], ...spec },
    ...(extra["status"] ? { status: extra["status"] } : {}),
  };
}

export interface EndpointSpec {
  ip: string;
  ready?: boolean | null;
  serving?: boolean | null;
  terminating?: boolean | null;
  nodeName?: string;
  zone?: string;
  forZones?: string[];
  forNodes?: string[];
}

export function slice(
  name: string,
  serviceName: string,
  endpoints: EndpointSpec[],
  options: { addressType?: string; ports?: Record<string, unknown>[]; annotations?: Record<string, string> } = {},
): Record<string, unknown> {
  return {
    apiVersion: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata: {
      name,
      namespace: "ns",
      labels: { "kubernetes.io/service-name": serviceName },
      ...(options.annotations ? { annotations: options.annotations } : {}),
    },
    addressType: options.addressType ?? "IPv4",
    ports: options.ports ?? [{ name: "http", protocol: "TCP", port: 8080 }],
    endpoints: endpoints.map((e) => {
      const conditions: Record<string, unknown> = {};
      if (e.ready !== undefined) conditions["ready"] = e.ready;
      if (e.serving !== undefined) conditions["serving"] = e.serving;
      if (e.terminating !== undefined) conditions["terminating"] = e.terminating;
      const hints: Record<string, unknown> = {};
      if (e.forZones) hints["forZones"] = e.forZones.map((z) => ({ name: z }));
      if (e.forNodes) hints["forNodes"] = e.forNodes.map((n) => ({ name: n }));
      return {
        addresses: [e.ip],
        conditions,
        ...(e.nodeName ? { nodeName: e.nodeName } : {}),
        ...(e.zone ? { zone: e.zone } : {}),
        ...(e.forZones || e.forNodes ? { hints } : {}),
      };
    }),
  };
}
