/**
 * EndpointSlices of one service merged into endpoints per service port key, as upstream's
 * endpointslicecache does: ports matched by name and protocol, the first address of each endpoint,
 * one endpoint per ip:port across slices (a terminating copy never displaces another one).
 */
import { Interner, intern } from "./intern.ts";
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
  readonly ports: readonly SlicePort[];
  /** endpoints.kubernetes.io/last-change-trigger-time in ms, or undefined. */
  readonly triggerTime: number | undefined;
}

/**
 * One port of a slice with its endpoints already built, deduplicated and sorted: when a service
 * has a single slice (the common case) these lists go into the snapshot as they are, so the model
 * holds each endpoint once.
 */
export interface SlicePort {
  readonly key: string;
  readonly name: string;
  readonly protocol: Protocol;
  readonly port: number;
  readonly endpoints: readonly Endpoint[];
}

export const TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time";

/** Shared by every endpoint without hints. */
const NONE: readonly string[] = [];

/** Parses an RFC 3339 timestamp; undefined when absent or malformed. */
export function parseTriggerTime(value: string | undefined | null): number | undefined {
  if (!value) return undefined;
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i.test(value)) return undefined;
  const t = Date.parse(value);
  return Number.isFinite(t) ? t : undefined;
}

const hintLists = new Interner<readonly string[]>(10000);

function hintList(hints: readonly { name: string }[] | null | undefined): readonly string[] {
  if (!hints || hints.length === 0) return NONE;
  const list = hints.map((h) => intern(h.name));
  return hintLists.get(list.join("\u0000"), () => list);
}

export function endpointString(ip: string, port: number): string {
  return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/**
 * Endpoints for one port: one per ip:port, sorted by `ip:port` text as upstream sorts them (so
 * `10.0.0.10:80` comes before `10.0.0.1:80`). A terminating copy never displaces another one: a pod
 * IP can be reused before the old pod is gone, and an endpoint moving between slices shows up twice
 * for a moment. The sort keys are built once per endpoint, not once per comparison.
 */
function dedupSorted(all: readonly Endpoint[]): Endpoint[] {
  const keyed = all.map((ep, i) => ({ id: endpointString(ep.ip, ep.port), i, ep }));
  // Ties keep arrival order (slice order), which the "later running copy wins" rule relies on.
  keyed.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : a.i - b.i));
  const out: Endpoint[] = [];
  let lastId = "";
  for (const { id, ep } of keyed) {
    if (out.length > 0 && id === lastId) {
      if (!ep.terminating) out[out.length - 1] = ep;
      continue;
    }
    out.push(ep);
    lastId = id;
  }
  return out;
}

export function sliceInfoOf(slice: EndpointSliceObject, nodeName: string): SliceInfo {
  const family = slice.addressType === "FQDN" ? undefined : slice.addressType;
  const namespace = intern(slice.metadata.namespace);
  const serviceName = slice.metadata.labels?.[SERVICE_NAME_LABEL] ?? "";
  const ports: SlicePort[] = [];
  if (family) {
    const raw = slice.endpoints ?? [];
    for (const p of slice.ports ?? []) {
      // A port without a number means "all ports" in the API, which no proxy implements.
      if (p.port == null || p.port === 0) continue;
      const port = p.port;
      const endpoints: Endpoint[] = [];
      for (const ep of raw) {
        const c = ep.conditions;
        const epNode = intern(ep.nodeName);
        endpoints.push({
          ip: family === "IPv6" ? canonicalIP(ep.addresses[0]!) : ep.addresses[0]!,
          port,
          ready: c?.ready ?? true,
          // As upstream: serving is read on its own, nil meaning true.
          serving: c?.serving ?? true,
          terminating: c?.terminating ?? false,
          isLocal: nodeName !== "" && epNode === nodeName,
          nodeName: epNode,
          zone: intern(ep.zone),
          zoneHints: hintList(ep.hints?.forZones),
          nodeHints: hintList(ep.hints?.forNodes),
        });
      }
      const name = intern(p.name);
      ports.push({
        key: servicePortKey(family, namespace, serviceName, name, p.protocol),
        name,
        protocol: intern(p.protocol) as Protocol,
        port,
        endpoints: dedupSorted(endpoints),
      });
    }
  }
  return {
    namespace,
    name: slice.metadata.name,
    serviceName,
    family,
    ports,
    triggerTime: parseTriggerTime(slice.metadata.annotations?.[TRIGGER_TIME_ANNOTATION]),
  };
}

/**
 * Endpoints per service port key for one service's slices, as upstream's endpointslicecache merges
 * them: ports matched by name and protocol, one endpoint per ip:port across slices. Slices are
 * visited by name so the result does not depend on arrival order.
 */
export function mergeSlices(slices: readonly SliceInfo[]): Map<string, readonly Endpoint[]> {
  const out = new Map<string, readonly Endpoint[]>();
  if (slices.length === 1) {
    for (const port of slices[0]!.ports) {
      if (port.endpoints.length === 0) continue;
      const seen = out.get(port.key);
      // Two ports of one slice with the same name and protocol: the API forbids it; merge anyway.
      out.set(port.key, seen ? dedupSorted([...seen, ...port.endpoints]) : port.endpoints);
    }
    return out;
  }
  const ordered = [...slices].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const byKey = new Map<string, Endpoint[]>();
  for (const slice of ordered) {
    for (const port of slice.ports) {
      let list = byKey.get(port.key);
      if (!list) byKey.set(port.key, (list = []));
      for (const ep of port.endpoints) list.push(ep);
    }
  }
  for (const [key, list] of byKey) if (list.length > 0) out.set(key, dedupSorted(list));
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
