import { describe, expect, test } from "bun:test";
import { bunExec, ExecError, runChecked } from "../../src/system/exec.ts";

describe("bunExec", () => {
  test("passes stdin and captures stdout, stderr and the exit code", async () => {
    const result = await bunExec.run(["sh", "-c", "cat; echo oops >&2; exit 3"], { stdin: "hello" });
    expect(result).toEqual({ code: 3, stdout: "hello", stderr: "oops\n", timedOut: false });
  });

  test("streams a large text stdin through whole (checksum), multi-byte characters included", async () => {
    // Slices are 2^20 UTF-16 units.
    const line = "-A KUBE-SVC-ABCDEFGHIJKLMNOP -m comment --comment \"ns/svc:p é😀\" -j KUBE-SEP-QRSTUVWXYZ012345\n";
    // Padded so that one "😀" straddles the first slice boundary.
    const pad = (((1 << 20) - 1 - line.indexOf("😀")) % line.length + line.length) % line.length;
    const text = "#".repeat(pad) + line.repeat(Math.ceil(20_000_000 / line.length));
    const result = await bunExec.run(["sh", "-c", "cat | sha256sum"], { stdin: text, timeoutMs: 60_000 });
    const expected = new Bun.CryptoHasher("sha256").update(text).digest("hex");
    expect(result.code).toBe(0);
    expect(result.stdout.split(" ")[0]).toBe(expected);
  });

  test("a child that exits without reading its stdin is reported by its exit code", async () => {
    const result = await bunExec.run(["sh", "-c", "exit 4"], { stdin: "x".repeat(5_000_000) });
    expect(result.code).toBe(4);
    expect(result.timedOut).toBe(false);
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
