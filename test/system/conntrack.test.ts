import { describe, expect, test } from "bun:test";
import { Conntrack, conntrackFilterArgs } from "../../src/system/conntrack.ts";
import { RecordingExec } from "../helpers/recording-exec.ts";

describe("Conntrack", () => {
  test("deleteAll sends every filter as one -D line to a single conntrack -R -", async () => {
    const exec = new RecordingExec();
    await new Conntrack(exec).deleteAll([
      { kind: "serviceIP", family: "IPv4", protocol: "UDP", ip: "10.96.0.10" },
      { kind: "port", family: "IPv4", protocol: "UDP", port: 30053 },
      { kind: "serviceNAT", family: "IPv6", protocol: "UDP", serviceIP: "fd00::10", endpointIP: "fd00:1::5" },
      { kind: "portNAT", family: "IPv4", protocol: "SCTP", port: 30099, endpointIP: "10.1.0.5" },
    ]);
    expect(exec.calls.map((c) => c.argv.join(" "))).toEqual(["conntrack -R -"]);
    expect(exec.calls[0]?.options?.stdin).toBe(
      [
        "-D --orig-dst 10.96.0.10 -p udp",
        "-D -p udp --dport 30053",
        "-D -f ipv6 --orig-dst fd00::10 --dst-nat fd00:1::5 -p udp",
        "-D -p sctp --dport 30099 --dst-nat 10.1.0.5",
        "",
      ].join("\n"),
    );
  });

  test("deleteAll of nothing runs nothing; a refused input throws with conntrack's words", async () => {
    const none = new RecordingExec();
    await new Conntrack(none).deleteAll([]);
    expect(none.calls).toEqual([]);
    const bad = new RecordingExec(() => ({ code: 2, stderr: "conntrack v1.4.7 (conntrack-tools): unknown option `--bogus'\n" }));
    await expect(new Conntrack(bad).deleteAll([{ kind: "serviceIP", family: "IPv4", protocol: "UDP", ip: "10.96.0.10" }])).rejects.toThrow(/unknown option/);
  });

  test("the single-call methods select the same flows as the batch lines", async () => {
    const exec = new RecordingExec();
    await new Conntrack(exec).clearServiceNAT("IPv6", "UDP", "fd00::10", "fd00:1::5");
    expect(exec.calls[0]?.argv.slice(2)).toEqual(conntrackFilterArgs({ kind: "serviceNAT", family: "IPv6", protocol: "UDP", serviceIP: "fd00::10", endpointIP: "fd00:1::5" }));
    expect(exec.calls[0]?.argv.join(" ")).toBe("conntrack -D -f ipv6 --orig-dst fd00::10 --dst-nat fd00:1::5 -p udp");
  });
});
