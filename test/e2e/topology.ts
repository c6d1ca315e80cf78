import type { Subprocess } from "bun";
import { Netns } from "../helpers/netns.ts";

/**
 * The end-to-end topology: a node namespace (where kproxy runs), a bridge in it joining pod
 * namespaces that serve HTTP and UDP, and a client namespace that reaches the node over a veth.
 * The addresses exist only inside these namespaces.
 *
 *   client 172.30.0.2 ──veth── 172.30.0.1 node ── kbr0 10.244.1.1 ──┬── pod0 10.244.1.10
 *                                                                    └── pod1 10.244.1.11 …
 */
export const NODE_IP = "172.30.0.1";
export const CLIENT_IP = "172.30.0.2";
export const NODE_IP6 = "fd00:30::1";
export const CLIENT_IP6 = "fd00:30::2";
export const POD_CIDR = "10.244.1.0/24";
export const CLUSTER_CIDR = "10.244.0.0/16";
export const HTTP_PORT = 8080;
export const UDP_PORT = 5353;

export interface Pod {
  readonly name: string;
  readonly ns: Netns;
  readonly ip: string;
  readonly ip6: string;
  server: Subprocess | undefined;
}

export interface Topology {
  readonly node: Netns;
  readonly client: Netns;
  readonly pods: Pod[];
  /** Stops a pod's servers (the pod stays, its address answers nothing). */
  stopPod(pod: Pod): Promise<void>;
  startPod(pod: Pod): Promise<void>;
  destroy(): Promise<void>;
}

async function waitForLine(proc: Subprocess, text: string, timeoutMs: number): Promise<void> {
  const stdout = proc.stdout as ReadableStream<Uint8Array>;
  const reader = stdout.getReader();
  const decoder = new TextDecoder();
  let seen = "";
  const deadline = Date.now() + timeoutMs;
  try {
    while (!seen.includes(text)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for "${text}"`);
      const chunk = await Promise.race([
        reader.read(),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`timed out waiting for "${text}"`)), left)),
      ]);
      if (chunk.done) throw new Error(`process ended before printing "${text}"`);
      seen += decoder.decode(chunk.value);
    }
  } finally {
    reader.releaseLock();
  }
}

export async function createTopology(podCount: number): Promise<Topology> {
  const created: Netns[] = [];
  const pods: Pod[] = [];
  const destroy = async () => {
    for (const pod of pods) if (pod.server) pod.server.kill("SIGKILL");
    await Promise.all(pods.map((p) => p.server?.exited));
    for (const ns of created.reverse()) await ns.delete();
  };
  try {
    const node = await Netns.create("node");
    created.push(node);
    const client = await Netns.create("client");
    created.push(client);

    await node.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", client.name]);
    await node.run(["ip", "addr", "add", `${NODE_IP}/24`, "dev", "eth0"]);
    await node.run(["ip", "-6", "addr", "add", `${NODE_IP6}/64`, "dev", "eth0", "nodad"]);
    await node.run(["ip", "link", "set", "eth0", "up"]);
    await client.run(["ip", "addr", "add", `${CLIENT_IP}/24`, "dev", "eth0"]);
    await client.run(["ip", "-6", "addr", "add", `${CLIENT_IP6}/64`, "dev", "eth0", "nodad"]);
    await client.run(["ip", "link", "set", "eth0", "up"]);
    await client.run(["ip", "route", "add", "default", "via", NODE_IP]);
    await client.run(["ip", "-6", "route", "add", "default", "via", NODE_IP6]);
    // Packets the node itself sends to a ClusterIP are routed before nat OUTPUT sees them: without a
    // route they never reach NAT.
    await node.run(["ip", "route", "add", "default", "via", CLIENT_IP]);
    await node.run(["ip", "-6", "route", "add", "default", "via", CLIENT_IP6]);

    await node.run(["ip", "link", "add", "kbr0", "type", "bridge"]);
    await node.run(["ip", "addr", "add", "10.244.1.1/24", "dev", "kbr0"]);
    await node.run(["ip", "-6", "addr", "add", "fd00:244:1::1/64", "dev", "kbr0", "nodad"]);
    await node.run(["ip", "link", "set", "kbr0", "up"]);
    await node.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
    // Pod-to-pod replies are bridged; br_netfilter lets them meet conntrack so DNAT is undone.
    await node.exec.run(["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1"]);

    for (let i = 0; i < podCount; i++) {
      const ns = await Netns.create(`pod${i}`);
      created.push(ns);
      const port = `vpod${i}`;
      const pod: Pod = { name: `pod${i}`, ns, ip: `10.244.1.${10 + i}`, ip6: `fd00:244:1::${(10 + i).toString(16)}`, server: undefined };
      await node.run(["ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.name]);
      await node.run(["ip", "link", "set", port, "master", "kbr0", "up"]);
      // kubelet turns hairpin on for pod ports, so a pod reaching itself through a service works.
      await node.run(["ip", "link", "set", port, "type", "bridge_slave", "hairpin", "on"]);
      await ns.run(["ip", "addr", "add", `${pod.ip}/24`, "dev", "eth0"]);
      await ns.run(["ip", "-6", "addr", "add", `${pod.ip6}/64`, "dev", "eth0", "nodad"]);
      await ns.run(["ip", "link", "set", "eth0", "up"]);
      await ns.run(["ip", "route", "add", "default", "via", "10.244.1.1"]);
      await ns.run(["ip", "-6", "route", "add", "default", "via", "fd00:244:1::1"]);
      pods.push(pod);
    }

    const startPod = async (pod: Pod) => {
      // stderr goes to the test's own: nobody reads a pipe once the server is up, and a full one
      // would stall the server (a pod that stops answering), or hide why it died.
      const server = pod.ns.spawn([process.execPath, `${import.meta.dir}/pod-server.ts`, "--name", pod.name, "--http", String(HTTP_PORT), "--udp", String(UDP_PORT)], {
        stderr: "inherit",
      });
      pod.server = server;
      await waitForLine(server, "ready", 10_000);
    };
    const stopPod = async (pod: Pod) => {
      pod.server?.kill("SIGKILL");
      await pod.server?.exited;
      pod.server = undefined;
    };
    await Promise.all(pods.map(startPod));
    return { node, client, pods, startPod, stopPod, destroy };
  } catch (err) {
    await destroy();
    throw err;
  }
}
