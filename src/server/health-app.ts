/**
 * The health server's routes (healthzBindAddress, default 0.0.0.0:10256): `/healthz` and `/livez`
 * with upstream kube-proxy's status rules and byte-for-byte JSON bodies, so load balancers and
 * probes configured for kube-proxy read kproxy the same way.
 */
import { Hono } from "hono";
import type { Counter } from "./registry.ts";
import type { ProxierHealth } from "./health.ts";

/** Go's zero time.Time as its String() prints it; upstream reports it before the first sync. */
const GO_ZERO_TIME = "0001-01-01 00:00:00 +0000 UTC";

/**
 * A UTC instant as Go's time.Time String() prints it: `2026-01-01 12:00:00.5 +0000 UTC`, fraction
 * trimmed of trailing zeros. (Go appends a process-relative monotonic reading `m=+…` to times taken
 * from time.Now(); it means nothing outside the process, so it is not reproduced.)
 */
export function formatGoTime(ms: number | undefined): string {
  if (ms === undefined) return GO_ZERO_TIME;
  const iso = new Date(ms).toISOString(); // 2026-01-01T12:00:00.500Z
  const fraction = iso.slice(20, 23).replace(/0+$/, "");
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)}${fraction ? "." + fraction : ""} +0000 UTC`;
}

export interface HealthAppOptions {
  readonly health: ProxierHealth;
  /** kubeproxy_proxy_healthz_total / kubeproxy_proxy_livez_total, counted per answer. */
  readonly healthzTotal?: Counter<"code">;
  readonly livezTotal?: Counter<"code">;
}

const JSON_HEADERS = { "Content-Type": "application/json", "X-Content-Type-Options": "nosniff" } as const;

export function createHealthApp(options: HealthAppOptions): Hono {
  const app = new Hono();
  const { health } = options;

  app.all("/healthz", () => {
    const status = health.status();
    const healthy = status.healthy && status.nodeEligible;
    const code = healthy ? 200 : 503;
    options.healthzTotal?.inc({ code: String(code) });
    // A healthy answer reports lastUpdated as "now", as upstream does for compatibility with
    // releases where it meant "the sync loop last ran".
    const lastUpdated = healthy ? status.currentTime : status.lastUpdated;
    const body = `{"lastUpdated": ${JSON.stringify(formatGoTime(lastUpdated))},"currentTime": ${JSON.stringify(formatGoTime(status.currentTime))}, "nodeEligible": ${status.nodeEligible}}`;
    return new Response(body, { status: code, headers: JSON_HEADERS });
  });

  app.all("/livez", () => {
    const status = health.status();
    const code = status.healthy ? 200 : 503;
    options.livezTotal?.inc({ code: String(code) });
    const lastUpdated = status.healthy ? status.currentTime : status.lastUpdated;
    const body = `{"lastUpdated": ${JSON.stringify(formatGoTime(lastUpdated))},"currentTime": ${JSON.stringify(formatGoTime(status.currentTime))}}`;
    return new Response(body, { status: code, headers: JSON_HEADERS });
  });

  app.notFound(() => goNotFound());
  return app;
}

/** Go's http.ServeMux answer for an unknown path. */
export function goNotFound(): Response {
  return new Response("404 page not found\n", {
    status: 404,
    headers: { "Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff" },
  });
}
