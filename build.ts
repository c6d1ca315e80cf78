/**
 * Builds kproxy as standalone executables: dist/kproxy (linux x64) and dist/kproxy-linux-arm64.
 *
 * The arm64 executable embeds Bun's own aarch64 runtime. Bun would download it from its release
 * host; we take it from the npm registry instead (`@oven/bun-linux-aarch64`, the same version as the
 * pinned `bun` devDependency) so builds work where only the npm registry is reachable.
 *
 * Usage: bun build.ts [--target x64|arm64|all] [--outdir DIR]
 */
import { existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

const root = import.meta.dir;
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string };
const cacheDir = join(root, ".cache");
const distDir = (() => {
  const i = process.argv.indexOf("--outdir");
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : join(root, "dist");
})();

interface Target {
  readonly name: "x64" | "arm64";
  readonly bunTarget: "bun-linux-x64" | "bun-linux-arm64";
  readonly outfile: string;
  /** npm package holding Bun's runtime for this target; used when the target is not this machine's. */
  readonly runtimePackage: string;
}

const targets: readonly Target[] = [
  {
    name: "x64",
    bunTarget: "bun-linux-x64",
    outfile: join(distDir, "kproxy"),
    runtimePackage: "@oven/bun-linux-x64",
  },
  {
    name: "arm64",
    bunTarget: "bun-linux-arm64",
    outfile: join(distDir, "kproxy-linux-arm64"),
    runtimePackage: "@oven/bun-linux-aarch64",
  },
];

async function run(argv: string[], cwd: string): Promise<void> {
  const child = Bun.spawn(argv, { cwd, stdout: "ignore", stderr: "inherit" });
  const code = await child.exited;
  if (code !== 0) throw new Error(`${argv.join(" ")} exited ${code}`);
}

/** The runtime binary for a foreign target, fetched once from the npm registry into .cache/. */
async function runtimeFor(target: Target): Promise<string | undefined> {
  if (target.name === process.arch) return undefined;
  const dir = join(cacheDir, `${target.runtimePackage.replace("/", "__")}-${Bun.version}`);
  const binary = join(dir, "package", "bin", "bun");
  if (existsSync(binary)) return binary;
  mkdirSync(dir, { recursive: true });
  await run(["npm", "pack", "--silent", "--pack-destination", dir, `${target.runtimePackage}@${Bun.version}`], dir);
  const tarball = `${target.runtimePackage.replace("@", "").replace("/", "-")}-${Bun.version}.tgz`;
  await run(["tar", "xzf", tarball, "package/bin/bun"], dir);
  return binary;
}

async function build(target: Target): Promise<void> {
  const executablePath = await runtimeFor(target);
  const result = await Bun.build({
    // Worker threads are separate entry points; the binary embeds them beside main.
    entrypoints: [join(root, "src", "main.ts"), join(root, "src", "backends", "userspace", "relay-worker.ts")],
    minify: true,
    sourcemap: "none",
    define: {
      KPROXY_VERSION: JSON.stringify(pkg.version),
      KPROXY_TARGET: JSON.stringify(target.bunTarget),
    },
    compile: {
      target: target.bunTarget,
      outfile: target.outfile,
      ...(executablePath ? { executablePath } : {}),
      // A bunfig.toml or .env in the directory kproxy is started from must not change its behaviour.
      autoloadBunfig: false,
      autoloadDotenv: false,
      autoloadTsconfig: false,
      autoloadPackageJson: false,
    },
  });
  if (!result.success) {
    for (const log of result.logs) console.error(log);
    throw new Error(`build for ${target.name} failed`);
  }
  const mib = (statSync(target.outfile).size / 1024 / 1024).toFixed(1);
  console.log(`${target.outfile}  ${mib} MiB  (${target.bunTarget}, kproxy ${pkg.version}, bun ${Bun.version})`);
}

const wanted = (() => {
  const i = process.argv.indexOf("--target");
  return i >= 0 ? process.argv[i + 1] : "all";
})();
mkdirSync(distDir, { recursive: true });
for (const target of targets) {
  if (wanted === "all" || wanted === target.name) await build(target);
}
