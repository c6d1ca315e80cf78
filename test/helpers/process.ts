import type { Subprocess } from "bun";

/** A child process whose stderr/stdout are collected as they arrive, so tests can wait for a line. */
export class Child {
  stdout = "";
  stderr = "";
  readonly proc: Subprocess<"ignore", "pipe", "pipe">;
  private readonly pumps: Promise<void>[];

  constructor(argv: string[], options: { cwd?: string; env?: Record<string, string> } = {}) {
    this.proc = Bun.spawn(argv, {
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
      ...(options.cwd ? { cwd: options.cwd } : {}),
      env: { ...process.env, ...options.env },
    });
    this.pumps = [this.pump(this.proc.stdout, "stdout"), this.pump(this.proc.stderr, "stderr")];
  }

  private async pump(stream: ReadableStream<Uint8Array>, into: "stdout" | "stderr"): Promise<void> {
    const decoder = new TextDecoder();
    for await (const chunk of stream) this[into] += decoder.decode(chunk, { stream: true });
  }

  /** Waits until `pattern` matches stdout+stderr, and returns the match. */
  async waitFor(pattern: RegExp, timeoutMs = 10_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = (this.stderr + "\n" + this.stdout).match(pattern);
      if (m) return m;
      if (this.proc.exitCode !== null || Date.now() > deadline) {
        throw new Error(`no match for ${pattern} (exit ${this.proc.exitCode})\nstderr:\n${this.stderr}\nstdout:\n${this.stdout}`);
      }
      await Bun.sleep(10);
    }
  }

  /** Waits for the process to end and its output to be read. */
  async exited(timeoutMs = 10_000): Promise<number> {
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), timeoutMs);
    try {
      const code = await this.proc.exited;
      await Promise.all(this.pumps);
      return code;
    } finally {
      clearTimeout(timer);
    }
  }

  kill(signal: NodeJS.Signals = "SIGTERM"): void {
    if (this.proc.exitCode === null) this.proc.kill(signal);
  }
}

/** Polls `fn` until it returns a value (not undefined) or the deadline passes. */
export async function eventually<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await fn();
      if (value !== undefined) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${lastError ? `: ${String(lastError)}` : ""}`);
    await Bun.sleep(10);
  }
}
