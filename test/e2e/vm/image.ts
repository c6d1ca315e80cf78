/**
 * Builds the guest image for the IPVS suites: Debian's stock kernel (the one `linux-image-amd64`
 * points to) and an initramfs holding busybox-static, the modules of GUEST_MODULES with their
 * dependencies, and GUEST_INIT. Everything lives in a cache folder outside /tmp and outside the
 * repository, keyed by kernel package version and a hash of the init and module list, so a current
 * image costs one apt-cache lookup.
 *
 *   bun test/e2e/vm/image.ts            build if needed, print the image paths
 *   KPROXY_VM_CACHE=/path               use another cache folder
 */
import { createHash } from "node:crypto";
import { chmod, copyFile, mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { bunExec, type Exec, runChecked } from "../../../src/system/exec.ts";
import { GUEST_INIT, GUEST_MODULES } from "./init.ts";

export const DEFAULT_CACHE_DIR = process.env["KPROXY_VM_CACHE"] ?? "/var/cache/kproxy-vm";
const META_PACKAGE = "linux-image-amd64";
const BUSYBOX = "/bin/busybox";
/** This file's own text is part of the cache key: a change in how the image is assembled rebuilds it. */
const BUILDER_SOURCE = await readFile(import.meta.path, "utf8");

export interface GuestImage {
  readonly key: string;
  readonly kernelPackage: string;
  readonly kernelVersion: string;
  /** `uname -r` inside the guest. */
  readonly kernelRelease: string;
  readonly kernel: string;
  readonly initrd: string;
}

export interface BuildOptions {
  readonly cacheDir?: string;
  /** When false, never touch apt's network side: build from a kernel package already in the cache. */
  readonly network?: boolean;
  readonly exec?: Exec;
  readonly log?: (message: string) => void;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** The module name as the kernel spells it: file name without `.ko`, dashes as underscores. */
export function moduleName(path: string): string {
  const base = path.slice(path.lastIndexOf("/") + 1).replace(/\.ko(\.xz|\.zst|\.gz)?$/, "");
  return base.replaceAll("-", "_");
}

/**
 * Orders the wanted modules and their dependencies so each is loaded after everything it needs.
 * `depText` is modules.dep, `builtinText` modules.builtin: a wanted module built into the kernel
 * needs no file. `softdepText` (modules.softdep) adds the "pre:" modules a module asks for at
 * runtime (libcrc32c needs a crc32c provider), found through `aliasText` (modules.alias) when
 * they are aliases. Returns paths relative to the modules folder; throws naming what is missing.
 */
export function resolveModules(depText: string, builtinText: string, wanted: readonly string[], softdepText = "", aliasText = ""): string[] {
  const entries = new Map<string, { path: string; deps: string[] }>();
  for (const line of depText.split("\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const path = line.slice(0, colon).trim();
    const deps = line.slice(colon + 1).trim().split(/\s+/).filter(Boolean);
    entries.set(moduleName(path), { path, deps });
  }
  const builtin = new Set(builtinText.split("\n").filter(Boolean).map(moduleName));
  const aliases = new Map<string, string[]>();
  for (const line of aliasText.split("\n")) {
    const [word, alias, target] = line.trim().split(/\s+/);
    if (word !== "alias" || !alias || !target) continue;
    aliases.set(alias, [...(aliases.get(alias) ?? []), moduleName(target)]);
  }
  const resolveName = (name: string): string => {
    if (entries.has(name) || builtin.has(name)) return name;
    const targets = aliases.get(name) ?? [];
    return targets.find((t) => t.endsWith("_generic")) ?? targets[0] ?? name;
  };
  const softPre = new Map<string, string[]>();
  for (const line of softdepText.split("\n")) {
    const words = line.trim().split(/\s+/);
    if (words[0] !== "softdep" || !words[1]) continue;
    const pre: string[] = [];
    let inPre = false;
    for (const word of words.slice(2)) {
      if (word === "pre:") inPre = true;
      else if (word === "post:") inPre = false;
      else if (inPre) pre.push(resolveName(moduleName(word)));
    }
    softPre.set(moduleName(words[1]), pre);
  }
  const order: string[] = [];
  const placed = new Set<string>();
  const missing: string[] = [];
  const visit = (name: string, trail: readonly string[]): void => {
    if (placed.has(name)) return;
    const entry = entries.get(name);
    if (!entry) {
      if (!builtin.has(name)) missing.push(name);
      return;
    }
    if (trail.includes(name)) throw new Error(`module dependency cycle: ${[...trail, name].join(" → ")}`);
    for (const dep of softPre.get(name) ?? []) visit(dep, [...trail, name]);
    for (const dep of entry.deps) visit(moduleName(dep), [...trail, name]);
    placed.add(name);
    order.push(entry.path);
  };
  for (const name of wanted) visit(name.replaceAll("-", "_"), []);
  if (missing.length > 0) throw new Error(`kernel modules not found: ${missing.join(", ")}`);
  return order;
}

function imageKey(kernelPackage: string, kernelVersion: string): string {
  const hash = createHash("sha256");
  for (const part of [BUILDER_SOURCE, kernelPackage, kernelVersion, GUEST_INIT, ...GUEST_MODULES]) hash.update(`${part}\0`);
  return hash.digest("hex").slice(0, 16);
}

interface KernelPackage {
  readonly name: string;
  readonly version: string;
}

/** The versioned kernel package the meta package depends on, and its candidate version. */
async function resolveKernelPackage(exec: Exec, network: boolean, log: (m: string) => void): Promise<KernelPackage | null> {
  // The meta package pins the exact version: "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)".
  // One apt-cache call (each costs about half a second) keeps the cached path fast.
  const lookup = async (): Promise<KernelPackage | null> => {
    const show = await exec.run(["apt-cache", "show", "--no-all-versions", META_PACKAGE]);
    const match = /^Depends:.*?\b(linux-image-\d\S*-amd64)\s*\(=\s*([^)\s]+)\)/m.exec(show.stdout);
    if (match) return { name: match[1] as string, version: match[2] as string };
    const depends = await exec.run(["apt-cache", "depends", META_PACKAGE]);
    const name = /Depends:\s*(linux-image-\d\S*-amd64)\b/.exec(depends.stdout)?.[1];
    if (!name) return null;
    const version = /^Version:\s*(\S+)/m.exec((await exec.run(["apt-cache", "show", "--no-all-versions", name])).stdout)?.[1];
    return version ? { name, version } : null;
  };
  const found = await lookup();
  if (found || !network) return found;
  log("apt-cache knows no kernel package; running apt-get update");
  await runChecked(exec, ["apt-get", "update", "-qq"], { timeoutMs: 300_000 });
  return lookup();
}

/** The newest kernel .deb already downloaded into the cache, for builds without network. */
async function cachedKernelPackage(cacheDir: string): Promise<KernelPackage | null> {
  const names = await readdir(join(cacheDir, "debs")).catch(() => [] as string[]);
  const debs = names.filter((n) => /^linux-image-\d\S*-amd64_.+_amd64\.deb$/.test(n)).sort();
  const last = debs.at(-1);
  if (!last) return null;
  const [name, version] = last.split("_") as [string, string];
  return { name, version: decodeURIComponent(version) };
}

function debFileName(pkg: KernelPackage): string {
  return `${pkg.name}_${pkg.version.replaceAll(":", "%3a")}_amd64.deb`;
}

async function ensureKernelTree(cacheDir: string, pkg: KernelPackage, exec: Exec, network: boolean, log: (m: string) => void): Promise<string> {
  const tree = join(cacheDir, "kernels", `${pkg.name}_${pkg.version}`);
  if (await exists(join(tree, ".complete"))) return tree;
  const debs = join(cacheDir, "debs");
  await mkdir(debs, { recursive: true });
  const deb = join(debs, debFileName(pkg));
  if (!(await exists(deb))) {
    if (!network) throw new Error(`${deb} is not cached and network use is off`);
    log(`downloading ${pkg.name} ${pkg.version}`);
    // Exec has no working directory, and apt-get download writes into the current one.
    await runChecked(exec, ["sh", "-c", 'cd "$1" && apt-get download -qq "$2"', "sh", debs, `${pkg.name}=${pkg.version}`], {
      timeoutMs: 600_000,
    });
    if (!(await exists(deb))) throw new Error(`apt-get download did not leave ${deb}`);
  }
  log(`extracting ${deb}`);
  await rm(tree, { recursive: true, force: true });
  await mkdir(tree, { recursive: true });
  await runChecked(exec, ["dpkg-deb", "-x", deb, tree], { timeoutMs: 300_000 });
  const release = await kernelRelease(tree);
  await runChecked(exec, ["depmod", "-b", tree, release], { timeoutMs: 120_000 });
  await writeFile(join(tree, ".complete"), `${pkg.name} ${pkg.version}\n`);
  return tree;
}

async function kernelRelease(tree: string): Promise<string> {
  const releases = (await readdir(join(tree, "lib", "modules"))).filter((n) => !n.startsWith("."));
  if (releases.length !== 1) throw new Error(`expected one kernel release in ${tree}, found ${releases.join(", ") || "none"}`);
  return releases[0] as string;
}

async function assertStaticBusybox(): Promise<void> {
  if (!(await exists(BUSYBOX))) throw new Error(`${BUSYBOX} is missing: install busybox-static`);
  const head = new Uint8Array(await Bun.file(BUSYBOX).slice(0, 8192).arrayBuffer());
  if (new TextDecoder("latin1").decode(head).includes("ld-linux")) {
    throw new Error(`${BUSYBOX} is dynamically linked: install busybox-static`);
  }
}

async function buildInitrd(tree: string, release: string, out: string, exec: Exec): Promise<void> {
  await assertStaticBusybox();
  const modulesDir = join(tree, "lib", "modules", release);
  const order = resolveModules(
    await readFile(join(modulesDir, "modules.dep"), "utf8"),
    await readFile(join(modulesDir, "modules.builtin"), "utf8").catch(() => ""),
    GUEST_MODULES,
    await readFile(join(modulesDir, "modules.softdep"), "utf8").catch(() => ""),
    await readFile(join(modulesDir, "modules.alias"), "utf8").catch(() => ""),
  );
  const stage = `${out}.stage-${process.pid}`;
  await rm(stage, { recursive: true, force: true });
  await mkdir(join(stage, "bin"), { recursive: true });
  await copyFile(BUSYBOX, join(stage, "bin", "busybox"));
  await chmod(join(stage, "bin", "busybox"), 0o755);
  await writeFile(join(stage, "init"), GUEST_INIT, { mode: 0o755 });
  for (const rel of order) {
    const target = join(stage, "lib", "modules", rel);
    await mkdir(dirname(target), { recursive: true });
    await copyFile(join(modulesDir, rel), target);
  }
  await writeFile(join(stage, "modules.order"), `${order.join("\n")}\n`);
  await runChecked(exec, ["sh", "-c", 'cd "$1" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > "$2"', "sh", stage, `${out}.tmp-${process.pid}`], {
    timeoutMs: 120_000,
  });
  await rename(`${out}.tmp-${process.pid}`, out);
  await rm(stage, { recursive: true, force: true });
}

const CURRENT = "current.json";

/**
 * Returns the cached image when it matches the current init and module list, building what is
 * missing. With `network: false` it only builds from a kernel package already cached, and returns
 * null when there is none.
 */
export async function ensureImage(options: BuildOptions = {}): Promise<GuestImage | null> {
  const cacheDir = options.cacheDir ?? DEFAULT_CACHE_DIR;
  const exec = options.exec ?? bunExec;
  const network = options.network ?? true;
  const log = options.log ?? ((m: string) => console.error(`guest-image: ${m}`));

  const pkg = (await resolveKernelPackage(exec, network, log)) ?? (await cachedKernelPackage(cacheDir));
  if (!pkg) {
    if (network) throw new Error(`cannot find the kernel package ${META_PACKAGE} depends on`);
    return null;
  }
  const key = imageKey(pkg.name, pkg.version);
  const imageDir = join(cacheDir, "images", key);
  const manifest = join(imageDir, "image.json");
  if (await exists(manifest)) return JSON.parse(await readFile(manifest, "utf8")) as GuestImage;

  if (!network && !(await exists(join(cacheDir, "debs", debFileName(pkg)))) && !(await exists(join(cacheDir, "kernels", `${pkg.name}_${pkg.version}`, ".complete")))) {
    return null;
  }
  const tree = await ensureKernelTree(cacheDir, pkg, exec, network, log);
  const release = await kernelRelease(tree);
  log(`building initramfs ${key} for ${release}`);
  await mkdir(imageDir, { recursive: true });
  const kernel = join(imageDir, "vmlinuz");
  await copyFile(join(tree, "boot", `vmlinuz-${release}`), kernel);
  const initrd = join(imageDir, "initrd.gz");
  await buildInitrd(tree, release, initrd, exec);
  const image: GuestImage = { key, kernelPackage: pkg.name, kernelVersion: pkg.version, kernelRelease: release, kernel, initrd };
  await writeFile(`${manifest}.tmp-${process.pid}`, `${JSON.stringify(image, null, 2)}\n`);
  await rename(`${manifest}.tmp-${process.pid}`, manifest);
  await writeFile(join(cacheDir, CURRENT), `${JSON.stringify(image, null, 2)}\n`);
  await pruneImages(cacheDir, key, pkg);
  return image;
}

/** Drops images and kernel trees other than the current ones, so the cache does not grow. */
async function pruneImages(cacheDir: string, key: string, pkg: KernelPackage): Promise<void> {
  const kernelDir = `${pkg.name}_${pkg.version}`;
  for (const name of await readdir(join(cacheDir, "debs")).catch(() => [] as string[])) {
    if (name !== debFileName(pkg)) await rm(join(cacheDir, "debs", name), { force: true });
  }
  for (const name of await readdir(join(cacheDir, "images")).catch(() => [] as string[])) {
    if (name !== key) await rm(join(cacheDir, "images", name), { recursive: true, force: true });
  }
  for (const name of await readdir(join(cacheDir, "kernels")).catch(() => [] as string[])) {
    if (name !== kernelDir) await rm(join(cacheDir, "kernels", name), { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const started = performance.now();
  try {
    const image = await ensureImage();
    if (!image) throw new Error("no image");
    console.log(`${image.kernelRelease} ${image.kernel} ${image.initrd} (${Math.round(performance.now() - started)} ms)`);
  } catch (err) {
    console.error(`guest-image: ${(err as Error).message}`);
    process.exit(1);
  }
}
