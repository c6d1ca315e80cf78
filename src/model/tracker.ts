/**
 * The proxy model: fed source events, it keeps services, endpoint slices and this node, maintains
 * the service-port and endpoint maps incrementally (one service's worth of work per event), and
 * hands each sync an immutable snapshot plus the service ports that changed since the last one.
 *
 * Invalid objects: the API server validates everything it stores, so upstream's proxier never sees
 * one; here they can come from a hand-written manifest or an API newer than kproxy. A bad object is
 * skipped with one warning. A bad update of an object we already hold keeps the last valid version:
 * dropping it would cut traffic to a service that was working, over an edit the API server would
 * have refused anyway. A delete always deletes.
 */
import { createLogger, type Logger } from "../log.ts";
import type { SourceEvent } from "../source/types.ts";
import { CowMap } from "./cow-map.ts";
import { mergeSlices, sameEndpoints, sliceInfoOf, type SliceInfo } from "./endpoints.ts";
import { nodeInfoOf, sameNodeInfo, unknownNode } from "./node.ts";
import { objectId, parseEndpointSlice, parseNode, parseService } from "./objects.ts";
import { sameServicePort, servicePortsOf } from "./service.ts";
import type { ChangeSet, Endpoint, NodeInfo, ServicePort, Snapshot } from "./types.ts";

export interface ProxyModelOptions {
  /** This node's name (hostname override or the Node name); endpoints on it are local. */
  readonly nodeName: string;
  readonly logger?: Logger;
  /** Milliseconds since the epoch; trigger times older than the model's start are ignored. */
  readonly now?: () => number;
}

/** Counters for kubeproxy_sync_proxy_rules_{service,endpoint}_changes_{total,pending}. */
export interface ModelCounts {
  readonly serviceChangesTotal: number;
  readonly serviceChangesPending: number;
  readonly endpointChangesTotal: number;
  readonly endpointChangesPending: number;
}

export class ProxyModel {
  private readonly nodeName: string;
  private readonly log: Logger;
  private readonly startTime: number;

  /** Service ports per service (`ns/name`), as last applied. */
  private readonly portsByService = new Map<string, readonly ServicePort[]>();
  private readonly servicePorts = new CowMap<ServicePort>();
  private readonly endpoints = new CowMap<readonly Endpoint[]>();
  /** Slices per service (`ns/service`); usually one or two, so a list beats a Map here. */
  private readonly slicesByService = new Map<string, SliceInfo[]>();
  /** The service (`ns/service`) each slice (`ns/slice`) belongs to. */
  private readonly sliceOwner = new Map<string, string>();
  /** Endpoint keys currently present per service (`ns/service`). */
  private readonly endpointKeysByService = new Map<string, readonly string[]>();
  private node: NodeInfo;

  // Pending changes since the last takeChanges: the value each key had before its first change.
  private readonly serviceBase = new Map<string, ServicePort | undefined>();
  private readonly endpointBase = new Map<string, readonly Endpoint[] | undefined>();
  private readonly pendingServices = new Set<string>();
  private readonly pendingEndpointServices = new Set<string>();
  private readonly triggerTimes = new Map<string, number[]>();
  private nodeChanged = false;
  private firstTake = true;

  private serviceChangesTotal = 0;
  private endpointChangesTotal = 0;
  private synced = false;
  /** Last warning per object, so a repeated bad object warns once. */
  private readonly warned = new Map<string, string>();
  private readonly listeners = new Set<() => void>();
  private snap: Snapshot | undefined;

  constructor(options: ProxyModelOptions) {
    this.nodeName = options.nodeName;
    this.log = options.logger ?? createLogger();
    this.startTime = (options.now ?? Date.now)();
    this.node = unknownNode(options.nodeName);
  }

  /** Registers a callback run after every event that changed the model (and on `synced`). */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** True once the source has delivered its initial lists. */
  isSynced(): boolean {
    return this.synced;
  }

  apply(event: SourceEvent): void {
    let changed: boolean;
    if (event.type === "synced") {
      changed = !this.synced;
      this.synced = true;
    } else if (event.kind === "Service") {
      changed = event.type === "upsert" ? this.upsertService(event.object) : this.deleteService(event.object);
    } else if (event.kind === "EndpointSlice") {
      changed = event.type === "upsert" ? this.upsertSlice(event.object) : this.deleteSlice(event.object);
    } else {
      changed = event.type === "upsert" ? this.upsertNode(event.object) : this.deleteNode(event.object);
    }
    if (changed) {
      this.snap = undefined;
      for (const listener of this.listeners) listener();
    }
  }

  /** The current state; never changes afterwards. Cheap: unchanged parts are shared. */
  snapshot(): Snapshot {
    this.snap ??= Object.freeze({
      services: this.servicePorts.freeze(),
      endpoints: this.endpoints.freeze(),
      node: this.node,
    });
    return this.snap;
  }

  /** Service ports changed since the previous call (net: a change undone in between is no change). */
  takeChanges(): ChangeSet {
    const changed = new Set<string>();
    for (const [key, before] of this.serviceBase) {
      const now = this.servicePorts.get(key);
      if (before !== now && !(before && now && sameServicePort(before, now))) changed.add(key);
    }
    for (const [key, before] of this.endpointBase) {
      if (!sameEndpoints(before, this.endpoints.get(key))) changed.add(key);
    }
    const triggerTimes: number[] = [];
    for (const times of this.triggerTimes.values()) triggerTimes.push(...times);
    const full = this.firstTake || this.nodeChanged;
    this.serviceBase.clear();
    this.endpointBase.clear();
    this.pendingServices.clear();
    this.pendingEndpointServices.clear();
    this.triggerTimes.clear();
    this.nodeChanged = false;
    this.firstTake = false;
    return { changed, full, triggerTimes };
  }

  counts(): ModelCounts {
    return {
      serviceChangesTotal: this.serviceChangesTotal,
      serviceChangesPending: this.pendingServices.size,
      endpointChangesTotal: this.endpointChangesTotal,
      endpointChangesPending: this.pendingEndpointServices.size,
    };
  }

  // --- services ---

  private upsertService(obj: unknown): boolean {
    const parsed = parseService(obj);
    if (!parsed.ok) {
      this.warnInvalid("Service", parsed.id, parsed.reason, this.portsByService.has(parsed.id));
      return false;
    }
    const svc = parsed.value;
    const id = `${svc.metadata.namespace}/${svc.metadata.name}`;
    this.warned.delete(`Service/${id}`);
    return this.setServicePorts(id, servicePortsOf(svc));
  }

  private deleteService(obj: unknown): boolean {
    const id = objectId(obj);
    if (id === "<unknown>") return this.warnBadDelete("Service", obj);
    this.warned.delete(`Service/${id}`);
    return this.setServicePorts(id, []);
  }

  private setServicePorts(id: string, ports: readonly ServicePort[]): boolean {
    this.serviceChangesTotal++;
    const old = this.portsByService.get(id) ?? [];
    let changed = false;
    const keep = new Set<string>();
    for (const port of ports) {
      keep.add(port.key);
      const current = this.servicePorts.get(port.key);
      if (current && sameServicePort(current, port)) continue;
      if (!this.serviceBase.has(port.key)) this.serviceBase.set(port.key, current);
      this.servicePorts.set(port.key, port);
      changed = true;
    }
    for (const port of old) {
      if (keep.has(port.key)) continue;
      if (!this.serviceBase.has(port.key)) this.serviceBase.set(port.key, this.servicePorts.get(port.key));
      this.servicePorts.delete(port.key);
      changed = true;
    }
    if (ports.length > 0) this.portsByService.set(id, ports);
    else this.portsByService.delete(id);
    if (changed) this.pendingServices.add(id);
    return changed;
  }

  // --- endpoint slices ---

  private upsertSlice(obj: unknown): boolean {
    const parsed = parseEndpointSlice(obj);
    if (!parsed.ok) {
      this.warnInvalid("EndpointSlice", parsed.id, parsed.reason, this.sliceOwner.has(parsed.id));
      return false;
    }
    const info = sliceInfoOf(parsed.value, this.nodeName);
    const sliceId = `${info.namespace}/${info.name}`;
    this.warned.delete(`EndpointSlice/${sliceId}`);
    const owner = `${info.namespace}/${info.serviceName}`;
    this.endpointChangesTotal++;
    let changed = false;
    const previousOwner = this.sliceOwner.get(sliceId);
    if (previousOwner !== undefined && previousOwner !== owner) {
      // The service-name label moved the slice to another service.
      this.removeSlice(previousOwner, info.name);
      changed = this.recomputeEndpoints(previousOwner, undefined) || changed;
    }
    this.sliceOwner.set(sliceId, owner);
    const slices = this.slicesByService.get(owner);
    if (!slices) this.slicesByService.set(owner, [info]);
    else {
      const i = slices.findIndex((s) => s.name === info.name);
      if (i >= 0) slices[i] = info;
      else slices.push(info);
    }
    return this.recomputeEndpoints(owner, info.triggerTime) || changed;
  }

  private deleteSlice(obj: unknown): boolean {
    const sliceId = objectId(obj);
    if (sliceId === "<unknown>") return this.warnBadDelete("EndpointSlice", obj);
    this.warned.delete(`EndpointSlice/${sliceId}`);
    const owner = this.sliceOwner.get(sliceId);
    if (owner === undefined) return false;
    this.endpointChangesTotal++;
    this.sliceOwner.delete(sliceId);
    this.removeSlice(owner, sliceId.slice(sliceId.indexOf("/") + 1));
    // A deleted slice's trigger time dates from its last update, not from this change.
    this.triggerTimes.delete(owner);
    return this.recomputeEndpoints(owner, undefined);
  }

  private removeSlice(owner: string, sliceName: string): void {
    const slices = this.slicesByService.get(owner);
    if (!slices) return;
    const rest = slices.filter((s) => s.name !== sliceName);
    if (rest.length > 0) this.slicesByService.set(owner, rest);
    else this.slicesByService.delete(owner);
  }

  /** Re-merges one service's slices and records the endpoint keys whose lists changed. */
  private recomputeEndpoints(owner: string, triggerTime: number | undefined): boolean {
    const slices = this.slicesByService.get(owner);
    const merged = slices ? mergeSlices(slices) : new Map<string, readonly Endpoint[]>();
    let changed = false;
    for (const [key, list] of merged) {
      const current = this.endpoints.get(key);
      if (sameEndpoints(current, list)) continue;
      if (!this.endpointBase.has(key)) this.endpointBase.set(key, current);
      this.endpoints.set(key, list);
      changed = true;
    }
    for (const key of this.endpointKeysByService.get(owner) ?? []) {
      if (merged.has(key)) continue;
      if (!this.endpointBase.has(key)) this.endpointBase.set(key, this.endpoints.get(key));
      this.endpoints.delete(key);
      changed = true;
    }
    if (merged.size > 0) this.endpointKeysByService.set(owner, [...merged.keys()]);
    else this.endpointKeysByService.delete(owner);
    if (changed) {
      this.pendingEndpointServices.add(owner);
      if (triggerTime !== undefined && triggerTime > this.startTime) {
        let times = this.triggerTimes.get(owner);
        if (!times) this.triggerTimes.set(owner, (times = []));
        times.push(triggerTime);
      }
    }
    return changed;
  }

  // --- node ---

  private upsertNode(obj: unknown): boolean {
    const parsed = parseNode(obj);
    if (!parsed.ok) {
      this.warnInvalid("Node", parsed.id, parsed.reason, parsed.id === this.nodeName);
      return false;
    }
    if (parsed.value.metadata.name !== this.nodeName) {
      this.log.debug(4, "Ignoring another node's Node object", { node: parsed.value.metadata.name });
      return false;
    }
    this.warned.delete(`Node/${this.nodeName}`);
    return this.setNode(nodeInfoOf(parsed.value));
  }

  private deleteNode(obj: unknown): boolean {
    if (objectId(obj, false) !== this.nodeName) return false;
    // As upstream: a deleted node is not eligible and has no topology labels.
    return this.setNode(unknownNode(this.nodeName, false));
  }

  private setNode(node: NodeInfo): boolean {
    if (sameNodeInfo(node, this.node)) return false;
    this.node = Object.freeze(node);
    this.nodeChanged = true;
    return true;
  }

  // --- warnings ---

  private warnInvalid(kind: string, id: string, reason: string, keptPrevious: boolean): void {
    const key = `${kind}/${id}`;
    if (this.warned.get(key) === reason) return;
    if (this.warned.size > 100000) this.warned.clear();
    this.warned.set(key, reason);
    this.log.warn(keptPrevious ? `Invalid ${kind}, keeping its last valid version` : `Skipping invalid ${kind}`, {
      kind,
      object: id,
      reason,
    });
  }

  private warnBadDelete(kind: string, obj: unknown): boolean {
    this.warnInvalid(kind, objectId(obj), "delete without metadata.name", false);
    return false;
  }
}
