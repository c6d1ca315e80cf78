export * from "./chains.ts";
export * from "./hash.ts";
export { cidrContains, familyOf, isLoopback, joinHostPort } from "./ip.ts";
export * from "./options.ts";
export * from "./rules.ts";
