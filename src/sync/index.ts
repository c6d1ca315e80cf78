export * from "./runner.ts";
export * from "./loop.ts";
