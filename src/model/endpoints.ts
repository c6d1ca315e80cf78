/**
 * EndpointSlices of one service merged into endpoints per service port key, as upstream's
 * endpointslicecache does: ports matched by name and protocol, the first address of each endpoint,
 * one endpoint per ip:port across slices (a terminating copy never displaces another one).
 */
import { canonicalIP } from "./ip.ts";
import type { EndpointSliceObject } from "./objects.ts";
import { SERVICE_NAME_LABEL } from "./objects.ts";
import { servicePortKey } from "./service.ts";
import type { Endpoint, IPFamily, Protocol } from "./types.ts";

/** What kproxy keeps of one EndpointSlice; the raw object is not retained. */
export interface SliceInfo {
  readonly namespace: string;
  readonly name: string;
  /** The owning service's name (label kubernetes.io/service-name). */
  readonly serviceName: string;
  /** Undefined for FQDN slices, which a proxy ignores. */
  readonly family: IPFamily | undefined;
  readonly ports: readonly { readonly name: string; readonly protocol: Protocol; readonly port: number }[];
  readonly endpoints: readonly SliceEndpoint[];
  /** endpoints.kubernetes.io/last-change-trigger-time in ms, or undefined. */
  readonly triggerTime: number | undefined;
}

export interface SliceEndpoint {
  readonly ip: string;
  readonly ready: boolean;
  readonly serving: boolean;
  readonly terminating: boolean;
  readonly nodeName: string;
  readonly zone: string;
  readonly zoneHints: readonly string[];
  readonly nodeHints: readonly string[];
}

export const TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time";

const NONE: readonly string[] = Object.freeze([]);

/** Parses an RFC 3339 timestamp; undefined when absent or malformed. */
export function parseTriggerTime(value: string | undefined | null): number | undefined {
  if (!value) return undefined;
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i.test(value)) return undefined;
  const t = Date.parse(value);
  return Number.isFinite(t) ? t : undefined;
}

// Hint lists repeat across thousands of endpoints; sharing one frozen array per distinct list keeps
// memory flat.
const hintCache = new Map<string, readonly string[]>();
function hintList(hints: readonly { name: string }[] | null | undefined): readonly string[] {
  if (!hints || hints.length === 0) return NONE;
  const names = hints.map((h) => h.name);
  const key = names.join("\u0000");
  let cached = hintCache.get(key);
  if (!cached) {
    cached = Object.freeze(names);
    if (hintCache.size < 10000) hintCache.set(key, cached);
  }
  return cached;
}

export function sliceInfoOf(slice: EndpointSliceObject): SliceInfo {
  const family = slice.addressType === "FQDN" ? undefined : slice.addressType;
  const ports: { name: string; protocol: Protocol; port: number }[] = [];
  for (const p of slice.ports ?? []) {
    // A port without a number means "all ports" in the API, which no proxy implements.
    if (p.port == null || p.port === 0) continue;
    ports.push({ name: p.name ?? "", protocol: p.protocol, port: p.port });
  }
  const endpoints: SliceEndpoint[] = [];
  if (family) {
    for (const ep of slice.endpoints ?? []) {
      const c = ep.conditions;
      const ready = c?.ready ?? true;
      endpoints.push({
        ip: family === "IPv6" ? canonicalIP(ep.addresses[0]!) : ep.addresses[0]!,
        ready,
        serving: c?.serving ?? true,
        terminating: c?.terminating ?? false,
        nodeName: ep.nodeName ?? "",
        zone: ep.zone ?? "",
        zoneHints: hintList(ep.hints?.forZones),
        nodeHints: hintList(ep.hints?.forNodes),
      });
    }
  }
  return {
    namespace: slice.metadata.namespace,
    name: slice.metadata.name,
    serviceName: slice.metadata.labels?.[SERVICE_NAME_LABEL] ?? "",
    family,
    ports,
    endpoints,
    triggerTime: parseTriggerTime(slice.metadata.annotations?.[TRIGGER_TIME_ANNOTATION]),
  };
}

export function endpointString(ip: string, port: number): string {
  return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/**
 * Endpoints per service port key for one service's slices. Slices are visited by name so the result
 * does not depend on arrival order; each list is sorted by `ip:port` as upstream sorts them.
 */
export function mergeSlices(slices: Iterable<SliceInfo>, nodeName: string): Map<string, Endpoint[]> {
  const ordered = [...slices].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const byKey = new Map<string, Map<string, Endpoint>>();
  for (const slice of ordered) {
    if (!slice.family) continue;
    for (const port of slice.ports) {
      const key = servicePortKey(slice.family, slice.namespace, slice.serviceName, port.name, port.protocol);
      let set = byKey.get(key);
      if (!set) byKey.set(key, (set = new Map()));
      for (const ep of slice.endpoints) {
        const id = endpointString(ep.ip, port.port);
        // Prefer a running copy over a terminating one: a pod IP can be reused before the old pod
        // is gone, and an endpoint moving between slices shows up twice for a moment.
        if (ep.terminating && set.has(id)) continue;
        set.set(id, {
          ip: ep.ip,
          port: port.port,
          ready: ep.ready,
          serving: ep.serving,
          terminating: ep.terminating,
          isLocal: nodeName !== "" && ep.nodeName === nodeName,
          nodeName: ep.nodeName,
          zone: ep.zone,
          zoneHints: ep.zoneHints,
          nodeHints: ep.nodeHints,
        });
      }
    }
  }
  const out = new Map<string, Endpoint[]>();
  for (const [key, set] of byKey) {
    if (set.size === 0) continue;
    const ids = [...set.keys()].sort();
    out.set(
      key,
      ids.map((id) => set.get(id)!),
    );
  }
  return out;
}

function sameHints(a: readonly string[], b: readonly string[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function sameEndpoints(a: readonly Endpoint[] | undefined, b: readonly Endpoint[] | undefined): boolean {
  if (a === b) return true;
  if (!a || !b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (
      x.ip !== y.ip ||
      x.port !== y.port ||
      x.ready !== y.ready ||
      x.serving !== y.serving ||
      x.terminating !== y.terminating ||
      x.isLocal !== y.isLocal ||
      x.nodeName !== y.nodeName ||
      x.zone !== y.zone ||
      !sameHints(x.zoneHints, y.zoneHints) ||
      !sameHints(x.nodeHints, y.nodeHints)
    )
      return false;
  }
  return true;
}
