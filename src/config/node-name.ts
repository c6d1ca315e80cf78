/**
 * The Node kproxy runs for, as upstream derives it: hostnameOverride, else the machine's hostname;
 * trimmed and lower-cased (Node names are lower case; hostnames often are not).
 */
import { hostname as osHostname } from "node:os";
import { ConfigError } from "./errors.ts";

export function nodeName(hostnameOverride: string, machineHostname: () => string = osHostname): string {
  const name = (hostnameOverride.trim() === "" ? machineHostname() : hostnameOverride).trim();
  if (name === "") {
    throw new ConfigError("node name", [{ path: "hostnameOverride", value: hostnameOverride, message: "is empty and so is the machine's hostname, expected a node name" }]);
  }
  return name.toLowerCase();
}
