import { afterAll, beforeAll, describe, expect } from "bun:test";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Child } from "./helpers/process.ts";
import { hasTool, needs } from "./helpers/require.ts";

const ROOT = join(import.meta.dir, "..");
const pkg = (await Bun.file(join(ROOT, "package.json")).json()) as { version: string };
const outdir = mkdtempSync(join(tmpdir(), "kproxy-build-"));
const ARM64_LIBS = "/usr/aarch64-linux-gnu";

const buildTest = needs(hasTool("npm") && hasTool("tar"), "needs npm and tar to fetch the arm64 runtime");
const arm64Test = needs(
  hasTool("qemu-aarch64-static") && statSync(join(ARM64_LIBS, "lib", "ld-linux-aarch64.so.1"), { throwIfNoEntry: false }) !== undefined,
  "needs qemu-user-static and libc6-arm64-cross to run the arm64 binary",
);
const unitTest = needs(hasTool("systemd-analyze"), "needs systemd-analyze to verify the unit file");

let built = false;
beforeAll(async () => {
  const child = new Child([process.execPath, join(ROOT, "build.ts"), "--outdir", outdir], { cwd: ROOT });
  built = (await child.exited(180_000)) === 0;
  if (!built) console.error(child.stderr);
}, 200_000);
afterAll(() => rmSync(outdir, { recursive: true, force: true }));

describe("build.ts", () => {
  buildTest("builds a linux x64 binary that reports its version, Bun version and target", async () => {
    expect(built).toBe(true);
    const child = new Child([join(outdir, "kproxy"), "--version"]);
    expect(await child.exited()).toBe(0);
    expect(child.stdout).toBe(`kproxy ${pkg.version} (bun ${Bun.version}, bun-linux-x64)\n`);
  });

  buildTest("the binary ignores a bunfig.toml and .env in the directory it starts in", async () => {
    expect(built).toBe(true);
    const cwd = mkdtempSync(join(tmpdir(), "kproxy-cwd-"));
    try {
      // A preload that would print if it were honoured.
      writeFileSync(join(cwd, "evil.ts"), 'console.log("PRELOADED");');
      writeFileSync(join(cwd, "bunfig.toml"), 'preload = ["./evil.ts"]\n');
      writeFileSync(join(cwd, ".env"), "KPROXY_SHOULD_NOT_LOAD=1\n");
      const child = new Child([join(outdir, "kproxy"), "--version"], { cwd });
      expect(await child.exited()).toBe(0);
      expect(child.stdout).not.toContain("PRELOADED");
    } finally {
      rmSync(cwd, { recursive: true, force: true });
    }
  });

  buildTest("the x64 binary runs kproxy's main job: the demo serves /healthz", async () => {
    expect(built).toBe(true);
    const child = new Child([join(outdir, "kproxy"), "--demo", "--healthz-bind-address", "127.0.0.1:0", "--metrics-bind-address", "127.0.0.1:0"]);
    try {
      const m = await child.waitFor(/"Serving" server="healthz" address="127\.0\.0\.1:0" port=(\d+)/);
      await child.waitFor(/answers: backend-\w \d+, backend-\w \d+/);
      expect((await fetch(`http://127.0.0.1:${m[1]}/healthz`)).status).toBe(200);
      child.kill("SIGTERM");
      expect(await child.exited()).toBe(0);
    } finally {
      child.kill("SIGKILL");
    }
  });

  arm64Test("builds a linux arm64 binary that runs (under qemu-user) and reports its target", async () => {
    expect(built).toBe(true);
    const child = new Child(["qemu-aarch64-static", "-L", ARM64_LIBS, join(outdir, "kproxy-linux-arm64"), "--version"]);
    expect(await child.exited(60_000)).toBe(0);
    expect(child.stdout).toBe(`kproxy ${pkg.version} (bun ${Bun.version}, bun-linux-arm64)\n`);
  });
});

unitTest("deploy/kproxy.service passes systemd-analyze verify", async () => {
  expect(built).toBe(true);
  const dir = mkdtempSync(join(tmpdir(), "kproxy-unit-"));
  try {
    const unit = (await Bun.file(join(ROOT, "deploy", "kproxy.service")).text()).replaceAll("/usr/local/bin/kproxy", join(outdir, "kproxy"));
    writeFileSync(join(dir, "kproxy.service"), unit);
    const child = new Child(["systemd-analyze", "verify", join(dir, "kproxy.service")]);
    const code = await child.exited(30_000);
    expect(child.stderr.split("\n").filter((l) => l.includes("kproxy.service"))).toEqual([]);
    expect(code).toBe(0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
