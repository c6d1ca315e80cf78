/**
 * Configuration problems as readable lines: `iptables.masqueradeBit: 40 is out of range, expected an
 * integer from 0 to 31`. Never a stack trace: main prints `problems` (or `message`) and exits 1.
 */

export interface ConfigProblem {
  /** Field path such as `iptables.masqueradeBit` or `nodePortAddresses[1]`; "" for the whole input. */
  readonly path: string;
  /** The offending value when there is one (absent for a missing file or a syntax error). */
  readonly value?: unknown;
  /** The rest of the sentence: `is out of range, expected an integer from 0 to 31`. */
  readonly message: string;
}

/** How a value appears in a message: strings quoted, numbers and booleans bare, structures as JSON. */
export function showValue(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number" || typeof value === "boolean" || value === null) return String(value);
  try {
    const json = JSON.stringify(value);
    return json.length > 80 ? json.slice(0, 77) + "..." : json;
  } catch {
    return String(value);
  }
}

export function formatProblem(problem: ConfigProblem, wholeInputName = "configuration"): string {
  const path = problem.path === "" ? wholeInputName : problem.path;
  // A missing value reads "apiVersion: missing, expected ..." rather than naming a non-value.
  if (!("value" in problem) || problem.value === undefined) {
    return `${path}: ${problem.message.replace(/^is not [^,]*, /, "missing, ").replace(/^is /, "")}`;
  }
  return `${path}: ${showValue(problem.value)} ${problem.message}`;
}

export class ConfigError extends Error {
  /** One readable line per problem, each naming the field path, the value and what was expected. */
  readonly problems: readonly string[];

  constructor(
    /** Where the configuration came from: a file path, "command line", ... */
    readonly source: string,
    readonly details: readonly ConfigProblem[],
    /** Warnings found before the problems (unknown fields), for completeness. */
    readonly warnings: readonly string[] = [],
  ) {
    const problems = details.map((p) => formatProblem(p, source));
    super(`invalid configuration (${source}):\n  ${problems.join("\n  ")}`);
    this.name = "ConfigError";
    this.problems = problems;
  }
}
