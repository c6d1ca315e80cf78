import { test } from "bun:test";

/**
 * Tests that need something from the machine (a tool, root, a kernel feature) declare it here:
 * `const promtoolTest = needs(hasTool("promtool"), "needs promtool (Debian package prometheus)")`.
 * When the condition holds this is plain `test`. Otherwise the tests are skipped with the reason
 * printed, except under KPROXY_E2E=1 (CI and the full suite), where each one fails naming what is
 * missing, so a machine without the tool can never pass the suite silently.
 */
export function needs(condition: boolean, reason: string): typeof test {
  if (condition) return test;
  if (process.env["KPROXY_E2E"] === "1") {
    const failing = (name: string, _fn?: unknown, options?: number | Parameters<typeof test>[2]) =>
      test(
        name,
        () => {
          throw new Error(`KPROXY_E2E=1 but this test cannot run: ${reason}`);
        },
        options as Parameters<typeof test>[2],
      );
    return failing as unknown as typeof test;
  }
  console.warn(`skipping tests: ${reason} (set KPROXY_E2E=1 to make this a failure)`);
  return test.skip;
}

/** Whether `name` is an executable on PATH. */
export function hasTool(name: string): boolean {
  return Bun.which(name) !== null;
}
