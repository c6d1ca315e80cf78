/**
 * Starts bench/watch/server.ts (the fake API server holding a synthetic cluster) in its own process
 * and waits for the line announcing where it serves. The caller stops it ("quit" on stdin, or a signal).
 */
import type { Subprocess } from "bun";
import { join } from "node:path";
import type { ClusterSpec } from "../fixtures/cluster.ts";

export interface ApiServerProcess {
  readonly process: Subprocess<"pipe", "pipe", "inherit">;
  readonly url: string;
  readonly caPem: string;
  readonly token: string;
}

export async function spawnApiServer(spec: ClusterSpec): Promise<ApiServerProcess> {
  const process = Bun.spawn([globalThis.process.execPath, join(import.meta.dir, "server.ts"), JSON.stringify(spec)], {
    stdin: "pipe",
    stdout: "pipe",
    stderr: "inherit",
  });
  const reader = process.stdout.getReader();
  let head = "";
  while (!head.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the API server process ended early");
    head += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  const { url, caPem, token } = JSON.parse(head.slice(0, head.indexOf("\n"))) as { url: string; caPem: string; token: string };
  return { process, url, caPem, token };
}
