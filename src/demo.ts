/**
 * The built-in demo (`--demo`): a first run that needs no cluster, no manifest and no root. Two small
 * HTTP backends start on 127.0.0.1, a NodePort Service with both as endpoints is served by kproxy
 * in the userspace mode (no kernel rules), and a few requests to the NodePort show which backend
 * answered each. Same format as a --services-file manifest.
 */

export const DEMO_NODE_NAME = "demo-node";
export const DEMO_NODE_PORT = 30080;
/** The range NodePorts come from; a taken DEMO_NODE_PORT is replaced by a free port from it. */
const NODE_PORT_RANGE = [30000, 32767] as const;
export const DEMO_REQUESTS = 10;

/** Whether `host:port` can be bound now (TCP). */
export function portFree(host: string, port: number): boolean {
  try {
    const probe = Bun.listen({ hostname: host, port, socket: { data() {} } });
    probe.stop(true);
    return true;
  } catch {
    return false;
  }
}

/** The manifest for the demo Service, with the backends' real ports as its endpoints. */
export function demoManifest(nodePort: number, backends: readonly { readonly name: string; readonly port: number }[]): string {
  const service = `
apiVersion: v1
kind: Service
metadata: { namespace: demo, name: web }
spec:
  type: NodePort
  clusterIP: 10.96.0.80
  clusterIPs: [10.96.0.80]
  selector: { app: web }
  ports:
    - { name: http, port: 80, targetPort: http, nodePort: ${nodePort}, protocol: TCP }
`;
  // Each backend listens on its own port, and a slice's port applies to all its endpoints: one slice each.
  const slices = backends.map(
    (b) => `
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: demo
  name: web-${b.name}
  labels: { kubernetes.io/service-name: web }
addressType: IPv4
ports:
  - { name: http, port: ${b.port}, protocol: TCP }
endpoints:
  - { addresses: [127.0.0.1], conditions: { ready: true }, nodeName: ${DEMO_NODE_NAME} }
`,
  );
  return [service, ...slices].join("---");
}

export interface Demo {
  readonly manifest: string;
  readonly nodePort: number;
  readonly backends: readonly { readonly name: string; readonly port: number }[];
  /** Set when DEMO_NODE_PORT was taken and another port is used. */
  readonly nodePortNote: string | undefined;
  /** Sends `count` requests to the NodePort on 127.0.0.1 and prints who answered each; returns the tally. */
  sendRequests(print: (line: string) => void, count?: number): Promise<Record<string, number>>;
  stop(): Promise<void>;
}

/** Starts the two backends and picks the NodePort. */
export async function startDemo(options: { readonly nodePort?: number; readonly isFree?: (port: number) => boolean } = {}): Promise<Demo> {
  const isFree = options.isFree ?? ((port: number) => portFree("127.0.0.1", port));
  const servers = ["backend-a", "backend-b"].map((name) =>
    Bun.serve({ hostname: "127.0.0.1", port: 0, development: false, fetch: () => new Response(`hello from ${name}\n`) }),
  );
  const backends = servers.map((s, i) => ({ name: i === 0 ? "backend-a" : "backend-b", port: s.port ?? 0 }));
  const wanted = options.nodePort ?? DEMO_NODE_PORT;
  let nodePort = wanted;
  let nodePortNote: string | undefined;
  if (!isFree(wanted)) {
    nodePort = 0;
    for (let p = NODE_PORT_RANGE[0]; p <= NODE_PORT_RANGE[1]; p++) {
      if (p !== wanted && isFree(p)) {
        nodePort = p;
        break;
      }
    }
    if (nodePort === 0) {
      for (const s of servers) await s.stop(true);
      throw new Error(`the demo needs a free port in ${NODE_PORT_RANGE[0]}-${NODE_PORT_RANGE[1]} on 127.0.0.1 for its NodePort, and none is`);
    }
    nodePortNote = `port ${wanted} on 127.0.0.1 is taken; the demo's NodePort is ${nodePort} instead`;
  }
  return {
    manifest: demoManifest(nodePort, backends),
    nodePort,
    backends,
    nodePortNote,
    async sendRequests(print, count = DEMO_REQUESTS) {
      const tally: Record<string, number> = {};
      for (let i = 1; i <= count; i++) {
        let answer: string;
        try {
          const response = await fetch(`http://127.0.0.1:${nodePort}/`, { headers: { connection: "close" }, signal: AbortSignal.timeout(3000) });
          answer = (await response.text()).trim().replace(/^hello from /, "");
        } catch (err) {
          answer = `error: ${err instanceof Error ? err.message : String(err)}`;
        }
        tally[answer] = (tally[answer] ?? 0) + 1;
        print(`request ${String(i).padStart(2)} to 127.0.0.1:${nodePort} answered by ${answer}`);
      }
      print(`answers: ${Object.entries(tally).map(([name, n]) => `${name} ${n}`).join(", ")}`);
      return tally;
    },
    async stop() {
      for (const s of servers) await s.stop(true);
    },
  };
}
