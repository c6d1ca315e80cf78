export * from "./registry.ts";
export * from "./process-metrics.ts";
export * from "./health.ts";
export * from "./health-app.ts";
export * from "./metrics-server.ts";
export * from "./serve.ts";
export * from "./start.ts";
export * from "./service-health.ts";
