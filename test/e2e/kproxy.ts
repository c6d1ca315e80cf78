import { join } from "node:path";
import type { Netns } from "../helpers/netns.ts";
import { Child } from "../helpers/process.ts";

const ROOT = join(import.meta.dir, "../..");

/** kproxy from source inside a namespace, reading `config.yaml` and `services.yaml` from `dir`. */
export class KproxyInNamespace {
  readonly child: Child;

  constructor(node: Netns, dir: string) {
    this.child = new Child(
      ["ip", "netns", "exec", node.name, process.execPath, join(ROOT, "src/main.ts"), "--config", join(dir, "config.yaml"), "--services-file", join(dir, "services.yaml"), "--v=2"],
      { cwd: ROOT },
    );
  }

  /** `kproxy --cleanup` in the namespace. */
  static cleanup(node: Netns): Child {
    return new Child(["ip", "netns", "exec", node.name, process.execPath, join(ROOT, "src/main.ts"), "--cleanup"], { cwd: ROOT });
  }

  /** SIGTERM, as systemd or the kubelet stops kproxy; the rules stay in the kernel. */
  async stop(): Promise<void> {
    this.child.kill("SIGTERM");
    await this.child.exited(10_000);
  }
}
