/**
 * The API server as a source: reflectors for Services, EndpointSlices and this node's Node, reported
 * as SourceEvents. `synced` is sent once Services and EndpointSlices have both been listed, so the
 * first sync never programs a half-known cluster.
 */
import { hostname as osHostname } from "node:os";
import type { KubeClient } from "../kube/client.ts";
import { Reflector, type RawObject, type ReflectorOptions } from "../kube/reflector.ts";
import type { Logger } from "../log.ts";
import { silentLogger } from "../log.ts";
import type { Clock } from "../system/clock.ts";
import { realClock } from "../system/clock.ts";
import type { ObjectKind, Source, SourceEvent } from "./types.ts";

/**
 * Services and EndpointSlices that another proxy claims (service-proxy-name) or that belong to
 * headless services are not ours. Older kube-proxy releases send this one selector for both kinds;
 * newer ones split it and add a `spec.clusterIP!=None` field selector, which API servers before
 * that release reject. The combined label selector works everywhere, and the model drops headless
 * services on its own.
 */
export const proxyLabelSelector = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

export const servicesPath = "/api/v1/services";
export const endpointSlicesPath = "/apis/discovery.k8s.io/v1/endpointslices";
export const nodesPath = "/api/v1/nodes";

export function nodeFieldSelector(nodeName: string): string {
  return `metadata.name=${nodeName}`;
}

export type ReflectorTuning = Partial<Pick<ReflectorOptions, "pageSize" | "minWatchTimeoutSeconds" | "watchIdleGraceMs" | "backoff">>;

export interface ApiSourceOptions {
  readonly client: KubeClient;
  /** This node's name (hostname-override or the host name). */
  readonly nodeName: string;
  readonly logger?: Logger;
  readonly clock?: Clock;
  readonly random?: () => number;
  readonly reflector?: ReflectorTuning;
  /** Post the `Starting` event for this node (default true). */
  readonly postStartingEvent?: boolean;
  /** Host name for the event's reportingInstance; defaults to the OS host name. */
  readonly hostname?: string;
  /**
   * Collects garbage while the initial lists arrive (default: a full collection, `Bun.gc(true)`),
   * once per `listGarbageEvery` objects (default 2,000; 0 turns it off).
   */
  readonly collectGarbage?: () => void;
  readonly listGarbageEvery?: number;
}

/**
 * Each listed object is decoded, validated and turned into the model's form, which leaves two
 * copies of it behind as garbage. Left to itself the JS heap grows to hold pages of that garbage,
 * and the allocator keeps the pages once the list is done: at 10,000 services, a full collection
 * every 2,000 objects keeps about 30 MB less resident for good, for about 0.2 s more at start. Every
 * 500 objects would keep 5 MB less again but cost 0.6 s more: the list would no longer be in within
 * a second.
 */
const DEFAULT_LIST_GARBAGE_EVERY = 2000;

export class ApiSource implements Source {
  constructor(private readonly options: ApiSourceOptions) {}

  async start(onEvent: (event: SourceEvent) => void, signal: AbortSignal): Promise<void> {
    const o = this.options;
    const logger = o.logger ?? silentLogger;
    let pendingSync = new Set<ObjectKind>(["Service", "EndpointSlice"]);
    const garbageEvery = o.listGarbageEvery ?? DEFAULT_LIST_GARBAGE_EVERY;
    const collectGarbage = o.collectGarbage ?? (() => Bun.gc(true));
    let listedSinceCollection = 0;
    const listed = () => {
      if (garbageEvery <= 0 || pendingSync.size === 0 || ++listedSinceCollection < garbageEvery) return;
      listedSinceCollection = 0;
      collectGarbage();
    };

    const reflect = (kind: ObjectKind, name: string, path: string, selectors: { labelSelector?: string; fieldSelector?: string }) =>
      new Reflector({
        ...o.reflector,
        ...selectors,
        client: o.client,
        path,
        name,
        clock: o.clock ?? realClock,
        random: o.random ?? Math.random,
        logger,
        handler: {
          onUpsert: (object: RawObject) => {
            onEvent({ type: "upsert", kind, object });
            listed();
          },
          onDelete: (object: RawObject) => onEvent({ type: "delete", kind, object }),
          onSynced: () => {
            if (!pendingSync.delete(kind) || pendingSync.size > 0) return;
            pendingSync = new Set();
            logger.info("Initial lists of services and endpoint slices received");
            onEvent({ type: "synced" });
          },
        },
      });

    const reflectors = [
      reflect("Service", "services", servicesPath, { labelSelector: proxyLabelSelector }),
      reflect("EndpointSlice", "endpointslices", endpointSlicesPath, { labelSelector: proxyLabelSelector }),
      reflect("Node", "node", nodesPath, { fieldSelector: nodeFieldSelector(o.nodeName) }),
    ];
    const runs = reflectors.map((r) => r.run(signal));
    if (o.postStartingEvent ?? true) {
      void postStartingEvent(o.client, {
        nodeName: o.nodeName,
        hostname: o.hostname ?? osHostname(),
        now: (o.clock ?? realClock).now(),
        signal,
      }).catch((err: unknown) => logger.debug(2, "Could not post the Starting event", { err: (err as Error).message }));
    }
    await Promise.all(runs);
  }
}

export const reportingController = "kproxy";

export interface StartingEventInput {
  readonly nodeName: string;
  readonly hostname: string;
  /** Milliseconds since the epoch. */
  readonly now: number;
}

/**
 * The events.k8s.io/v1 Event kube-proxy records at start: reason Starting, action StartKubeProxy,
 * about the Node (whose UID is taken to be its name, as kube-proxy does), in the default namespace
 * because a Node has none.
 */
export function startingEvent(input: StartingEventInput): Record<string, unknown> {
  const nanos = BigInt(Math.trunc(input.now)) * 1_000_000n;
  return {
    apiVersion: "events.k8s.io/v1",
    kind: "Event",
    metadata: { name: `${input.nodeName}.${nanos.toString(16)}`, namespace: "default" },
    eventTime: microTime(input.now),
    reportingController,
    reportingInstance: `${reportingController}-${input.hostname}`,
    action: "StartKubeProxy",
    reason: "Starting",
    type: "Normal",
    regarding: { kind: "Node", name: input.nodeName, uid: input.nodeName },
  };
}

/** RFC 3339 with microseconds, the MicroTime wire format. */
export function microTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");
}

export async function postStartingEvent(client: KubeClient, input: StartingEventInput & { readonly signal?: AbortSignal }): Promise<void> {
  const options = input.signal ? { signal: input.signal } : {};
  await client.post("/apis/events.k8s.io/v1/namespaces/default/events", startingEvent(input), options);
}
