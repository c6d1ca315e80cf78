/**
 * `--services-file`: Services, EndpointSlices (and optionally this node's Node) from a local YAML or
 * JSON file instead of the API server, so an edge node can proxy with no control plane. The file is
 * watched (fs.watch on its directory, plus a periodic stat because editors and ConfigMap mounts replace
 * files and directories atomically, which some watchers miss) and every change is delivered as the
 * upserts and deletes that turn the previous content into the new one.
 *
 * A file that does not parse keeps the previous content (with a warning): half an edit must not
 * withdraw every service. `synced` is sent after the first successful load, so kproxy never
 * programs an empty ruleset just because the file was unreadable for a moment at start.
 */
import { watch as fsWatch } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { dirname } from "node:path";
import { parseAllDocuments } from "yaml";
import type { Logger } from "../log.ts";
import { silentLogger } from "../log.ts";
import type { Clock } from "../system/clock.ts";
import { realClock } from "../system/clock.ts";
import type { ObjectKind, Source, SourceEvent } from "./types.ts";

/** Identity of a file version as stat sees it; any difference means "read it again". */
export interface FileStamp {
  readonly mtimeMs: number;
  readonly size: number;
  readonly ino: number;
}

/** The file system as the manifest source uses it. */
export interface ManifestFiles {
  read(path: string): Promise<string>;
  /** undefined when the file does not exist. */
  stat(path: string): Promise<FileStamp | undefined>;
  /** Calls `onChange` when the file or its directory may have changed; returns a stop function. */
  watch(path: string, onChange: () => void): () => void;
}

export const realManifestFiles: ManifestFiles = {
  read: (path) => readFile(path, "utf8"),
  async stat(path) {
    try {
      const s = await stat(path);
      return { mtimeMs: s.mtimeMs, size: s.size, ino: s.ino };
    } catch {
      return undefined;
    }
  },
  watch(path, onChange) {
    try {
      // The directory, not the file: an atomic rename or a ConfigMap's ..data swap replaces the
      // file's inode, and a watch on the old inode would go quiet.
      const watcher = fsWatch(dirname(path), { persistent: false }, () => onChange());
      watcher.on("error", () => {});
      return () => watcher.close();
    } catch {
      return () => {};
    }
  },
};

export interface ManifestSourceOptions {
  readonly path: string;
  readonly files?: ManifestFiles;
  readonly clock?: Clock;
  readonly logger?: Logger;
  /** How often to stat the file when no watch event arrives (default 2 s). */
  readonly pollIntervalMs?: number;
}

export interface ManifestObject {
  readonly kind: ObjectKind;
  /** `Kind/namespace/name` (`Node/name` for nodes): unique within a manifest. */
  readonly id: string;
  readonly object: Record<string, unknown>;
}

export interface ParsedManifest {
  readonly objects: readonly ManifestObject[];
  /** Documents that were not used, one readable line each. */
  readonly skipped: readonly string[];
}

const KINDS: ReadonlySet<string> = new Set<ObjectKind>(["Service", "EndpointSlice", "Node"]);

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Parses a manifest's text; throws an Error with a readable message when it is not YAML/JSON. */
export function parseManifest(text: string): ParsedManifest {
  const docs: unknown[] = [];
  const trimmed = text.trimStart();
  if (trimmed.startsWith("{") || trimmed.startsWith("[")) {
    try {
      docs.push(JSON.parse(text));
    } catch {
      // Flow-style YAML also starts with a brace; let the YAML parser decide and report.
    }
  }
  if (docs.length === 0) {
    for (const doc of parseAllDocuments(text)) {
      const error = doc.errors[0];
      if (error) throw new Error(error.message.split("\n")[0]);
      docs.push(doc.toJS({ maxAliasCount: 100 }));
    }
  }

  const objects: ManifestObject[] = [];
  const skipped: string[] = [];
  const byId = new Map<string, number>();
  const add = (item: unknown, where: string, listKind?: string) => {
    if (!isRecord(item)) {
      if (item != null) skipped.push(`${where}: not an object`);
      return;
    }
    let kind = item["kind"];
    if (kind === undefined && listKind) kind = listKind;
    if (typeof kind !== "string") {
      skipped.push(`${where}: no kind`);
      return;
    }
    if (Array.isArray(item["items"]) && kind.endsWith("List")) {
      const itemKind = kind.slice(0, -4);
      item["items"].forEach((sub, i) => add(sub, `${where}.items[${i}]`, KINDS.has(itemKind) ? itemKind : undefined));
      return;
    }
    if (!KINDS.has(kind)) {
      skipped.push(`${where}: kind ${kind} is not used`);
      return;
    }
    const meta = item["metadata"];
    const name = isRecord(meta) ? meta["name"] : undefined;
    if (typeof name !== "string" || name === "") {
      skipped.push(`${where}: ${kind} without metadata.name`);
      return;
    }
    const ns = isRecord(meta) && typeof meta["namespace"] === "string" && meta["namespace"] ? meta["namespace"] : "default";
    const id = kind === "Node" ? `Node/${name}` : `${kind}/${ns}/${name}`;
    const object = kind === "Node" || item["kind"] ? item : { ...item, kind };
    const previous = byId.get(id);
    if (previous !== undefined) {
      skipped.push(`${where}: duplicate ${id}, the later one wins`);
      objects[previous] = { kind: kind as ObjectKind, id, object };
      return;
    }
    byId.set(id, objects.length);
    objects.push({ kind: kind as ObjectKind, id, object });
  };
  docs.forEach((doc, i) => {
    if (Array.isArray(doc)) doc.forEach((item, j) => add(item, `document ${i + 1}[${j}]`));
    else add(doc, `document ${i + 1}`);
  });
  return { objects, skipped };
}

const KIND_ORDER: Record<ObjectKind, number> = { Node: 0, Service: 1, EndpointSlice: 2 };

/**
 * Events that turn `before` into `after`: upserts for new or changed objects (node, services, then
 * slices, so endpoints never arrive before their service), then deletes (slices before services).
 */
export function diffManifests(
  before: ReadonlyMap<string, { kind: ObjectKind; text: string; object: unknown }>,
  after: ReadonlyMap<string, { kind: ObjectKind; text: string; object: unknown }>,
): SourceEvent[] {
  const upserts: { kind: ObjectKind; object: unknown }[] = [];
  const deletes: { kind: ObjectKind; object: unknown }[] = [];
  for (const [id, entry] of after) {
    if (before.get(id)?.text !== entry.text) upserts.push(entry);
  }
  for (const [id, entry] of before) {
    if (!after.has(id)) deletes.push(entry);
  }
  upserts.sort((a, b) => KIND_ORDER[a.kind] - KIND_ORDER[b.kind]);
  deletes.sort((a, b) => KIND_ORDER[b.kind] - KIND_ORDER[a.kind]);
  return [
    ...upserts.map((e): SourceEvent => ({ type: "upsert", kind: e.kind, object: e.object })),
    ...deletes.map((e): SourceEvent => ({ type: "delete", kind: e.kind, object: e.object })),
  ];
}

type Content = Map<string, { kind: ObjectKind; text: string; object: unknown }>;

export class ManifestSource implements Source {
  private readonly files: ManifestFiles;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly pollMs: number;

  constructor(private readonly options: ManifestSourceOptions) {
    this.files = options.files ?? realManifestFiles;
    this.clock = options.clock ?? realClock;
    this.log = options.logger ?? silentLogger;
    this.pollMs = options.pollIntervalMs ?? 2000;
  }

  async start(onEvent: (event: SourceEvent) => void, signal: AbortSignal): Promise<void> {
    const path = this.options.path;
    let content: Content = new Map();
    let lastText: string | undefined;
    let lastStamp: FileStamp | undefined;
    let lastError: string | undefined;
    let synced = false;
    let poked = true;
    let wake: (() => void) | undefined;
    const stopWatch = this.files.watch(path, () => {
      poked = true;
      wake?.();
    });

    const check = async () => {
      const wasPoked = poked;
      poked = false;
      const stamp = await this.files.stat(path);
      if (!stamp) {
        this.warnOnce(`manifest file ${path} does not exist; keeping the previous content`, lastError, (e) => (lastError = e));
        return;
      }
      const stampChanged = !lastStamp || stamp.mtimeMs !== lastStamp.mtimeMs || stamp.size !== lastStamp.size || stamp.ino !== lastStamp.ino;
      if (!stampChanged && !wasPoked) return;
      let text: string;
      try {
        text = await this.files.read(path);
      } catch (err) {
        this.warnOnce(`cannot read manifest file ${path}: ${(err as Error).message}`, lastError, (e) => (lastError = e));
        return;
      }
      lastStamp = stamp;
      if (text === lastText) return;
      let parsed: ParsedManifest;
      try {
        parsed = parseManifest(text);
      } catch (err) {
        lastText = text;
        this.warnOnce(`manifest file ${path} does not parse, keeping the previous content: ${(err as Error).message}`, lastError, (e) => (lastError = e));
        return;
      }
      lastText = text;
      lastError = undefined;
      for (const note of parsed.skipped) this.log.warn("Ignoring part of the manifest file", { path, detail: note });
      const next: Content = new Map();
      for (const o of parsed.objects) next.set(o.id, { kind: o.kind, text: JSON.stringify(o.object), object: o.object });
      const events = diffManifests(content, next);
      content = next;
      if (events.length > 0 || !synced) {
        this.log.info("Loaded manifest file", { path, objects: next.size, changes: events.length });
      }
      for (const event of events) onEvent(event);
      if (!synced) {
        synced = true;
        onEvent({ type: "synced" });
      }
    };

    try {
      while (!signal.aborted) {
        await check();
        if (signal.aborted) break;
        if (poked) continue;
        const nap = new AbortController();
        const stopNap = () => nap.abort();
        wake = stopNap;
        signal.addEventListener("abort", stopNap, { once: true });
        await this.clock.sleep(this.pollMs, nap.signal);
        signal.removeEventListener("abort", stopNap);
        wake = undefined;
      }
    } finally {
      stopWatch();
    }
  }

  private warnOnce(message: string, last: string | undefined, remember: (m: string) => void): void {
    if (message === last) return;
    remember(message);
    this.log.warn(message);
  }
}
