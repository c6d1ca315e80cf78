import { describe, expect, test } from "bun:test";
import { mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { memoryLogger } from "../../src/log.ts";
import { ManifestSource, parseManifest, realManifestFiles, type FileStamp, type ManifestFiles } from "../../src/source/manifest.ts";
import type { SourceEvent } from "../../src/source/types.ts";
import { FakeClock, settle } from "../helpers/fake-clock.ts";

const svcYaml = (name: string, port = 80) => `apiVersion: v1
kind: Service
metadata:
  name: ${name}
  namespace: demo
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: ${port}
`;

const sliceYaml = (name: string, ip: string) => `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ${name}
  namespace: demo
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
endpoints:
- addresses: ["${ip}"]
`;

class FakeFiles implements ManifestFiles {
  text: string | undefined;
  private version = 0;
  private listeners = new Set<() => void>();
  constructor(text?: string) {
    this.text = text;
  }
  write(text: string | undefined, notify = true): void {
    this.text = text;
    this.version++;
    if (notify) for (const l of this.listeners) l();
  }
  async read(): Promise<string> {
    if (this.text === undefined) throw new Error("ENOENT");
    return this.text;
  }
  async stat(): Promise<FileStamp | undefined> {
    return this.text === undefined ? undefined : { mtimeMs: this.version, size: this.text.length, ino: 1 };
  }
  watch(_path: string, onChange: () => void): () => void {
    this.listeners.add(onChange);
    return () => this.listeners.delete(onChange);
  }
}

function describeEvent(e: SourceEvent): string {
  if (e.type === "synced") return "synced";
  const meta = (e.object as { metadata: { name: string } }).metadata;
  return `${e.type} ${e.kind} ${meta.name}`;
}

async function until(cond: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await settle();
  }
}

function run(files: ManifestFiles, clock = new FakeClock()) {
  const logger = memoryLogger();
  const events: SourceEvent[] = [];
  const ac = new AbortController();
  const source = new ManifestSource({ path: "/etc/kproxy/services.yaml", files, clock, logger, pollIntervalMs: 1000 });
  const done = source.start((e) => events.push(e), ac.signal);
  const names = () => events.map(describeEvent);
  const warnings = () => logger.lines.filter((l) => (JSON.parse(l) as { warning?: boolean }).warning);
  return { events, names, warnings, clock, stop: async () => (ac.abort(), await done) };
}

describe("parseManifest", () => {
  test("multi-document YAML with Service, EndpointSlice and Node; other kinds skipped", () => {
    const p = parseManifest(`${svcYaml("web")}---\n${sliceYaml("web-1", "10.1.0.1")}---\nkind: Node\nmetadata: {name: edge-1}\n---\nkind: ConfigMap\nmetadata: {name: x}\n---\n`);
    expect(p.objects.map((o) => o.id)).toEqual(["Service/demo/web", "EndpointSlice/demo/web-1", "Node/edge-1"]);
    expect(p.skipped).toEqual(["document 4: kind ConfigMap is not used"]);
  });

  test("a List and typed lists whose items carry no kind", () => {
    const list = JSON.stringify({
      apiVersion: "v1",
      kind: "List",
      items: [{ kind: "Service", metadata: { name: "a" }, spec: {} }, { kind: "ServiceList", items: [{ metadata: { name: "b" }, spec: {} }] }],
    });
    const p = parseManifest(list);
    expect(p.objects.map((o) => o.id)).toEqual(["Service/default/a", "Service/default/b"]);
    expect(p.objects[1]?.object["kind"]).toBe("Service");
  });

  test("JSON arrays, nameless objects and duplicates", () => {
    const p = parseManifest(JSON.stringify([{ kind: "Service", metadata: {} }, { kind: "Service", metadata: { name: "a" }, spec: { x: 1 } }, { kind: "Service", metadata: { name: "a" }, spec: { x: 2 } }]));
    expect(p.objects).toHaveLength(1);
    expect(p.objects[0]?.object["spec"]).toEqual({ x: 2 });
    expect(p.skipped).toHaveLength(2);
  });

  test("broken YAML throws a one-line error", () => {
    expect(() => parseManifest("kind: Service\nmetadata: {name: [x\n")).toThrow();
  });
});

describe("ManifestSource", () => {
  test("first load: upserts then synced", async () => {
    const s = run(new FakeFiles(`${svcYaml("web")}---\n${sliceYaml("web-1", "10.1.0.1")}`));
    try {
      await until(() => s.names().includes("synced"), "synced");
      expect(s.names()).toEqual(["upsert Service web", "upsert EndpointSlice web-1", "synced"]);
    } finally {
      await s.stop();
    }
  });

  test("a file change (seen through the watch) is delivered as a diff", async () => {
    const files = new FakeFiles(`${svcYaml("web")}---\n${sliceYaml("web-1", "10.1.0.1")}---\n${sliceYaml("web-2", "10.1.0.2")}`);
    const s = run(files);
    try {
      await until(() => s.names().includes("synced"), "synced");
      s.events.length = 0;
      files.write(`${svcYaml("web")}---\n${sliceYaml("web-1", "10.1.0.9")}---\n${svcYaml("api")}`);
      await until(() => s.events.length >= 3, "diff events");
      expect(s.names()).toEqual(["upsert Service api", "upsert EndpointSlice web-1", "delete EndpointSlice web-2"]);
    } finally {
      await s.stop();
    }
  });

  test("without a watch event the periodic stat notices the change", async () => {
    const files = new FakeFiles(svcYaml("web"));
    const s = run(files);
    try {
      await until(() => s.names().includes("synced"), "synced");
      s.events.length = 0;
      files.write(svcYaml("web", 81), false);
      await s.clock.waitForSleepers(1);
      await s.clock.advance(1000);
      await until(() => s.events.length >= 1, "poll");
      expect(s.names()).toEqual(["upsert Service web"]);
    } finally {
      await s.stop();
    }
  });

  test("a bad edit keeps the previous content and warns once; the fix applies", async () => {
    const files = new FakeFiles(svcYaml("web"));
    const s = run(files);
    try {
      await until(() => s.names().includes("synced"), "synced");
      s.events.length = 0;
      files.write("kind: Service\nmetadata: {name: [broken\n");
      await until(() => s.warnings().length >= 1, "warning");
      files.write("kind: Service\nmetadata: {name: [broken\n"); // same text again: no new warning
      await s.clock.waitForSleepers(1);
      await s.clock.advance(1000);
      expect(s.events).toHaveLength(0);
      expect(s.warnings()).toHaveLength(1);
      expect(s.warnings()[0]).toContain("keeping the previous content");
      files.write(`${svcYaml("web")}---\n${svcYaml("api")}`);
      await until(() => s.events.length >= 1, "fixed file");
      expect(s.names()).toEqual(["upsert Service api"]);
    } finally {
      await s.stop();
    }
  });

  test("synced waits for the first readable file", async () => {
    const files = new FakeFiles(undefined);
    const s = run(files);
    try {
      await s.clock.waitForSleepers(1);
      expect(s.events).toHaveLength(0);
      expect(s.warnings()[0]).toContain("does not exist");
      files.write(svcYaml("web"));
      await until(() => s.names().includes("synced"), "synced");
      expect(s.names()).toEqual(["upsert Service web", "synced"]);
    } finally {
      await s.stop();
    }
  });

  test("real files: an atomic replace of the file is picked up", async () => {
    const dir = await mkdtemp(join(tmpdir(), "kproxy-manifest-"));
    const path = join(dir, "services.json");
    const ac = new AbortController();
    const events: SourceEvent[] = [];
    try {
      await writeFile(path, JSON.stringify({ kind: "Service", metadata: { name: "a" }, spec: { clusterIP: "10.96.0.1", ports: [{ port: 80 }] } }));
      const source = new ManifestSource({ path, files: realManifestFiles, pollIntervalMs: 20 });
      const done = source.start((e) => events.push(e), ac.signal);
      await until(() => events.some((e) => e.type === "synced"), "synced");
      await writeFile(`${path}.tmp`, JSON.stringify({ kind: "Service", metadata: { name: "b" }, spec: { clusterIP: "10.96.0.2", ports: [{ port: 80 }] } }));
      await rename(`${path}.tmp`, path);
      await until(() => events.length >= 4, "replace events", 5000);
      expect(events.slice(2).map(describeEvent)).toEqual(["upsert Service b", "delete Service a"]);
      ac.abort();
      await done;
    } finally {
      ac.abort();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
