import { describe, expect, test } from "bun:test";
import { bunExec, ExecError, runChecked } from "../../src/system/exec.ts";

describe("bunExec", () => {
  test("passes stdin and captures stdout, stderr and the exit code", async () => {
    const result = await bunExec.run(["sh", "-c", "cat; echo oops >&2; exit 3"], { stdin: "hello" });
    expect(result).toEqual({ code: 3, stdout: "hello", stderr: "oops\n", timedOut: false });
  });

  test("kills a command that outlives its timeout", async () => {
    const started = Date.now();
    const result = await bunExec.run(["sleep", "30"], { timeoutMs: 100 });
    expect(result.timedOut).toBe(true);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  test("reports a missing binary as exit 127 instead of throwing", async () => {
    const result = await bunExec.run(["/nonexistent/kproxy-no-such-binary"]);
    expect(result.code).toBe(127);
  });

  test("runChecked throws an ExecError naming the command and its stderr", async () => {
    const err = await runChecked(bunExec, ["sh", "-c", "echo 'bad rule' >&2; exit 2"]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ExecError);
    expect((err as ExecError).message).toBe("sh exited 2: bad rule");
  });
});
