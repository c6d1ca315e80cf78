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

const shortString = z.string().max(LIMITS.stringLength);
const ip = z.string().refine((s) => ipFamilyOf(s) !== undefined, "not a valid IP address");
/** An IP or one of the given special values; one check instead of a union keeps parsing cheap. */
function ipOr(...special: string[]) {
  return z.string().refine((s) => special.includes(s) || ipFamilyOf(s) !== undefined, `not a valid IP address`);
}
const cidr = z.string().refine((s) => cidrFamilyOf(s.trim()) !== undefined, "not a valid CIDR");

/**
 * A schema whose check is written by hand. Used for the parts every object repeats (metadata,
 * ports, endpoints): on a large initial list, nested per-field schemas were most of kproxy's
 * start-up time. `check` returns the normalized value, or the path and problem of the first bad field.
 */
type Checked<T> = { value: T } | { path: PropertyKey[]; message: string };

function handChecked<T>(check: (v: unknown) => Checked<T>) {
  return z.unknown().transform((v, ctx): T => {
    const r = check(v);
    if ("value" in r) return r.value;
    ctx.issues.push({ code: "custom", message: r.message, path: r.path, input: v });
    return z.NEVER;
  });
}

const problem = (path: PropertyKey[], message: string) => ({ path, message });

function isName(v: unknown): v is string {
  return typeof v === "string" && v.length > 0 && v.length <= LIMITS.nameLength;
}

/** Labels and annotations: only string values; giant maps rejected. */
function stringMapProblem(v: unknown, field: string): { path: PropertyKey[]; message: string } | undefined {
  if (v == null) return undefined;
  if (!isRecord(v)) return problem([field], "expected a map of strings");
  let n = 0;
  for (const k in v) {
    const value = v[k];
    if (++n > 1000) return problem([field], "more than 1000 entries");
    if (k.length > LIMITS.stringLength) return problem([field], "key too long");
    if (typeof value !== "string" || value.length > LIMITS.annotationLength) return problem([field, k], "expected a string");
  }
  return undefined;
}

export interface Metadata {
  readonly name: string;
  readonly namespace: string;
  readonly labels?: Readonly<Record<string, string>> | null | undefined;
  readonly annotations?: Readonly<Record<string, string>> | null | undefined;
  readonly deletionTimestamp?: string | null | undefined;
}

const metadata = handChecked<Metadata>((v) => {
  if (!isRecord(v)) return problem([], "expected an object");
  const { name, namespace, labels, annotations, deletionTimestamp } = v;
  if (!isName(name)) return problem(["name"], `expected a name of 1 to ${LIMITS.nameLength} characters`);
  if (namespace != null && !isName(namespace)) return problem(["namespace"], `expected a name of 1 to ${LIMITS.nameLength} characters`);
  const bad = stringMapProblem(labels, "labels") ?? stringMapProblem(annotations, "annotations");
  if (bad) return bad;
  if (deletionTimestamp != null && !isShortString(deletionTimestamp)) return problem(["deletionTimestamp"], "expected a string");
  return {
    value: {
      name,
      namespace: (namespace as string | null | undefined) ?? "default",
      labels: labels as Metadata["labels"],
      annotations: annotations as Metadata["annotations"],
      deletionTimestamp: deletionTimestamp as string | null | undefined,
    },
  };
});

const PROTOCOLS: ReadonlySet<unknown> = new Set(["TCP", "UDP", "SCTP"]);

function isPortNumber(v: unknown, min: number): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= min && v <= 65535;
}

export interface ServicePortObject {
  readonly name?: string | null | undefined;
  readonly protocol: "TCP" | "UDP" | "SCTP";
  readonly port: number;
  readonly nodePort?: number | null | undefined;
  readonly targetPort?: number | string | null | undefined;
}

const servicePortSchema = handChecked<ServicePortObject>((v) => {
  if (!isRecord(v)) return problem([], "expected an object");
  const { name, protocol, port, nodePort, targetPort } = v;
  if (name != null && !isShortString(name)) return problem(["name"], "expected a string");
  if (protocol != null && !PROTOCOLS.has(protocol)) return problem(["protocol"], 'expected one of "TCP"|"UDP"|"SCTP"');
  if (!isPortNumber(port, 1)) return problem(["port"], "expected an integer from 1 to 65535");
  if (nodePort != null && !isPortNumber(nodePort, 0)) return problem(["nodePort"], "expected an integer from 0 to 65535");
  if (targetPort != null && !isPortNumber(targetPort, 0) && !(typeof targetPort === "string" && targetPort.length <= 63)) {
    return problem(["targetPort"], "expected a port number or a port name");
  }
  return {
    value: {
      name: name as string | null | undefined,
      protocol: (protocol ?? "TCP") as ServicePortObject["protocol"],
      port,
      nodePort: nodePort as number | null | undefined,
      targetPort: targetPort as number | string | null | undefined,
    },
  };
});

export const serviceSchema = z.object({
  metadata,
  spec: z.object({
    type: z.enum(["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]).default("ClusterIP"),
    clusterIP: ipOr("", "None").nullish(),
    clusterIPs: z.array(ipOr("None")).max(2).nullish(),
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
                ip: ipOr("").nullish(),
                hostname: shortString.nullish(),
                // Any value: a mode added later is simply not "VIP", which is all kproxy asks.
                ipMode: shortString.nullish(),
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

/** One endpoint of a slice as kproxy reads it (checked by `endpointProblem`). */
export interface RawEndpoint {
  readonly addresses: readonly string[];
  readonly conditions?: { readonly ready?: boolean | null; readonly serving?: boolean | null; readonly terminating?: boolean | null } | null;
  readonly nodeName?: string | null;
  readonly zone?: string | null;
  readonly hints?: {
    readonly forZones?: readonly { readonly name: string }[] | null;
    readonly forNodes?: readonly { readonly name: string }[] | null;
  } | null;
}

function isShortString(v: unknown): boolean {
  return typeof v === "string" && v.length <= LIMITS.stringLength;
}

/**
 * Checks one endpoint by hand: slices carry most of a cluster's objects (tens of thousands of
 * endpoints on a large initial list), and a schema per endpoint was most of the model's start-up
 * time. Returns the path and problem of the first bad field.
 */
function endpointProblem(ep: unknown, family: "IPv4" | "IPv6" | "FQDN"): [PropertyKey[], string] | undefined {
  if (!isRecord(ep)) return [[], "expected an object"];
  const addrs = ep["addresses"];
  if (!Array.isArray(addrs) || addrs.length < 1 || addrs.length > LIMITS.addressesPerEndpoint) {
    return [["addresses"], `expected a list of 1 to ${LIMITS.addressesPerEndpoint} addresses`];
  }
  for (let j = 0; j < addrs.length; j++) {
    const a: unknown = addrs[j];
    if (!isShortString(a)) return [["addresses", j], "expected a string"];
    if (family !== "FQDN" && ipFamilyOf(a as string) !== family) return [["addresses", j], `not a valid ${family} address`];
  }
  const c = ep["conditions"];
  if (c != null) {
    if (!isRecord(c)) return [["conditions"], "expected an object"];
    for (const k of ["ready", "serving", "terminating"]) {
      if (c[k] != null && typeof c[k] !== "boolean") return [["conditions", k], "expected a boolean"];
    }
  }
  for (const k of ["nodeName", "zone"]) {
    if (ep[k] != null && !isShortString(ep[k])) return [[k], "expected a string"];
  }
  const hints = ep["hints"];
  if (hints != null) {
    if (!isRecord(hints)) return [["hints"], "expected an object"];
    for (const k of ["forZones", "forNodes"]) {
      const list = hints[k];
      if (list == null) continue;
      if (!Array.isArray(list) || list.length > LIMITS.hintsPerEndpoint) return [["hints", k], `expected a list of at most ${LIMITS.hintsPerEndpoint}`];
      for (let j = 0; j < list.length; j++) {
        const h: unknown = list[j];
        if (!isRecord(h) || !isShortString(h["name"])) return [["hints", k, j, "name"], "expected a string"];
      }
    }
  }
  return undefined;
}

export interface SlicePortObject {
  readonly name?: string | null | undefined;
  readonly protocol: "TCP" | "UDP" | "SCTP";
  readonly port?: number | null | undefined;
}

const slicePortSchema = handChecked<SlicePortObject>((v) => {
  if (!isRecord(v)) return problem([], "expected an object");
  const { name, protocol, port } = v;
  if (name != null && !isShortString(name)) return problem(["name"], "expected a string");
  if (protocol != null && !PROTOCOLS.has(protocol)) return problem(["protocol"], 'expected one of "TCP"|"UDP"|"SCTP"');
  // A missing or zero port is tolerated (and ignored by the model), as upstream does.
  if (port != null && !isPortNumber(port, 0)) return problem(["port"], "expected an integer from 0 to 65535");
  return {
    value: {
      name: name as string | null | undefined,
      protocol: (protocol ?? "TCP") as SlicePortObject["protocol"],
      port: port as number | null | undefined,
    },
  };
});

export const endpointSliceSchema = z
  .object({
    metadata,
    addressType: z.enum(["IPv4", "IPv6", "FQDN"]),
    endpoints: z.array(z.custom<RawEndpoint>()).max(LIMITS.endpointsPerSlice).nullish(),
    ports: z.array(slicePortSchema).max(LIMITS.ports).nullish(),
  })
  .superRefine((slice, ctx) => {
    if (!slice.metadata.labels?.[SERVICE_NAME_LABEL]) {
      ctx.addIssue({ code: "custom", path: ["metadata", "labels", SERVICE_NAME_LABEL], message: "missing" });
    }
    const eps = slice.endpoints ?? [];
    for (let i = 0; i < eps.length; i++) {
      const problem = endpointProblem(eps[i], slice.addressType);
      if (problem) {
        ctx.addIssue({ code: "custom", path: ["endpoints", i, ...problem[0]], message: problem[1] });
        return;
      }
    }
  });

export const nodeSchema = z.object({
  metadata,
  spec: z
    .object({
      podCIDR: z.string().refine((s) => s === "" || cidrFamilyOf(s.trim()) !== undefined, "not a valid CIDR").nullish(),
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
