/**
 * The parts of v1 Service, discovery.k8s.io/v1 EndpointSlice and v1 Node that kproxy reads, as zod
 * schemas. Unknown fields are accepted and dropped (the API grows, and copying fields nobody reads
 * costs time and memory on a large initial list); the fields we use are checked strictly, because a
 * bad IP or port here would become a bad rule in the kernel. Sizes are capped so a hostile or broken
 * object cannot make one sync enormous.
 */
import { z } from "zod";
import { cidrFamilyOf, ipFamilyOf } from "./ip.ts";

export const SERVICE_NAME_LABEL = "kubernetes.io/service-name";

export const LIMITS = {
  ports: 1000,
  endpointsPerSlice: 10000,
  addressesPerEndpoint: 100,
  ipsPerList: 1000,
  hintsPerEndpoint: 1000,
  nameLength: 253,
  stringLength: 1024,
  annotationLength: 65536,
} as const;

const name = z.string().min(1, "must not be empty").max(LIMITS.nameLength);
const shortString = z.string().max(LIMITS.stringLength);
const ip = z.string().refine((s) => ipFamilyOf(s) !== undefined, "not a valid IP address");
const cidr = z.string().refine((s) => cidrFamilyOf(s.trim()) !== undefined, "not a valid CIDR");
const portNumber = z.int().min(1).max(65535);
const protocol = z.enum(["TCP", "UDP", "SCTP"]).default("TCP");

/**
 * Labels and annotations: only string values; giant maps rejected. Checked by hand because a
 * per-entry schema is the single most expensive part of parsing a large initial list.
 */
const stringMap = z.custom<Record<string, string>>((v) => {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return false;
  let n = 0;
  for (const k in v) {
    const value = (v as Record<string, unknown>)[k];
    if (++n > 1000 || k.length > LIMITS.stringLength) return false;
    if (typeof value !== "string" || value.length > LIMITS.annotationLength) return false;
  }
  return true;
}, "must be a map of at most 1000 strings");

const metadata = z.object({
  name,
  namespace: name.default("default"),
  labels: stringMap.nullish(),
  annotations: stringMap.nullish(),
  deletionTimestamp: shortString.nullish(),
});

const servicePortSchema = z.object({
  name: shortString.nullish(),
  protocol,
  port: portNumber,
  nodePort: z.int().min(0).max(65535).nullish(),
  targetPort: z.union([z.int().min(0).max(65535), z.string().max(63)]).nullish(),
});

export const serviceSchema = z.object({
  metadata,
  spec: z.object({
    type: z.enum(["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]).default("ClusterIP"),
    clusterIP: z.union([z.literal(""), z.literal("None"), ip]).nullish(),
    clusterIPs: z.array(z.union([z.literal("None"), ip])).max(2).nullish(),
    ports: z.array(servicePortSchema).max(LIMITS.ports).nullish(),
    externalIPs: z.array(ip).max(LIMITS.ipsPerList).nullish(),
    loadBalancerSourceRanges: z.array(cidr).max(LIMITS.ipsPerList).nullish(),
    externalTrafficPolicy: z.enum(["Cluster", "Local"]).nullish(),
    internalTrafficPolicy: z.enum(["Cluster", "Local"]).nullish(),
    healthCheckNodePort: z.int().min(0).max(65535).nullish(),
    sessionAffinity: z.enum(["None", "ClientIP"]).default("None"),
    sessionAffinityConfig: z
      .object({
        clientIP: z.object({ timeoutSeconds: z.int().min(1).max(86400).nullish() }).nullish(),
      })
      .nullish(),
  }),
  status: z
    .object({
      loadBalancer: z
        .object({
          ingress: z
            .array(
              z.object({
                ip: z.union([z.literal(""), ip]).nullish(),
                hostname: shortString.nullish(),
                ipMode: z.enum(["VIP", "Proxy"]).nullish(),
              }),
            )
            .max(LIMITS.ipsPerList)
            .nullish(),
        })
        .nullish(),
    })
    .nullish(),
}).superRefine((svc, ctx) => {
  // Port names key the service ports; the API server enforces the same rules.
  const ports = svc.spec.ports ?? [];
  if (ports.length < 2) return;
  const seen = new Set<string>();
  for (let i = 0; i < ports.length; i++) {
    const portName = ports[i]!.name ?? "";
    if (portName === "") {
      ctx.addIssue({ code: "custom", path: ["spec", "ports", i, "name"], message: "required when a service has several ports" });
      return;
    }
    if (seen.has(portName)) {
      ctx.addIssue({ code: "custom", path: ["spec", "ports", i, "name"], message: "duplicate port name" });
      return;
    }
    seen.add(portName);
  }
});

const endpointSchema = z.object({
  addresses: z.array(shortString).min(1).max(LIMITS.addressesPerEndpoint),
  conditions: z
    .object({
      ready: z.boolean().nullish(),
      serving: z.boolean().nullish(),
      terminating: z.boolean().nullish(),
    })
    .nullish(),
  nodeName: shortString.nullish(),
  zone: shortString.nullish(),
  hints: z
    .object({
      forZones: z.array(z.object({ name: shortString })).max(LIMITS.hintsPerEndpoint).nullish(),
      forNodes: z.array(z.object({ name: shortString })).max(LIMITS.hintsPerEndpoint).nullish(),
    })
    .nullish(),
});

export const endpointSliceSchema = z
  .object({
    metadata,
    addressType: z.enum(["IPv4", "IPv6", "FQDN"]),
    endpoints: z.array(endpointSchema).max(LIMITS.endpointsPerSlice).nullish(),
    ports: z
      .array(
        z.object({
          name: shortString.nullish(),
          protocol,
          // A missing or zero port is tolerated and ignored, as upstream does.
          port: z.int().min(0).max(65535).nullish(),
        }),
      )
      .max(LIMITS.ports)
      .nullish(),
  })
  .superRefine((slice, ctx) => {
    if (!slice.metadata.labels?.[SERVICE_NAME_LABEL]) {
      ctx.addIssue({ code: "custom", path: ["metadata", "labels", SERVICE_NAME_LABEL], message: "missing" });
    }
    if (slice.addressType === "FQDN") return;
    const eps = slice.endpoints ?? [];
    for (let i = 0; i < eps.length; i++) {
      const addrs = eps[i]!.addresses;
      for (let j = 0; j < addrs.length; j++) {
        if (ipFamilyOf(addrs[j]!) !== slice.addressType) {
          ctx.addIssue({
            code: "custom",
            path: ["endpoints", i, "addresses", j],
            message: `not a valid ${slice.addressType} address`,
          });
          return;
        }
      }
    }
  });

export const nodeSchema = z.object({
  metadata,
  spec: z
    .object({
      podCIDR: z.union([z.literal(""), cidr]).nullish(),
      podCIDRs: z.array(cidr).max(2).nullish(),
    })
    .nullish(),
  status: z
    .object({
      addresses: z
        .array(z.object({ type: shortString, address: shortString }))
        .max(LIMITS.ipsPerList)
        .nullish(),
    })
    .nullish(),
});

export type ServiceObject = z.infer<typeof serviceSchema>;
export type EndpointSliceObject = z.infer<typeof endpointSliceSchema>;
export type NodeObject = z.infer<typeof nodeSchema>;

export type ParseResult<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly id: string; readonly reason: string };

/** `ns/name` of a raw object when its metadata allows, else `<unknown>` (nodes have no namespace). */
export function objectId(obj: unknown, namespaced = true): string {
  const meta = isRecord(obj) ? obj["metadata"] : undefined;
  if (!isRecord(meta)) return "<unknown>";
  const n = meta["name"];
  if (typeof n !== "string" || n === "" || n.length > LIMITS.nameLength) return "<unknown>";
  if (!namespaced) return n;
  const ns = meta["namespace"];
  return `${typeof ns === "string" && ns !== "" ? ns.slice(0, LIMITS.nameLength) : "default"}/${n}`;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else if (typeof p === "string" && /^[A-Za-z_][\w]*$/.test(p)) out += out ? `.${p}` : p;
    else out += `[${JSON.stringify(String(p))}]`;
  }
  return out || "(object)";
}

function valueAt(obj: unknown, path: readonly PropertyKey[]): unknown {
  let cur: unknown = obj;
  for (const p of path) {
    if (cur === null || typeof cur !== "object") return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[p];
  }
  return cur;
}

function describeValue(v: unknown): string {
  if (Array.isArray(v)) return `a list of ${v.length}`;
  if (typeof v === "string") return v.length > 64 ? `a string of ${v.length} characters` : JSON.stringify(v);
  if (typeof v === "object" && v !== null) return "an object";
  return String(v);
}

function parseWith<T>(schema: z.ZodType<T>, obj: unknown, namespaced: boolean): ParseResult<T> {
  const result = schema.safeParse(obj);
  if (result.success) return { ok: true, value: result.data };
  const issue = result.error.issues[0];
  const id = objectId(obj, namespaced);
  if (!issue) return { ok: false, id, reason: "invalid object" };
  const value = valueAt(obj, issue.path);
  // A union's message alone ("Invalid input") says little; the value shows what was wrong.
  const got = value === undefined ? "" : ` (got ${describeValue(value)})`;
  const reason = `${formatPath(issue.path)}: ${issue.message}${got}`;
  return { ok: false, id, reason };
}

export function parseService(obj: unknown): ParseResult<ServiceObject> {
  return parseWith(serviceSchema, obj, true);
}

export function parseEndpointSlice(obj: unknown): ParseResult<EndpointSliceObject> {
  return parseWith(endpointSliceSchema, obj, true);
}

export function parseNode(obj: unknown): ParseResult<NodeObject> {
  return parseWith(nodeSchema, obj, false);
}
