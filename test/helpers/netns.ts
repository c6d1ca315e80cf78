import { bunExec, type Exec, type ExecOptions, runChecked } from "../../src/system/exec.ts";

/** Network namespaces made by a test; every one is deleted by the test that made it. */
export function isRoot(): boolean {
  return typeof process.getuid === "function" && process.getuid() === 0;
}

let counter = 0;

export class Netns {
  private constructor(readonly name: string) {}

  /** Creates `kp-<prefix>-<pid>-<n>` with its loopback up. */
  static async create(prefix: string): Promise<Netns> {
    const name = `kp-${prefix}-${process.pid}-${counter++}`;
    await runChecked(bunExec, ["ip", "netns", "add", name]);
    const ns = new Netns(name);
    await ns.run(["ip", "link", "set", "lo", "up"]);
    return ns;
  }

  /** An Exec whose commands run inside this namespace. */
  get exec(): Exec {
    const name = this.name;
    return {
      run: (argv, options) => bunExec.run(["ip", "netns", "exec", name, ...argv], options),
    };
  }

  /** Runs a command in the namespace and throws unless it exits 0. */
  async run(argv: readonly string[], options?: ExecOptions): Promise<string> {
    return (await runChecked(this.exec, argv, options)).stdout;
  }

  /** Starts a long-running process in the namespace. */
  spawn(
    argv: readonly string[],
    options: { env?: Record<string, string>; stdout?: "pipe" | "inherit" | "ignore"; stderr?: "pipe" | "inherit" | "ignore" } = {},
  ) {
    return Bun.spawn(["ip", "netns", "exec", this.name, ...argv], {
      stdout: options.stdout ?? "pipe",
      stderr: options.stderr ?? "pipe",
      env: { ...process.env, ...options.env },
    });
  }

  async delete(): Promise<void> {
    await bunExec.run(["ip", "netns", "del", this.name]);
  }
}
