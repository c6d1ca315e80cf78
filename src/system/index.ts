export * from "./exec.ts";
export * from "./clock.ts";
