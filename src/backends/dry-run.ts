import type { ChangeSet, Snapshot } from "../model/types.ts";
import type { Backend, ProxyMode, SyncResult } from "./backend.ts";

/**
 * A backend that plans and never applies: each sync computes what the real backend would write and
 * hands the text to `print`. Used by --dry-run and the demo, which must run without root.
 */
export class DryRunBackend implements Backend {
  constructor(
    readonly mode: ProxyMode,
    private readonly planner: (snapshot: Snapshot) => string,
    private readonly print: (plan: string, changes: ChangeSet) => void,
  ) {}

  async sync(snapshot: Snapshot, changes: ChangeSet): Promise<SyncResult> {
    this.print(this.planner(snapshot), changes);
    let endpoints = 0;
    for (const list of snapshot.endpoints.values()) endpoints += list.length;
    return { servicePorts: snapshot.services.size, endpoints };
  }

  plan(snapshot: Snapshot): string {
    return this.planner(snapshot);
  }

  async cleanup(): Promise<void> {}
  async close(): Promise<void> {}
}
