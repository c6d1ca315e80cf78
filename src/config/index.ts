export * from "./duration.ts";
export * from "./net.ts";
export * from "./schema.ts";
export * from "./errors.ts";
export * from "./encode.ts";
export * from "./load.ts";
export * from "./node-name.ts";
