/**
 * kproxy's TCP relay as its own process, so the benchmark can read its CPU and resident memory apart
 * from the load generators. Arguments: `name=ip:port` per service. Prints `{"ports":{name:port}}`.
 */
import { LoadBalancer, startTcpRelay } from "../../src/backends/userspace/index.ts";
import type { TcpRelay } from "../../src/backends/userspace/index.ts";

const balancer = new LoadBalancer();
const ports: Record<string, number> = {};
const relays: TcpRelay[] = [];
for (const arg of process.argv.slice(2)) {
  const eq = arg.indexOf("=");
  if (eq <= 0) throw new Error(`expected name=ip:port, got ${arg}`);
  const name = arg.slice(0, eq);
  balancer.update(name, [arg.slice(eq + 1)]);
  const relay = startTcpRelay({ serviceKey: name, host: "127.0.0.1", port: 0, chooser: balancer });
  relays.push(relay);
  ports[name] = relay.port;
}
process.stdout.write(JSON.stringify({ ports }) + "\n");
process.on("SIGTERM", async () => {
  for (const r of relays) await r.close({ closeActive: true });
  process.exit(0);
});
