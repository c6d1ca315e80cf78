/**
 * The API server side of bench/watch.ts, in its own process so kproxy's memory is measured alone.
 * Prints one JSON line {url, caPem, token} when the cluster is loaded, then reads commands from
 * stdin: "update <j> <revision>" rewrites slice j; "quit" stops.
 */
import { FakeApiServer } from "../../test/fixtures/apiserver.ts";
import { type ClusterSpec, services, sliceObject, slices } from "../fixtures/cluster.ts";

const SENT_AT = "bench.kproxy/sent-at";
const spec: ClusterSpec = JSON.parse(process.argv[2] ?? "{}") as ClusterSpec;
const server = await FakeApiServer.start({ splitChunks: false });
for (const svc of services(spec)) server.create("services", svc);
for (const slice of slices(spec)) server.create("endpointslices", slice);
// Serve every page once before the benchmark starts: the fake server's own warm-up is not kproxy's cost.
for (const path of ["/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices"]) {
  let cont = "";
  do {
    const q = new URLSearchParams({ limit: "500", ...(cont ? { continue: cont } : {}) });
    const res = await fetch(`${server.url}${path}?${q}`, { headers: { Authorization: `Bearer ${server.token}` }, tls: { ca: server.caPem } });
    cont = ((await res.json()) as { metadata: { continue?: string } }).metadata.continue ?? "";
  } while (cont);
}
process.stdout.write(JSON.stringify({ url: server.url, caPem: server.caPem, token: server.token }) + "\n");

const decoder = new TextDecoder();
let buffered = "";
for await (const chunk of Bun.stdin.stream()) {
  buffered += decoder.decode(chunk, { stream: true });
  let nl: number;
  while ((nl = buffered.indexOf("\n")) >= 0) {
    const [cmd, a, b] = buffered.slice(0, nl).split(" ");
    buffered = buffered.slice(nl + 1);
    if (cmd === "update") {
      const slice = sliceObject(spec, Number(a), Number(b)) as { metadata: { annotations: Record<string, string> } };
      // When the event leaves for the wire, on the clock both processes share.
      slice.metadata.annotations[SENT_AT] = String(performance.timeOrigin + performance.now());
      server.update("endpointslices", slice);
    }
    if (cmd === "quit") {
      await server.stop();
      process.exit(0);
    }
  }
}
