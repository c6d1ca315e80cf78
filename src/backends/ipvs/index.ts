export * from "./addresses.ts";
export * from "./backend.ts";
export * from "./cleanup.ts";
export * from "./graceful.ts";
export * from "./plan.ts";
export * from "./sets.ts";
