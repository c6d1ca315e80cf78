/**
 * The ipvs backend's sync against bare `ipvsadm -R` + `ipset restore` of the same batches, and its
 * memory with a large cluster loaded, measured inside the IPVS guest (this machine's kernel has no
 * IPVS; see test/e2e/vm/README.md). The guest side is bench/ipvs/guest.ts; this prints its table.
 *
 *   bun bench/ipvs-sync.ts [services] [rounds] [all|full|partial]
 */
import { join } from "node:path";
import { guestAvailable, runInGuest } from "../test/e2e/vm/run.ts";

const services = process.argv[2] ?? "10000";
const rounds = process.argv[3] ?? "3";
/** `partial` skips the full-sync comparison. */
const mode = process.argv[4] ?? "all";
const guest = await guestAvailable();
if (!guest.ok) {
  console.error(`bench/ipvs-sync: ${guest.reason}`);
  process.exit(1);
}
const run = await runInGuest({
  command: [process.execPath, "bench/ipvs/guest.ts", services, rounds, mode],
  cwd: join(import.meta.dir, ".."),
  timeoutMs: 1_800_000,
  memoryMb: 2048,
  image: guest.image,
});
if (run.code !== 0) {
  console.error(`guest bench failed (${run.code}):\n${run.stderr}\n${run.stdout}`);
  process.exit(1);
}
const r = JSON.parse(run.stdout.trim().split("\n").at(-1) ?? "{}");
const row = (name: string, ours: number, ref: number, ratio: number) => `${name.padEnd(34)} ${`${ours} ms`.padStart(10)} ${`${ref} ms`.padStart(10)} ${`${ratio}x`.padStart(7)}`;
console.log(`ipvs sync, ${r.services} services (${r.servicePorts} service ports${r.virtualServers ? `, ${r.virtualServers} virtual servers` : ""}), guest under software emulation`);
console.log(`${"".padEnd(34)} ${"kproxy".padStart(10)} ${"bare".padStart(10)} ${"ratio".padStart(7)}`);
if (r.full.samples.ours.length > 0) {
  console.log(row(`full sync (${r.batchLines.ipvs} ipvsadm + ${r.batchLines.ipset} ipset lines)`, r.full.oursMs, r.full.referenceMs, r.full.ratio));
  console.log(row("  vs both tools run concurrently", r.full.oursMs, r.full.concurrentReferenceMs, r.full.concurrentRatio));
  console.log(`median of per-round full-sync ratios: ${r.full.pairRatio}x`);
}
if (r.oneEndpoint) {
  console.log(row("one endpoint changed (partial)", r.oneEndpoint.oursMs, r.oneEndpoint.referenceMs, r.oneEndpoint.ratio));
  console.log(`median of per-round one-endpoint ratios: ${r.oneEndpoint.pairRatio}x; kproxy's own time in a one-endpoint sync (besides the commands it runs): ${r.oneEndpoint.ownMs} ms`);
  if (r.steadyFullSyncMs !== null) console.log(`periodic full sync, nothing to change: ${r.steadyFullSyncMs} ms`);
  console.log(`resident memory with the cluster loaded: ${r.rssMiB} MiB (heap ${r.heapUsedMiB} MiB)`);
  console.log(`one-endpoint batches: ${JSON.stringify(r.oneEndpoint.batches)}`);
}
console.log(`samples: ${JSON.stringify({ full: r.full.samples, oneEndpoint: r.oneEndpoint?.samples })}`);
console.log(`guest boot ${run.bootMs} ms, whole run ${Math.round(run.durationMs / 1000)} s`);
