/**
 * List-then-watch for one resource, keeping a local cache so every change reaches the handler exactly
 * once: upserts, deletes (with the last known object), and `onSynced` after the first full list.
 * Objects stay raw JSON here; the model validates them.
 *
 * - LIST is paginated (`limit`/`continue`); an expired continue token falls back to one full list.
 * - WATCH starts at the list's resourceVersion with bookmarks and a randomized server timeout.
 * - 410 (HTTP or an ERROR event) re-lists and diffs against the cache, so objects deleted while the
 *   history was compacted are still reported as deleted.
 * - A watch that ends normally is re-opened from the last resourceVersion seen.
 * - Network errors, 5xx and other failures back off exponentially with jitter.
 */
import type { Logger } from "../log.ts";
import { silentLogger } from "../log.ts";
import type { Clock } from "../system/clock.ts";
import { realClock } from "../system/clock.ts";
import { Backoff, defaultBackoffPolicy, type BackoffPolicy } from "./backoff.ts";
import type { KubeClient, Query, WatchEvent } from "./client.ts";
import { ApiError, apiErrorFromStatus, NetworkError } from "./errors.ts";

export type RawObject = Readonly<Record<string, unknown>>;

export interface ReflectorHandler {
  onUpsert(obj: RawObject): void;
  onDelete(obj: RawObject): void;
  /** After the first complete list (once per reflector run). */
  onSynced(): void;
}

export interface ReflectorOptions {
  readonly client: KubeClient;
  /** Collection path, e.g. `/api/v1/services`. */
  readonly path: string;
  /** For log lines, e.g. "services". */
  readonly name: string;
  readonly labelSelector?: string | undefined;
  readonly fieldSelector?: string | undefined;
  readonly handler: ReflectorHandler;
  readonly clock?: Clock;
  readonly random?: () => number;
  readonly logger?: Logger;
  /** Items per LIST page. Default 500. */
  readonly pageSize?: number;
  /** Watches ask the server to end after between this and twice this. Default 300 s. */
  readonly minWatchTimeoutSeconds?: number;
  /** A watch silent for its server timeout plus this long is abandoned. Default 30 s. */
  readonly watchIdleGraceMs?: number;
  readonly backoff?: Partial<BackoffPolicy>;
}

/** A watch that ends with no events in less than this is treated as a failure, as upstream does. */
const shortWatchMs = 1000;

export const defaultPageSize = 500;
export const defaultMinWatchTimeoutSeconds = 300;

class ExpiredError extends Error {
  override readonly name = "ExpiredError";
}

export class Reflector {
  readonly #o: ReflectorOptions;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #logger: Logger;
  readonly #backoff: Backoff;
  /**
   * resourceVersion by key of every object held. Consumers keep their own parsed state, and a delete
   * event needs only the object's name: keeping more (labels, uid, the raw object) costs megabytes
   * at ten thousand services.
   */
  readonly #cache = new Map<string, string>();
  #rv = "";
  #synced = false;

  constructor(options: ReflectorOptions) {
    this.#o = options;
    this.#clock = options.clock ?? realClock;
    this.#random = options.random ?? Math.random;
    this.#logger = (options.logger ?? silentLogger).with({ resource: options.name });
    this.#backoff = new Backoff({ ...defaultBackoffPolicy, ...options.backoff }, this.#random);
  }

  /** The last resourceVersion seen (list, event or bookmark). */
  get resourceVersion(): string {
    return this.#rv;
  }

  get hasSynced(): boolean {
    return this.#synced;
  }

  /**
   * The cached objects by `namespace/name` (or `name` for cluster-scoped ones), as identities: name,
   * namespace and resourceVersion, which is what a deletion found by a re-list reports.
   */
  get objects(): ReadonlyMap<string, RawObject> {
    return new Map([...this.#cache].map(([key, rv]) => [key, identityOf(key, rv)]));
  }

  /** Lists and watches until `signal` aborts. Never rejects for API trouble; it retries instead. */
  async run(signal: AbortSignal): Promise<void> {
    let needList = true;
    // Consecutive 410s on watches that delivered nothing: past the first, re-lists back off too.
    let expiredInARow = 0;
    while (!signal.aborted) {
      if (needList) {
        try {
          await this.#list(signal);
          needList = false;
        } catch (err) {
          if (signal.aborted) break;
          await this.#pauseAfter("list", err, signal);
          continue;
        }
      }
      const started = this.#clock.now();
      let events = 0;
      try {
        const timeoutSeconds = Math.floor(this.#minWatchTimeout() * (this.#random() + 1));
        const stream = this.#o.client.watch(this.#o.path, {
          query: this.#query({
            resourceVersion: this.#rv,
            allowWatchBookmarks: "true",
            timeoutSeconds,
          }),
          signal,
          idleTimeoutMs: timeoutSeconds * 1000 + (this.#o.watchIdleGraceMs ?? 30_000),
        });
        for await (const event of stream) {
          events++;
          if (event.type !== "ERROR") expiredInARow = 0;
          this.#apply(event);
        }
        if (signal.aborted) break;
        this.#resetIfHealthy(started);
        if (events === 0 && this.#clock.now() - started < shortWatchMs) {
          await this.#pauseAfter("watch", new NetworkError("watch closed at once without any event"), signal);
        }
      } catch (err) {
        if (signal.aborted) break;
        if (err instanceof ExpiredError || (err instanceof ApiError && err.gone)) {
          this.#logger.info("Watch history expired; re-listing", { resourceVersion: this.#rv, reason: (err as Error).message });
          needList = true;
          if (++expiredInARow > 1) await this.#pauseAfter("watch", err, signal);
          continue;
        }
        this.#resetIfHealthy(started);
        // A resourceVersion newer than the server knows (e.g. after an etcd restore) never heals on
        // its own: list again once the pause is over.
        if (err instanceof ApiError && /too large resource version/i.test(err.message)) needList = true;
        await this.#pauseAfter("watch", err, signal);
      }
    }
  }

  #minWatchTimeout(): number {
    return this.#o.minWatchTimeoutSeconds ?? defaultMinWatchTimeoutSeconds;
  }

  #query(extra: Query): Query {
    const query: Record<string, string | number | boolean | undefined> = { ...extra };
    if (this.#o.labelSelector) query["labelSelector"] = this.#o.labelSelector;
    if (this.#o.fieldSelector) query["fieldSelector"] = this.#o.fieldSelector;
    return query;
  }

  #resetIfHealthy(started: number): void {
    if (this.#clock.now() - started >= this.#backoff.policy.resetAfterMs) this.#backoff.reset();
  }

  async #pauseAfter(what: "list" | "watch", err: unknown, signal: AbortSignal): Promise<void> {
    const delayMs = this.#backoff.next();
    const fields = { err: describeError(err), retryInMs: delayMs, attempt: this.#backoff.attempts };
    if (err instanceof ApiError && !err.retriable) this.#logger.error(`${what === "list" ? "List" : "Watch"} refused by the API server`, { ...fields, status: err.status, reason: err.reason });
    else this.#logger.warn(`${what === "list" ? "List" : "Watch"} failed`, fields);
    await this.#clock.sleep(delayMs, signal);
  }

  /**
   * Lists page by page, handing each page's objects on as it arrives: holding a whole large list
   * before applying it would keep every raw object alive at once. Deletions are known only once the
   * last page is in; `synced` waits for that too.
   */
  async #list(signal: AbortSignal): Promise<void> {
    const pageSize = this.#o.pageSize ?? defaultPageSize;
    const fetchPage = (cont: string) =>
      this.#o.client
        .get(this.#o.path, { query: this.#query({ limit: pageSize, continue: cont || undefined }), signal })
        .then((body) => parseListPage(body, this.#o.path));
    const seen = new Set<string>();
    let stats = { items: 0, upserts: 0 };
    let cont = "";
    let next = fetchPage(cont);
    for (;;) {
      let page: ListPage;
      try {
        page = await next;
      } catch (err) {
        if (cont !== "" && err instanceof ApiError && err.gone) {
          // The snapshot behind the continue token was compacted: one unpaginated list instead.
          this.#logger.info("List continuation expired; listing everything at once");
          const full = parseListPage(await this.#o.client.get(this.#o.path, { query: this.#query({}), signal }), this.#o.path);
          const fullSeen = new Set<string>();
          this.#finishList(fullSeen, full.rv, this.#applyPage(full.items, fullSeen, { items: 0, upserts: 0 }));
          return;
        }
        throw err;
      }
      // The next page is on its way while this one is applied, so the server's and our work overlap.
      if (page.continue !== "") {
        next = fetchPage(page.continue);
        // Awaited on the next turn; this keeps a failure meanwhile from counting as unhandled.
        next.catch(() => {});
      }
      stats = this.#applyPage(page.items, seen, stats);
      if (page.continue === "") {
        this.#finishList(seen, page.rv, stats);
        return;
      }
      cont = page.continue;
    }
  }


  /** Reports a listed page's new and changed objects; `seen` collects the keys listed so far. */
  #applyPage(items: readonly unknown[], seen: Set<string>, stats: { items: number; upserts: number }): { items: number; upserts: number } {
    let upserts = stats.upserts;
    for (const item of items) {
      const meta = metaOf(item);
      if (!meta) {
        this.#logger.warn("Skipping listed object without metadata.name");
        continue;
      }
      seen.add(meta.key);
      if (meta.rv !== "" && this.#cache.get(meta.key) === meta.rv) continue;
      this.#cache.set(meta.key, meta.rv);
      upserts++;
      this.#emit("upsert", item as RawObject);
    }
    return { items: stats.items + items.length, upserts };
  }

  /** The list is complete: what it did not contain is gone. */
  #finishList(seen: ReadonlySet<string>, rv: string, stats: { items: number; upserts: number }): void {
    let deletes = 0;
    for (const [key, rv] of this.#cache) {
      if (seen.has(key)) continue;
      this.#cache.delete(key);
      deletes++;
      this.#emit("delete", identityOf(key, rv));
    }
    this.#rv = rv;
    this.#logger.debug(2, "Listed", { items: stats.items, upserts: stats.upserts, deletes, resourceVersion: rv });
    if (!this.#synced) {
      this.#synced = true;
      try {
        this.#o.handler.onSynced();
      } catch (err) {
        this.#logger.error("Handler failed on synced", { err: describeError(err) });
      }
    }
  }

  #apply(event: WatchEvent): void {
    if (event.type === "ERROR") {
      const err = apiErrorFromStatus(500, event.object, "watch ERROR event");
      if (err.gone) throw new ExpiredError(err.message);
      throw err;
    }
    const meta = metaOf(event.object);
    if (event.type === "BOOKMARK") {
      const rv = rvOf(event.object);
      if (rv !== "") this.#rv = rv;
      return;
    }
    if (!meta) {
      this.#logger.warn("Skipping watch event for an object without metadata.name", { type: event.type });
      return;
    }
    if (event.type === "DELETED") {
      if (this.#cache.delete(meta.key)) this.#emit("delete", event.object);
    } else {
      if (!(meta.rv !== "" && this.#cache.get(meta.key) === meta.rv)) {
        this.#cache.set(meta.key, meta.rv);
        this.#emit("upsert", event.object);
      }
    }
    if (meta.rv !== "") this.#rv = meta.rv;
  }

  #emit(kind: "upsert" | "delete", obj: RawObject): void {
    try {
      if (kind === "upsert") this.#o.handler.onUpsert(obj);
      else this.#o.handler.onDelete(obj);
    } catch (err) {
      this.#logger.error("Handler failed", { event: kind, object: metaOf(obj)?.key, err: describeError(err) });
    }
  }
}

interface ListPage {
  readonly items: unknown[];
  readonly rv: string;
  readonly continue: string;
}

function parseListPage(body: unknown, path: string): ListPage {
  if (typeof body !== "object" || body === null) throw new ApiError(200, "InvalidResponse", `list ${path}: body is not an object`);
  const b = body as { items?: unknown; metadata?: { resourceVersion?: unknown; continue?: unknown } };
  const items = b.items ?? [];
  if (!Array.isArray(items)) throw new ApiError(200, "InvalidResponse", `list ${path}: items is not an array`);
  const rv = b.metadata?.resourceVersion;
  if (typeof rv !== "string" || rv === "") throw new ApiError(200, "InvalidResponse", `list ${path}: no metadata.resourceVersion`);
  const cont = b.metadata?.continue;
  return { items, rv, continue: typeof cont === "string" ? cont : "" };
}

interface Meta {
  readonly key: string;
  readonly rv: string;
}

/** The cache key and resourceVersion of a raw object; undefined when it has no name. */
export function metaOf(obj: unknown): Meta | undefined {
  if (typeof obj !== "object" || obj === null) return undefined;
  const metadata = (obj as { metadata?: unknown }).metadata;
  if (typeof metadata !== "object" || metadata === null) return undefined;
  const { name, namespace, resourceVersion } = metadata as { name?: unknown; namespace?: unknown; resourceVersion?: unknown };
  if (typeof name !== "string" || name === "") return undefined;
  const key = typeof namespace === "string" && namespace !== "" ? `${namespace}/${name}` : name;
  return { key, rv: typeof resourceVersion === "string" ? resourceVersion : "" };
}

/** What a delete found by a re-list reports: the object's name (and namespace) and last resourceVersion. */
function identityOf(key: string, rv: string): RawObject {
  const slash = key.indexOf("/");
  const metadata = slash < 0 ? { name: key, resourceVersion: rv } : { namespace: key.slice(0, slash), name: key.slice(slash + 1), resourceVersion: rv };
  return { metadata };
}

function rvOf(obj: unknown): string {
  const metadata = typeof obj === "object" && obj !== null ? (obj as { metadata?: { resourceVersion?: unknown } }).metadata : undefined;
  return typeof metadata?.resourceVersion === "string" ? metadata.resourceVersion : "";
}

function describeError(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}
