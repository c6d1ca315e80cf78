/**
 * kproxy's TCP relay as its own process, so the benchmark can read its resident memory apart from the
 * load generators. Arguments: `name=ip:port` per service, and `--threads=N` to relay on N worker
 * threads sharing each port (0, the default, relays on the main thread with Bun's sockets), and
 * `--engine=bun` to have those threads use Bun's sockets instead of the epoll relay, `--accept=reuseport`
 * for a listening socket per thread instead of one shared by all, `--no-rebalance` to keep every
 * connection on the thread that accepted it (no passing on, no hand-over). Prints
 * `{"ports":{name:port}}`.
 */
import { LoadBalancer, startTcpRelay, TcpRelayWorkers } from "../../src/backends/userspace/index.ts";
import type { AcceptMode, ProxySocket, RelayEngine } from "../../src/backends/userspace/index.ts";

let threads = 0;
let engine: RelayEngine = "epoll";
let accept: AcceptMode | undefined;
let rebalance = true;
const services: [string, string][] = [];
for (const arg of process.argv.slice(2)) {
  if (arg.startsWith("--engine=")) {
    engine = arg.slice("--engine=".length) === "bun" ? "bun" : "epoll";
    continue;
  }
  if (arg.startsWith("--accept=")) {
    accept = arg.slice("--accept=".length) === "reuseport" ? "reuseport" : "shared";
    continue;
  }
  if (arg === "--no-rebalance") {
    rebalance = false;
    continue;
  }
  if (arg.startsWith("--threads=")) {
    threads = Number(arg.slice("--threads=".length));
    continue;
  }
  const eq = arg.indexOf("=");
  if (eq <= 0) throw new Error(`expected name=ip:port, got ${arg}`);
  services.push([arg.slice(0, eq), arg.slice(eq + 1)]);
}

const ports: Record<string, number> = {};
const relays: ProxySocket[] = [];
const pool = threads > 0 ? TcpRelayWorkers.start({ threads, engine, rebalance, ...(accept ? { accept } : {}) }) : undefined;
const balancer = new LoadBalancer();
for (const [name, endpoint] of services) {
  let relay: ProxySocket;
  if (pool) {
    pool.update(name, [endpoint]);
    relay = await pool.listen({ serviceKey: name, host: "127.0.0.1", port: 0 });
  } else {
    balancer.update(name, [endpoint]);
    relay = startTcpRelay({ serviceKey: name, host: "127.0.0.1", port: 0, chooser: balancer });
  }
  relays.push(relay);
  ports[name] = relay.port;
}
process.stdout.write(JSON.stringify({ ports }) + "\n");
process.on("SIGTERM", async () => {
  for (const r of relays) await r.close({ closeActive: true });
  await pool?.close();
  process.exit(0);
});
