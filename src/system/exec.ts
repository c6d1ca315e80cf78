/** Every external command kproxy runs goes through an Exec, so tests can substitute a fake. */
export interface ExecOptions {
  /** Bytes or text written to the child's stdin, then closed. */
  readonly stdin?: string | Uint8Array;
  /** The child is killed (SIGKILL) after this long; the result then has `timedOut: true`. */
  readonly timeoutMs?: number;
  readonly env?: Readonly<Record<string, string>>;
}

export interface ExecResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
}

export interface Exec {
  run(argv: readonly string[], options?: ExecOptions): Promise<ExecResult>;
}

export class ExecError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly result: ExecResult,
  ) {
    const why = result.timedOut ? "timed out" : `exited ${result.code}`;
    const detail = result.stderr.trim().split("\n").slice(-3).join("; ");
    super(`${argv[0] ?? "?"} ${why}${detail ? `: ${detail}` : ""}`);
    this.name = "ExecError";
  }
}

/** Runs a command and throws ExecError unless it exits 0. */
export async function runChecked(exec: Exec, argv: readonly string[], options?: ExecOptions): Promise<ExecResult> {
  const result = await exec.run(argv, options);
  if (result.code !== 0 || result.timedOut) throw new ExecError(argv, result);
  return result;
}

const DEFAULT_TIMEOUT_MS = 60_000;
/** Text stdin goes to the child in slices of this many UTF-16 units (about 1 MiB of ASCII). */
const STDIN_SLICE = 1 << 20;
/** Text stdin longer than this is streamed. */
const STREAMED_STDIN_MIN = 4 * STDIN_SLICE;

/**
 * Text stdin as a stream of encoded slices, pulled as the child reads: a 20 MB restore input is
 * then never held a second time as one encoded copy (tens of MB of peak memory).
 */
function textStream(text: string): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  let start = 0;
  return new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        if (start >= text.length) {
          controller.close();
          return;
        }
        let end = Math.min(text.length, start + STDIN_SLICE);
        // Never split a surrogate pair between two slices.
        if (end < text.length && (text.charCodeAt(end - 1) & 0xfc00) === 0xd800) end++;
        controller.enqueue(encoder.encode(text.slice(start, end)));
        start = end;
      },
    },
    { highWaterMark: 0 },
  );
}

function stdinOf(stdin: ExecOptions["stdin"]): "ignore" | Uint8Array | ReadableStream<Uint8Array> {
  if (stdin === undefined) return "ignore";
  if (typeof stdin !== "string") return stdin;
  // Small inputs (nearly all) go in one piece: a stream costs about a millisecond more per command.
  return stdin.length <= STREAMED_STDIN_MIN ? new TextEncoder().encode(stdin) : textStream(stdin);
}

/** The real Exec, on Bun.spawn. A missing binary is reported as exit code 127, like a shell would. */
export const bunExec: Exec = {
  async run(argv, options = {}) {
    if (argv.length === 0) throw new Error("exec: empty argv");
    let child: ReturnType<typeof Bun.spawn>;
    try {
      child = Bun.spawn([...argv], {
        stdin: stdinOf(options.stdin),
        stdout: "pipe",
        stderr: "pipe",
        env: options.env ? { ...process.env, ...options.env } : process.env,
      });
    } catch (err) {
      return { code: 127, stdout: "", stderr: `${argv[0]}: ${(err as Error).message}`, timedOut: false };
    }
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    try {
      const [stdout, stderr, code] = await Promise.all([
        new Response(child.stdout as ReadableStream).text(),
        new Response(child.stderr as ReadableStream).text(),
        child.exited,
      ]);
      return { code, stdout, stderr, timedOut };
    } finally {
      clearTimeout(timer);
    }
  },
};
