import type { HostFiles } from "../../src/kube/host.ts";

/** An in-memory filesystem; records every read so tests can see re-reads. */
export class FakeFiles implements HostFiles {
  readonly reads: string[] = [];
  constructor(readonly files: Map<string, string> = new Map()) {}
  set(path: string, text: string): this {
    this.files.set(path, text);
    return this;
  }
  remove(path: string): void {
    this.files.delete(path);
  }
  async readText(path: string): Promise<string> {
    this.reads.push(path);
    const text = this.files.get(path);
    if (text === undefined) throw new Error(`ENOENT: no such file or directory, open '${path}'`);
    return text;
  }
}

export const b64 = (text: string) => Buffer.from(text).toString("base64");
