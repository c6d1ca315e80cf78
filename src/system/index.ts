export * from "./exec.ts";
export * from "./clock.ts";
export * from "./iptables.ts";
export * from "./conntrack.ts";
export * from "./sysctl.ts";
export * from "./ipvs.ts";
export * from "./ipset.ts";
