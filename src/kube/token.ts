/**
 * Bearer tokens. A token file is re-read periodically because bound service-account tokens are
 * rotated by the kubelet (roughly hourly, refreshed well before expiry).
 */
import type { Clock } from "../system/clock.ts";
import type { Logger } from "../log.ts";
import type { HostFiles } from "./host.ts";

export interface TokenSource {
  token(): Promise<string>;
}

export function staticToken(value: string): TokenSource {
  return { token: async () => value };
}

export interface FileTokenOptions {
  readonly files: HostFiles;
  readonly clock: Clock;
  readonly refreshMs: number;
  readonly logger: Logger;
}

export class FileTokenSource implements TokenSource {
  #cached: string | undefined;
  #readAt = 0;
  #inflight: Promise<string> | undefined;

  constructor(
    readonly path: string,
    private readonly options: FileTokenOptions,
  ) {}

  token(): Promise<string> {
    const now = this.options.clock.now();
    if (this.#cached !== undefined && now - this.#readAt < this.options.refreshMs) return Promise.resolve(this.#cached);
    this.#inflight ??= this.#read(now).finally(() => {
      this.#inflight = undefined;
    });
    return this.#inflight;
  }

  async #read(now: number): Promise<string> {
    try {
      const value = (await this.options.files.readText(this.path)).trim();
      if (value === "") throw new Error("token file is empty");
      this.#cached = value;
      this.#readAt = now;
      return value;
    } catch (err) {
      // Keep using the last good token: a file being replaced is briefly unreadable.
      if (this.#cached !== undefined) {
        this.options.logger.warn("Cannot re-read token file; keeping the previous token", { path: this.path, err: (err as Error).message });
        this.#readAt = now;
        return this.#cached;
      }
      throw err;
    }
  }
}
