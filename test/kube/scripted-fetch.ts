import type { FetchInit, FetchLike } from "../../src/kube/client.ts";

export interface SeenRequest {
  readonly method: string;
  readonly url: URL;
  readonly headers: Headers;
  readonly body: string | undefined;
  readonly init: FetchInit;
}

export type Reply = Response | Error | ((req: SeenRequest) => Response | Error | Promise<Response | Error>);

/**
 * A fetch that answers from a script, one reply per call in order. When the script runs out, calls
 * hang until their signal aborts, so the code under test parks where a test can see it.
 */
export class ScriptedFetch {
  readonly requests: SeenRequest[] = [];
  readonly #script: Reply[] = [];
  #waiters: Array<() => void> = [];

  reply(...replies: Reply[]): this {
    this.#script.push(...replies);
    return this;
  }

  get remaining(): number {
    return this.#script.length;
  }

  readonly fetch: FetchLike = async (url, init) => {
    const headers = new Headers(init.headers);
    const req: SeenRequest = { method: init.method ?? "GET", url: new URL(url), headers, body: typeof init.body === "string" ? init.body : undefined, init };
    this.requests.push(req);
    for (const w of this.#waiters.splice(0)) w();
    const next = this.#script.shift();
    const signal = init.signal ?? undefined;
    if (next === undefined) {
      return new Promise<Response>((_, reject) => {
        const fail = () => reject(abortError());
        if (signal?.aborted) fail();
        signal?.addEventListener("abort", fail, { once: true });
      });
    }
    const answer = typeof next === "function" ? await next(req) : next;
    if (answer instanceof Error) throw answer;
    return answer;
  };

  /** Resolves once `count` requests have been made (real-time deadline so a broken test fails). */
  async waitForRequests(count: number, timeoutMs = 2000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.requests.length < count) {
      if (Date.now() > deadline) {
        throw new Error(`expected ${count} requests, saw ${this.requests.length}: ${this.requests.map((r) => `${r.method} ${r.url.pathname}${r.url.search}`).join(", ")}`);
      }
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve);
        setTimeout(resolve, 10);
      });
    }
  }
}

function abortError(): Error {
  const err = new Error("The operation was aborted.");
  err.name = "AbortError";
  return err;
}

export function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

export function status(code: number, reason: string, message = `${reason} happened`): Response {
  return json(code, { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message, reason, code });
}

export function list(rv: string, items: unknown[], cont?: string): Response {
  return json(200, { kind: "List", apiVersion: "v1", metadata: cont ? { resourceVersion: rv, continue: cont } : { resourceVersion: rv }, items });
}

/** A watch body the test drives: push events, close it cleanly, or break it. */
export class WatchStream {
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #open = true;
  readonly response: Response;

  constructor(initial: unknown[] = [], options: { close?: boolean } = {}) {
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.#controller = controller;
      },
    });
    this.response = new Response(body, { status: 200, headers: { "Content-Type": "application/json" } });
    for (const event of initial) this.push(event);
    if (options.close) this.close();
  }

  /** Writes one event, cut into two chunks in the middle of its JSON. */
  push(event: unknown): void {
    const bytes = new TextEncoder().encode(JSON.stringify(event) + "\n");
    const cut = Math.floor(bytes.length / 2);
    this.#controller.enqueue(bytes.subarray(0, cut));
    this.#controller.enqueue(bytes.subarray(cut));
  }

  close(): void {
    if (!this.#open) return;
    this.#open = false;
    this.#controller.close();
  }

  fail(err: Error = new Error("connection reset by peer")): void {
    if (!this.#open) return;
    this.#open = false;
    this.#controller.error(err);
  }
}

export function obj(name: string, rv: string, extra: Record<string, unknown> = {}, namespace = "default"): Record<string, unknown> {
  return { metadata: { name, namespace, resourceVersion: rv }, ...extra };
}
