/**
 * Runs a Hono app on Bun.serve at a "host:port" address. Like upstream kube-proxy, a bind failure
 * (port taken, address not yet configured) is logged and retried every few seconds for as long as
 * kproxy runs, so a proxy that starts before its address exists still comes up; with
 * bindAddressHardFail the failure is fatal instead.
 */
import type { Logger } from "../log.ts";
import { realClock, type Clock } from "../system/clock.ts";

export interface FetchApp {
  fetch(request: Request): Response | Promise<Response>;
}

export interface ServeOptions {
  /** Names the server in logs ("healthz", "metrics"). */
  readonly name: string;
  /** "host:port", "[v6]:port" or ":port" (all IPv4 addresses); port 0 picks a free port. */
  readonly address: string;
  readonly app: FetchApp;
  readonly logger: Logger;
  readonly clock?: Clock;
  /** Throw a BindError when the first bind fails instead of retrying (bindAddressHardFail). */
  readonly hardFail?: boolean;
  /** Pause between bind attempts; upstream waits 5 s. */
  readonly retryDelayMs?: number;
}

export interface ServerHandle {
  readonly name: string;
  readonly address: string;
  /** The bound port; undefined while binding is still being retried. */
  readonly port: number | undefined;
  /** Resolves with the port once listening, or with undefined when stopped before that. */
  readonly listening: Promise<number | undefined>;
  /** Stops retrying and closes the listener and its connections. */
  stop(): Promise<void>;
}

export class BindError extends Error {
  constructor(
    readonly address: string,
    readonly reason: string,
  ) {
    super(`failed to listen on ${address}: ${reason}`);
    this.name = "BindError";
  }
}

export const DEFAULT_BIND_RETRY_MS = 5000;

/** Splits "host:port" / "[v6]:port" / ":port"; throws on anything else. */
export function parseHostPort(address: string): { readonly hostname: string; readonly port: number } {
  const match = /^(?:\[([0-9a-fA-F:.]+(?:%[\w.-]+)?)\]|([^:[\]]*)):(\d{1,5})$/.exec(address);
  const port = Number(match?.[3]);
  if (!match || !(port >= 0 && port <= 65535)) {
    throw new Error(`invalid address ${JSON.stringify(address)}: expected host:port, [ipv6]:port or :port`);
  }
  const hostname = match[1] ?? match[2] ?? "";
  return { hostname: hostname === "" ? "0.0.0.0" : hostname, port };
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return typeof code === "string" && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}

/**
 * Starts serving. Resolves once the first bind attempt is over: listening, or (without hardFail)
 * retrying in the background. Rejects with BindError on a failed first bind under hardFail, and with a
 * plain Error for a malformed address either way.
 */
export async function serve(options: ServeOptions): Promise<ServerHandle> {
  const { hostname, port: wantedPort } = parseHostPort(options.address);
  const clock = options.clock ?? realClock;
  const retryDelayMs = options.retryDelayMs ?? DEFAULT_BIND_RETRY_MS;
  const log = options.logger.with({ server: options.name, address: options.address });
  const stopping = new AbortController();
  let server: ReturnType<typeof Bun.serve> | undefined;
  let resolveListening!: (port: number | undefined) => void;
  const listening = new Promise<number | undefined>((resolve) => (resolveListening = resolve));

  const tryBind = (): string | undefined => {
    try {
      // development: false keeps Bun's HTML error pages (with stack traces) out of answers.
      server = Bun.serve({ hostname, port: wantedPort, development: false, fetch: (req) => options.app.fetch(req) });
      log.debug(3, "Serving", { port: server.port });
      resolveListening(server.port);
      return undefined;
    } catch (err) {
      return describe(err);
    }
  };

  const firstFailure = tryBind();
  if (firstFailure !== undefined) {
    if (options.hardFail) throw new BindError(options.address, firstFailure);
    log.error("Failed to start server, will retry", { err: firstFailure, retryAfterMs: retryDelayMs });
    void (async () => {
      while (!stopping.signal.aborted) {
        await clock.sleep(retryDelayMs, stopping.signal);
        if (stopping.signal.aborted) break;
        const failure = tryBind();
        if (failure === undefined) return;
        log.error("Failed to start server, will retry", { err: failure, retryAfterMs: retryDelayMs });
      }
      resolveListening(undefined);
    })();
  }

  return {
    name: options.name,
    address: options.address,
    get port() {
      return server?.port;
    },
    listening,
    async stop() {
      stopping.abort();
      resolveListening(undefined);
      const running = server;
      server = undefined;
      await running?.stop(true);
    },
  };
}
