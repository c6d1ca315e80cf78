import type { Config } from "../config/index.ts";
import { effectiveProxyMode, parsePortRange } from "../config/index.ts";
import { categorizeEndpoints } from "../model/topology.ts";
import type { IPFamily, Snapshot } from "../model/types.ts";
import { generateRules } from "./iptables/rules.ts";
import { planIpvsText } from "./ipvs/backend.ts";
import { defaultHostIP, planUserspaceText } from "./userspace/backend.ts";
import { type LocalAddresses, ruleOptionsForNode, ruleOptionsFromConfig } from "./iptables-options.ts";

/** Families that need rules: IPv4 always (the node's primary family here), IPv6 when a service has an IPv6 IP. */
export function familiesIn(snapshot: Snapshot): IPFamily[] {
  const families: IPFamily[] = ["IPv4"];
  for (const sp of snapshot.services.values()) {
    if (sp.family === "IPv6") {
      families.push("IPv6");
      break;
    }
  }
  return families;
}

/** The iptables-restore input for every family, as one readable text. */
export function iptablesPlanner(config: Config, localAddresses: LocalAddresses): (snapshot: Snapshot) => string {
  const base = ruleOptionsFromConfig(config);
  return (snapshot) => {
    const options = ruleOptionsForNode(base, config, snapshot.node, localAddresses);
    return familiesIn(snapshot)
      .map((family) => {
        const tool = family === "IPv6" ? "ip6tables-restore" : "iptables-restore";
        const { text } = generateRules(snapshot, family, options, { categorize: categorizeEndpoints });
        return `# ${family}: input for ${tool} --noflush\n${text}`;
      })
      .join("\n");
  };
}

/** What --dry-run can show for a mode; undefined where that mode has no planner yet. */
export function plannerFor(config: Config, localAddresses: LocalAddresses): ((snapshot: Snapshot) => string) | undefined {
  switch (effectiveProxyMode(config)) {
    case "iptables":
      return iptablesPlanner(config, localAddresses);
    case "ipvs": {
      const ruleOptions = ruleOptionsFromConfig(config);
      return (snapshot) =>
        planIpvsText(snapshot, { scheduler: config.ipvs.scheduler, ruleOptions, nodePortAddresses: config.nodePortAddresses, localAddresses });
    }
    case "userspace": {
      const portRange = parsePortRange(config.portRange) ?? { base: 0, size: 0 };
      return (snapshot) =>
        planUserspaceText(snapshot, { bindAddress: config.bindAddress, portRange, portals: true, hostIP: defaultHostIP, categorize: categorizeEndpoints });
    }
  }
}
