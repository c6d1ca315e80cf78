import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Netns } from "../helpers/netns.ts";

/**
 * Script text of `httpGet(host, port, path, timeoutMs)`: one HTTP/1.0 request on a new connection,
 * resolving with the body or `ERR:<code>`. The netns probe below and the guest's long-lived probe
 * (test/e2e/vm/guest/ipvs-e2e.ts) both include it.
 */
export const HTTP_GET = String.raw`
function httpGet(host, port, path, timeoutMs) {
  return new Promise((resolve) => {
    let data = "";
    const timer = setTimeout(() => resolve("ERR:timeout"), timeoutMs);
    Bun.connect({ hostname: host, port, socket: {
      open(s) { s.write("GET " + path + " HTTP/1.0\r\nHost: x\r\n\r\n"); },
      data(s, chunk) { data += new TextDecoder().decode(chunk); },
      close() { clearTimeout(timer); const i = data.indexOf("\r\n\r\n"); resolve(i < 0 ? "ERR:empty" : data.slice(i + 4)); },
      error(s, e) { clearTimeout(timer); resolve("ERR:" + (e.code ?? e.message)); },
      connectError(s, e) { clearTimeout(timer); resolve("ERR:" + (e.code ?? e.message)); },
    }}).catch((e) => { clearTimeout(timer); resolve("ERR:" + (e.code ?? e.message)); });
  });
}
`;

/**
 * The client the netns suites run inside a namespace (`bun probe.ts MODE HOST PORT ...`), printing
 * one JSON line:
 * - `http COUNT [PATH]`: one new connection per request; the bodies, or `ERR:<code>`;
 * - `load MS`: requests back to back for MS ms; `{ ok, failures }`;
 * - `udp SRCPORT MS EVERY`: from one fixed source port every EVERY ms until three answers came or MS
 *   passed; each answer with the address it came from (`ip:port text`);
 * - `udp-for SRCPORT MS EVERY`: the same for the whole MS, each answer stamped `[ms, text]`.
 */
const PROBE =
  String.raw`
const [mode, host, portText, a, b, c] = process.argv.slice(2);
const port = Number(portText);
` +
  HTTP_GET +
  String.raw`
const get = (path = "/") => httpGet(host, port, path, 1500);
if (mode === "http") {
  const out = [];
  for (let i = 0; i < Number(a); i++) out.push(await get(b ?? "/"));
  console.log(JSON.stringify(out));
} else if (mode === "load") {
  const until = Date.now() + Number(a);
  let ok = 0; const failures = [];
  while (Date.now() < until) { const r = await get(); if (r.startsWith("ERR")) failures.push(r); else ok++; }
  console.log(JSON.stringify({ ok, failures }));
} else if (mode === "udp") {
  const answers = [];
  const sock = await Bun.udpSocket({ port: Number(a), socket: { data(s, d, fromPort, from) { answers.push(from + ":" + fromPort + " " + new TextDecoder().decode(d)); } } });
  const until = Date.now() + Number(b);
  while (Date.now() < until && answers.length < 3) { sock.send("ping", port, host); await Bun.sleep(Number(c)); }
  sock.close();
  console.log(JSON.stringify(answers));
} else if (mode === "udp-for") {
  const answers = [];
  const sock = await Bun.udpSocket({ port: Number(a), socket: { data(s, d) { answers.push([Date.now(), new TextDecoder().decode(d)]); } } });
  const until = Date.now() + Number(b);
  while (Date.now() < until) { sock.send("ping", port, host); await Bun.sleep(Number(c)); }
  sock.close();
  console.log(JSON.stringify(answers));
}
// A connect that never completed would keep the process alive.
process.exit(0);
`;

/** Writes the probe into `dir`, where `probe` runs it from. */
export async function installProbe(dir: string): Promise<void> {
  await writeFile(join(dir, "probe.ts"), PROBE);
}

/** Runs the probe in `ns` and returns what it printed. */
export async function probe(ns: Netns, args: readonly (string | number)[], dir: string): Promise<unknown> {
  const out = await ns.run([process.execPath, join(dir, "probe.ts"), ...args.map(String)], { timeoutMs: 20_000 });
  return JSON.parse(out.trim().split("\n").at(-1) ?? "null");
}

/** `count` requests, each on a new connection: the bodies (a backend's name) or `ERR:<code>`. */
export async function http(ns: Netns, host: string, port: number, count: number, dir: string, path = "/"): Promise<string[]> {
  return (await probe(ns, ["http", host, port, count, path], dir)) as string[];
}
