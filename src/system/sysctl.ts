import { readFile, writeFile } from "node:fs/promises";

/** Kernel parameters under /proc/sys, by their dotted names (`net.ipv4.ip_forward`). */
export interface Sysctl {
  get(name: string): Promise<string | undefined>;
  set(name: string, value: string | number): Promise<void>;
}

export function sysctlPath(name: string, root = "/proc/sys"): string {
  return `${root}/${name.replaceAll(".", "/")}`;
}

export function procSysctl(root = "/proc/sys"): Sysctl {
  return {
    async get(name) {
      try {
        return (await readFile(sysctlPath(name, root), "utf8")).trim();
      } catch {
        return undefined;
      }
    },
    async set(name, value) {
      await writeFile(sysctlPath(name, root), `${value}\n`);
    },
  };
}

/** Sets a value only when it differs, so read-only /proc/sys (containers) is no error unless a change is needed. */
export async function ensureSysctl(sysctl: Sysctl, name: string, value: string | number): Promise<boolean> {
  if ((await sysctl.get(name)) === String(value)) return false;
  await sysctl.set(name, value);
  return true;
}
