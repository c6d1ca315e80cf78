export * from "./runner.ts";
