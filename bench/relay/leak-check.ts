/**
 * Pushes many short connections through one TCP relay and reports whether anything stays behind: the
 * relay's active count, open file descriptors, and heap / resident memory after a full GC, sampled
 * along the way. The heap should level off after warm-up instead of growing with the count.
 *
 *   bun bench/relay/leak-check.ts [--connections 100000] [--concurrency 200] [--engine epoll|bun]
 *
 * `--engine epoll` checks the relay the relay threads run (here polling, as it shares the thread with
 * the clients); `bun`, the default, the main thread's relay on Bun's sockets.
 */
import { readdirSync } from "node:fs";
import { LoadBalancer, startEpollTcpRelay, startTcpRelay } from "../../src/backends/userspace/index.ts";

const argv = process.argv.slice(2);
const opt = (name: string, dflt: number) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? Number(argv[i + 1]) : dflt;
};
const total = opt("connections", 100_000);
const concurrency = opt("concurrency", 200);
const HOST = "127.0.0.1";

// The backend answers each connection with a few bytes and closes, like an HTTP/1.0 server.
const backend = Bun.listen({
  hostname: HOST,
  port: 0,
  socket: {
    data(s) {
      s.end("pong");
    },
  },
});
const balancer = new LoadBalancer();
balancer.update("svc", [`${HOST}:${backend.port}`]);
const engine = argv.includes("epoll") ? "epoll" : "bun";
const relayOptions = { serviceKey: "svc", host: HOST, port: 0, chooser: balancer };
const maybeRelay = engine === "epoll" ? startEpollTcpRelay({ ...relayOptions, blockMs: 0 }) : startTcpRelay(relayOptions);
if (!maybeRelay) throw new Error("the epoll relay cannot run here");
const relay = maybeRelay;
console.log(`engine: ${engine}`);

function sample(done: number): string {
  Bun.gc(true);
  const m = process.memoryUsage();
  const fds = readdirSync("/proc/self/fd").length;
  return `${String(done).padStart(7)} conns: heap ${(m.heapUsed / 2 ** 20).toFixed(1)} MiB, rss ${(m.rss / 2 ** 20).toFixed(1)} MiB, fds ${fds}, relay active ${relay.stats().active}`;
}

function oneConnection(): Promise<void> {
  return new Promise((resolve, reject) => {
    let got = "";
    Bun.connect({
      hostname: HOST,
      port: relay.port,
      socket: {
        open(s) {
          s.write("ping");
        },
        data(_s, d) {
          got += d.toString();
        },
        close() {
          if (got === "pong") resolve();
          else reject(new Error(`connection got ${JSON.stringify(got)}`));
        },
        connectError(_s, err) {
          reject(err);
        },
      },
    }).catch(reject);
  });
}

const started = performance.now();
console.log(sample(0));
let done = 0;
const every = Math.max(1, Math.floor(total / 10));
let nextReport = every;
async function lane(): Promise<void> {
  while (done < total) {
    done++;
    await oneConnection();
    if (done >= nextReport) {
      nextReport += every;
      console.log(sample(done));
    }
  }
}
await Promise.all(Array.from({ length: concurrency }, lane));
const deadline = Date.now() + 5000;
while (relay.stats().active > 0 && Date.now() < deadline) await Bun.sleep(10);
console.log(sample(done));
const st = relay.stats();
console.log(
  `${st.total} relayed in ${((performance.now() - started) / 1000).toFixed(1)} s; active ${st.active}, buffered ${st.bufferedBytes} B, dial failures ${st.dialFailures}`,
);
await relay.close({ closeActive: true });
backend.stop(true);
