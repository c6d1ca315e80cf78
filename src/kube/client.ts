/**
 * A small API client on `fetch`: TLS verified by default, bearer-token / basic / client-certificate
 * auth, client-side rate limit, per-request timeouts, typed errors, and streaming watches.
 * Credentials never appear in log lines or error messages.
 */
import { z } from "zod";
import type { Logger } from "../log.ts";
import { silentLogger } from "../log.ts";
import type { Clock } from "../system/clock.ts";
import { realClock } from "../system/clock.ts";
import { version } from "../version.ts";
import { ApiError, NetworkError, apiErrorFromStatus, isAbortError } from "./errors.ts";
import type { RestConfig } from "./kubeconfig.ts";
import { NdjsonDecoder, NdjsonError } from "./ndjson.ts";
import { TokenBucket } from "./rate-limit.ts";

/**
 * clientConnection.contentType may ask for protobuf; kproxy always speaks JSON (it has no protobuf
 * codec), so a configured protobuf content type is accepted and ignored.
 */
export const wireContentType = "application/json";
export const contentTypeNote =
  "kproxy always uses JSON (Accept: application/json); a clientConnection.contentType of application/vnd.kubernetes.protobuf is accepted but ignored.";

export const userAgent = `kproxy/${version}`;

export interface FetchTls {
  ca?: string;
  cert?: string;
  key?: string;
  rejectUnauthorized?: boolean;
  serverName?: string;
}

export type FetchInit = RequestInit & { tls?: FetchTls };
export type FetchLike = (url: string, init: FetchInit) => Promise<Response>;

export const realFetch: FetchLike = (url, init) => fetch(url, init as RequestInit);

export type Query = Readonly<Record<string, string | number | boolean | undefined>>;

export interface ClientOptions {
  readonly config: RestConfig;
  readonly fetch?: FetchLike;
  readonly clock?: Clock;
  readonly logger?: Logger;
  /** clientConnection.qps / burst; qps <= 0 disables throttling. */
  readonly qps?: number;
  readonly burst?: number;
  /** Timeout for ordinary requests (not watches). Default 30 s. */
  readonly requestTimeoutMs?: number;
}

export interface RequestOptions {
  readonly query?: Query;
  readonly body?: unknown;
  readonly signal?: AbortSignal;
  readonly timeoutMs?: number;
}

export const watchEventTypes = ["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"] as const;
export type WatchEventType = (typeof watchEventTypes)[number];

const watchEventSchema = z.object({
  type: z.enum(watchEventTypes),
  object: z.record(z.string(), z.unknown()),
});

export interface WatchEvent {
  readonly type: WatchEventType;
  readonly object: Readonly<Record<string, unknown>>;
}

export interface WatchOptions {
  readonly query?: Query;
  readonly signal?: AbortSignal;
  /** The stream is abandoned (NetworkError) when no byte arrives for this long. */
  readonly idleTimeoutMs: number;
}

export function buildUrl(server: string, path: string, query?: Query): string {
  let url = server + (path.startsWith("/") ? path : `/${path}`);
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined) params.set(k, String(v));
    const text = params.toString();
    if (text) url += `?${text}`;
  }
  return url;
}

export class KubeClient {
  readonly config: RestConfig;
  readonly #fetch: FetchLike;
  readonly #clock: Clock;
  readonly #logger: Logger;
  readonly #limiter: TokenBucket;
  readonly #timeoutMs: number;
  readonly #tls: FetchTls | undefined;

  constructor(options: ClientOptions) {
    this.config = options.config;
    this.#fetch = options.fetch ?? realFetch;
    this.#clock = options.clock ?? realClock;
    this.#logger = options.logger ?? silentLogger;
    this.#limiter = new TokenBucket(options.qps ?? 5, options.burst ?? 10, this.#clock);
    this.#timeoutMs = options.requestTimeoutMs ?? 30_000;
    this.#tls = this.config.server.startsWith("https:") ? tlsFor(this.config) : undefined;
  }

  /** GET and parse a JSON body. */
  get(path: string, options: RequestOptions = {}): Promise<unknown> {
    return this.request("GET", path, options);
  }

  post(path: string, body: unknown, options: Omit<RequestOptions, "body"> = {}): Promise<unknown> {
    return this.request("POST", path, { ...options, body });
  }

  async request(method: string, path: string, options: RequestOptions = {}): Promise<unknown> {
    const controller = new AbortController();
    const unlink = linkAbort(options.signal, controller);
    const timeoutMs = options.timeoutMs ?? this.#timeoutMs;
    let timedOut = false;
    const timer = this.#clock.sleep(timeoutMs, controller.signal).then(() => {
      if (!controller.signal.aborted) {
        timedOut = true;
        controller.abort();
      }
    });
    try {
      const response = await this.#send(method, path, options.query, options.body, controller.signal);
      const text = await response.text();
      if (!response.ok) throw errorFromBody(response.status, text, method, path);
      if (text === "") return undefined;
      try {
        return JSON.parse(text);
      } catch {
        throw new ApiError(response.status, "InvalidResponse", `${method} ${path}: response is not JSON`);
      }
    } catch (err) {
      if (timedOut) throw new NetworkError(`${method} ${path}: timed out after ${timeoutMs} ms`, { cause: err });
      throw err;
    } finally {
      unlink();
      controller.abort();
      await timer;
    }
  }

  /**
   * Opens a watch and yields its events. Ends when the server closes the stream; throws ApiError when
   * the server refuses the watch, NetworkError when the connection breaks or goes idle.
   */
  async *watch(path: string, options: WatchOptions): AsyncGenerator<WatchEvent> {
    const controller = new AbortController();
    const unlink = linkAbort(options.signal, controller);
    let lastByte = this.#clock.now();
    let idle = false;
    const watchdog = (async () => {
      while (!controller.signal.aborted) {
        const quiet = this.#clock.now() - lastByte;
        if (quiet >= options.idleTimeoutMs) {
          idle = true;
          controller.abort();
          return;
        }
        await this.#clock.sleep(options.idleTimeoutMs - quiet, controller.signal);
      }
    })();
    const reason = () => (idle ? `no data for ${options.idleTimeoutMs} ms` : "connection closed");
    try {
      let response: Response;
      try {
        response = await this.#send("GET", path, { ...options.query, watch: "true" }, undefined, controller.signal);
      } catch (err) {
        if (idle) throw new NetworkError(`watch ${path}: ${reason()}`);
        throw err;
      }
      if (!response.ok) throw errorFromBody(response.status, await response.text().catch(() => ""), "watch", path);
      if (!response.body) return;
      const decoder = new NdjsonDecoder();
      const reader = response.body.getReader();
      // Not every body honours the request's signal; cancelling the reader always ends a pending read.
      const cancel = () => void reader.cancel().catch(() => {});
      controller.signal.addEventListener("abort", cancel, { once: true });
      if (controller.signal.aborted) cancel();
      try {
        for (;;) {
          let chunk: Awaited<ReturnType<typeof reader.read>>;
          try {
            chunk = await reader.read();
          } catch (err) {
            if (options.signal?.aborted) return;
            throw new NetworkError(`watch ${path}: ${reason()}`, { cause: err });
          }
          if (chunk.done) {
            if (idle) throw new NetworkError(`watch ${path}: ${reason()}`);
            if (controller.signal.aborted) return;
            break;
          }
          lastByte = this.#clock.now();
          for (const value of decoder.push(chunk.value)) yield toWatchEvent(value, path);
        }
        for (const value of decoder.end()) yield toWatchEvent(value, path);
      } finally {
        controller.signal.removeEventListener("abort", cancel);
        cancel();
      }
    } catch (err) {
      if (options.signal?.aborted && isAbortError(err)) return;
      throw err;
    } finally {
      unlink();
      controller.abort();
      await watchdog;
    }
  }

  async #send(method: string, path: string, query: Query | undefined, body: unknown, signal: AbortSignal): Promise<Response> {
    await this.#limiter.take(signal);
    if (signal.aborted) throw abortError();
    const headers: Record<string, string> = {
      Accept: wireContentType,
      "User-Agent": userAgent,
    };
    const auth = this.config.auth;
    if (auth.kind === "token") headers["Authorization"] = `Bearer ${await auth.token.token()}`;
    else if (auth.kind === "basic") headers["Authorization"] = `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString("base64")}`;
    if (body !== undefined) headers["Content-Type"] = wireContentType;
    const url = buildUrl(this.config.server, path, query);
    const init: FetchInit = { method, headers, signal, redirect: "error" };
    if (body !== undefined) init.body = JSON.stringify(body);
    if (this.#tls) init.tls = this.#tls;
    this.#logger.debug(6, "API request", { method, url });
    try {
      const response = await this.#fetch(url, init);
      this.#logger.debug(6, "API response", { method, url, status: response.status });
      return response;
    } catch (err) {
      if (isAbortError(err) || signal.aborted) throw abortError(err);
      throw new NetworkError(`${method} ${url}: ${describe(err)}`, { cause: err });
    }
  }
}

function tlsFor(config: RestConfig): FetchTls {
  const tls: FetchTls = { rejectUnauthorized: !config.tls.insecureSkipVerify };
  if (config.tls.ca !== undefined) tls.ca = config.tls.ca;
  if (config.tls.cert !== undefined) tls.cert = config.tls.cert;
  if (config.tls.key !== undefined) tls.key = config.tls.key;
  if (config.tls.serverName !== undefined) tls.serverName = config.tls.serverName;
  return tls;
}

function toWatchEvent(value: unknown, path: string): WatchEvent {
  const parsed = watchEventSchema.safeParse(value);
  if (!parsed.success) {
    const type = typeof value === "object" && value !== null && "type" in value ? String(value.type) : "?";
    throw new NdjsonError(`watch ${path}: unexpected event (type ${type})`, "");
  }
  return parsed.data;
}

function errorFromBody(status: number, text: string, method: string, path: string): ApiError {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  return apiErrorFromStatus(status, body, `${method} ${path}: HTTP ${status}`);
}

function linkAbort(outer: AbortSignal | undefined, inner: AbortController): () => void {
  if (!outer) return () => {};
  if (outer.aborted) {
    inner.abort();
    return () => {};
  }
  const onAbort = () => inner.abort();
  outer.addEventListener("abort", onAbort, { once: true });
  return () => outer.removeEventListener("abort", onAbort);
}

function abortError(cause?: unknown): Error {
  const err = new Error("request aborted", { cause });
  err.name = "AbortError";
  return err;
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = "code" in err && typeof err.code === "string" ? `${err.code}: ` : "";
    return code + err.message;
  }
  return String(err);
}
