/**
 * The metrics server's routes (metricsBindAddress, default 127.0.0.1:10249), as upstream kube-proxy
 * serves them: `/metrics` (Prometheus text format), `/proxyMode` (the mode's name), `/configz` (the
 * effective configuration as JSON) and `/healthz` (plain `ok`: the process is up).
 */
import { Hono } from "hono";
import { goNotFound } from "./health-app.ts";
import { EXPOSITION_CONTENT_TYPE, type Registry } from "./registry.ts";

/** The key configz files kube-proxy's configuration under. */
export const CONFIGZ_KEY = "kubeproxy.config.k8s.io";

export interface MetricsAppOptions {
  readonly registry: Registry;
  /** The proxy mode's name, as /proxyMode reports it ("iptables", "ipvs", "userspace"). */
  readonly mode: string;
  /** The effective configuration; /configz answers `{"kubeproxy.config.k8s.io": <this>}`. */
  readonly configz?: () => unknown;
}

const TEXT = { "Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff" } as const;

export function createMetricsApp(options: MetricsAppOptions): Hono {
  const app = new Hono();

  app.get("/metrics", () => new Response(options.registry.expose(), { headers: { "Content-Type": EXPOSITION_CONTENT_TYPE } }));

  app.all("/proxyMode", () => new Response(options.mode, { headers: TEXT }));

  app.all("/configz", () => {
    if (!options.configz) return goNotFound();
    let body: string;
    try {
      body = JSON.stringify({ [CONFIGZ_KEY]: options.configz() });
    } catch (err) {
      return new Response(`error serializing configuration: ${err instanceof Error ? err.message : String(err)}\n`, { status: 500, headers: TEXT });
    }
    return new Response(body, { headers: { "Content-Type": "application/json", "X-Content-Type-Options": "nosniff" } });
  });

  // Upstream's default health checks: only "ping", which passes while the process serves at all.
  const healthz = (verbose: boolean) =>
    new Response(verbose ? "[+]ping ok\nhealthz check passed\n" : "ok", { headers: TEXT });
  app.all("/healthz", (c) => healthz(c.req.query("verbose") !== undefined));
  app.all("/healthz/ping", () => healthz(false));

  app.notFound(() => goNotFound());
  return app;
}
