import type { Exec, ExecOptions, ExecResult } from "../../src/system/exec.ts";

/** A fake Exec that records every command and answers from `reply` (exit 0, no output by default). */
export class RecordingExec implements Exec {
  readonly calls: { argv: readonly string[]; options: ExecOptions | undefined }[] = [];
  constructor(private readonly reply: (argv: readonly string[]) => Partial<ExecResult> = () => ({})) {}
  async run(argv: readonly string[], options?: ExecOptions): Promise<ExecResult> {
    this.calls.push({ argv, options });
    return { code: 0, stdout: "", stderr: "", timedOut: false, ...this.reply(argv) };
  }
}
