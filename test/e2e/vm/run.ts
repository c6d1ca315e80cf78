/**
 * Runs one command in a qemu guest booted from the cached image (see image.ts), with the host root
 * mounted read-only under a tmpfs overlay. The command's stdout, stderr and exit code come back
 * through a writable 9p share that the guest mounts at the same path as on the host, so the
 * command can also leave files there.
 */
import { mkdtemp, mkdir, readFile, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { ensureImage, type GuestImage } from "./image.ts";

export interface GuestRun {
  /** argv run inside the guest, after `cd cwd`. */
  readonly command: readonly string[];
  readonly cwd?: string;
  readonly env?: Readonly<Record<string, string>>;
  /** qemu is killed after this long (default 120 s). */
  readonly timeoutMs?: number;
  /**
   * Writable host folder, mounted at the same path in the guest. Must not be under /tmp (the
   * guest sees the host's /tmp only through its overlay, whose writes stay in the guest). When omitted, a folder under /var/tmp is made and removed
   * after a successful run.
   */
  readonly shareDir?: string;
  readonly image?: GuestImage;
  readonly memoryMb?: number;
  readonly cpus?: number;
  /**
   * tcg by default: on these machines /dev/kvm exists but a kvm guest hangs after the BIOS.
   * KPROXY_VM_ACCEL=kvm switches the default where kvm works.
   */
  readonly accel?: "tcg" | "kvm";
}

export interface GuestResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
  readonly durationMs: number;
  /** Guest uptime in milliseconds when the command began (kernel start to command). */
  readonly bootMs: number | null;
  /** The guest's serial console; kept on the host only when the run fails or shareDir was given. */
  readonly consoleLog: string;
}

export class GuestError extends Error {
  constructor(
    message: string,
    readonly consoleLog: string,
    readonly consoleTail: string,
  ) {
    super(`${message} (console: ${consoleLog})\n${consoleTail}`);
    this.name = "GuestError";
  }
}

const STATE = ".kproxy-vm";
const DEFAULT_TIMEOUT_MS = 120_000;

/** POSIX shell single-quoting. */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

function jobScript(run: GuestRun): string {
  const lines = ["set -e"];
  for (const [name, value] of Object.entries(run.env ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Error(`bad environment variable name: ${name}`);
    lines.push(`export ${name}=${shellQuote(value)}`);
  }
  lines.push(`cd ${shellQuote(run.cwd ?? "/")}`);
  lines.push("set +e");
  lines.push(`exec ${run.command.map(shellQuote).join(" ")}`);
  return `${lines.join("\n")}\n`;
}

async function readOr(path: string, fallback: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch {
    return fallback;
  }
}

async function isUnderTmp(path: string): Promise<boolean> {
  return path === "/tmp" || path.startsWith("/tmp/");
}

export async function runInGuest(run: GuestRun): Promise<GuestResult> {
  if (run.command.length === 0) throw new Error("runInGuest: empty command");
  const image = run.image ?? (await ensureImage({ network: false }));
  if (!image) throw new Error("no guest image: run `bun test/e2e/vm/image.ts` first");

  const ownShare = run.shareDir === undefined;
  let shareDir: string;
  if (run.shareDir === undefined) {
    await mkdir("/var/tmp", { recursive: true });
    shareDir = await mkdtemp("/var/tmp/kproxy-vm-");
  } else {
    shareDir = run.shareDir;
    if (await isUnderTmp(shareDir)) throw new Error(`shareDir ${shareDir} is under /tmp, whose guest writes never reach the host`);
    // It travels on the kernel command line, which splits at whitespace.
    if (/\s/.test(shareDir)) throw new Error(`shareDir ${JSON.stringify(shareDir)} contains whitespace`);
    await mkdir(shareDir, { recursive: true });
  }
  const state = join(shareDir, STATE);
  await rm(state, { recursive: true, force: true });
  await mkdir(state, { recursive: true });
  await Bun.write(join(state, "job.sh"), jobScript(run));
  const consoleLog = join(shareDir, "console.log");
  await rm(consoleLog, { force: true });

  const accel = run.accel ?? (process.env["KPROXY_VM_ACCEL"] === "kvm" ? "kvm" : "tcg");
  const argv = [
    "qemu-system-x86_64",
    "-accel",
    accel,
    "-cpu",
    accel === "kvm" ? "host" : "max",
    "-m",
    String(run.memoryMb ?? 1024),
    "-smp",
    String(run.cpus ?? 2),
    "-nographic",
    "-no-reboot",
    "-nic",
    "none",
    "-kernel",
    image.kernel,
    "-initrd",
    image.initrd,
    "-append",
    `console=ttyS0 panic=-1 loglevel=4 kproxy.share=${shareDir}`,
    "-virtfs",
    "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    "-virtfs",
    // qemu's option syntax escapes a comma by doubling it
    `local,path=${shareDir.replaceAll(",", ",,")},mount_tag=results,security_model=none,multidevs=remap`,
  ];

  const started = performance.now();
  // setpriv ties qemu's life to this process: if the test runner dies, the guest goes with it.
  const qemu = Bun.spawn(["setpriv", "--pdeathsig", "KILL", "--", ...argv], {
    stdin: "ignore",
    stdout: Bun.file(consoleLog),
    stderr: "pipe",
  });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    qemu.kill("SIGKILL");
  }, run.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  let qemuStderr = "";
  try {
    qemuStderr = await new Response(qemu.stderr as ReadableStream).text();
    await qemu.exited;
  } finally {
    clearTimeout(timer);
    if (qemu.exitCode === null && qemu.signalCode === null) {
      qemu.kill("SIGKILL");
      await qemu.exited;
    }
  }
  const durationMs = performance.now() - started;

  const consoleText = await readOr(consoleLog, "");
  const tail = [...consoleText.split("\n").slice(-40), qemuStderr.trim()].filter(Boolean).join("\n");
  if (timedOut) throw new GuestError(`guest timed out after ${run.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms`, consoleLog, tail);
  const codeText = await readOr(join(state, "code"), "");
  if (codeText.trim() === "") throw new GuestError(`guest ended without running the command (qemu exit ${qemu.exitCode})`, consoleLog, tail);

  const result: GuestResult = {
    code: Number(codeText.trim()),
    stdout: await readOr(join(state, "stdout"), ""),
    stderr: await readOr(join(state, "stderr"), ""),
    durationMs,
    bootMs: await bootTime(state),
    consoleLog,
  };
  if (ownShare) await rm(shareDir, { recursive: true, force: true });
  else await rm(state, { recursive: true, force: true });
  return result;
}

/** Guest uptime when the command started, as the init recorded it. */
async function bootTime(state: string): Promise<number | null> {
  const seconds = Number((await readOr(join(state, "boot-seconds"), "")).trim());
  return Number.isFinite(seconds) && seconds > 0 ? Math.round(seconds * 1000) : null;
}

/** Whether this machine can boot a guest at all: qemu installed and an image cached. */
export async function guestAvailable(): Promise<{ ok: true; image: GuestImage } | { ok: false; reason: string }> {
  if (Bun.which("qemu-system-x86_64") === null) return { ok: false, reason: "needs qemu-system-x86_64 (Debian package qemu-system-x86)" };
  if (Bun.which("setpriv") === null) return { ok: false, reason: "needs setpriv (util-linux)" };
  try {
    await stat("/bin/busybox");
  } catch {
    return { ok: false, reason: "needs busybox-static" };
  }
  const image = await ensureImage({ network: false, log: () => {} }).catch(() => null);
  if (!image) return { ok: false, reason: "needs the guest image: run .ci/guest-image.sh (or bun test/e2e/vm/image.ts)" };
  return { ok: true, image };
}
