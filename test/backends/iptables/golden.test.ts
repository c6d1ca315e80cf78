/**
 * Upstream's own golden cases (pkg/proxy/iptables/proxier_test.go): the same services and endpoints
 * must give the same restore text, compared after upstream's ordering normalisation.
 */
import { describe, expect, test } from "bun:test";
import { generateRules, type GenerateContext } from "../../../src/backends/iptables/index.ts";
import type { Endpoint, ServicePort } from "../../../src/model/types.ts";
import {
  dedent,
  endpoint,
  fakeProxierOptions,
  servicePort,
  snapshot,
  sortRestoreText,
  testNodeName,
} from "./helpers.ts";

const full: GenerateContext = {};

describe("TestOverallIPTablesRules", () => {
  test("a mix of service types gives upstream's exact rules", async () => {
    const entries: [ServicePort, Endpoint[]][] = [
      [servicePort("ns1", "svc1", "p80", { clusterIP: "172.30.0.41", port: 80 }), [endpoint("10.180.0.1", 80)]],
      [
        servicePort("ns2", "svc2", "p80", {
          type: "LoadBalancer",
          clusterIP: "172.30.0.42",
          port: 80,
          nodePort: 3001,
          loadBalancerIPs: ["1.2.3.4"],
          externalIPs: ["192.168.99.22"],
          externalPolicyLocal: true,
          healthCheckNodePort: 30000,
        }),
        // Not on this node, so the Local external policy has nothing to send to.
        [endpoint("10.180.0.2", 80)],
      ],
      [
        servicePort("ns3", "svc3", "p80", { type: "NodePort", clusterIP: "172.30.0.43", port: 80, nodePort: 3003 }),
        [endpoint("10.180.0.3", 80)],
      ],
      [
        servicePort("ns4", "svc4", "p80", {
          type: "NodePort",
          clusterIP: "172.30.0.44",
          port: 80,
          externalIPs: ["192.168.99.33"],
        }),
        [endpoint("10.180.0.4", 80), endpoint("10.180.0.5", 80, { nodeName: testNodeName })],
      ],
      [
        servicePort("ns5", "svc5", "p80", {
          type: "LoadBalancer",
          clusterIP: "172.30.0.45",
          port: 80,
          nodePort: 3002,
          loadBalancerIPs: ["5.6.7.8"],
          loadBalancerSourceRanges: [" 203.0.113.0/25"],
          sessionAffinity: { type: "ClientIP", timeoutSeconds: 10800 },
        }),
        [endpoint("10.180.0.3", 80)],
      ],
      [servicePort("ns6", "svc6", "p80", { clusterIP: "172.30.0.46", port: 80 }), []],
    ];
    const out = generateRules(snapshot(entries), "IPv4", fakeProxierOptions, full);
    const golden = await Bun.file(new URL("./golden/overall.txt", import.meta.url)).text();
    expect(sortRestoreText(out.text)).toBe(sortRestoreText(golden));
    expect(out.counts.natRules).toBe(out.text.split("\n").filter((l) => l.startsWith("-A ")).length - out.counts.filterRules);
  });
});

describe("TestSyncProxyRulesRepeated", () => {
  const svc1 = servicePort("ns1", "svc1", "p80", { clusterIP: "172.30.0.41", port: 80 });
  const svc2 = servicePort("ns2", "svc2", "p8080", { clusterIP: "172.30.0.42", port: 8080 });
  const svc3 = servicePort("ns3", "svc3", "p80", { clusterIP: "172.30.0.43", port: 80 });
  const svc4 = servicePort("ns4", "svc4", "p80", { clusterIP: "172.30.0.44", port: 80 });
  const filter = dedent(`
    *filter
    :KUBE-NODEPORTS - [0:0]
    :KUBE-SERVICES - [0:0]
    :KUBE-EXTERNAL-SERVICES - [0:0]
    :KUBE-FIREWALL - [0:0]
    :KUBE-FORWARD - [0:0]
    :KUBE-PROXY-FIREWALL - [0:0]
    -A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
    -A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP
    -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
    -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
    COMMIT
  `);
  const natHead = dedent(`
    -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
    -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
    -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
    -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
  `);
  const nodeportsJump = `-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n`;

  test("initial full sync", () => {
    const out = generateRules(
      snapshot([
        [svc1, [endpoint("10.0.1.1", 80)]],
        [svc2, [endpoint("10.0.2.1", 8080)]],
      ]),
      "IPv4",
      fakeProxierOptions,
      full,
    );
    const expected =
      filter +
      dedent(`
        *nat
        :KUBE-NODEPORTS - [0:0]
        :KUBE-SERVICES - [0:0]
        :KUBE-MARK-MASQ - [0:0]
        :KUBE-POSTROUTING - [0:0]
        :KUBE-SEP-SNQ3ZNILQDEJNDQO - [0:0]
        :KUBE-SEP-UHEGFW77JX3KXTOV - [0:0]
        :KUBE-SVC-2VJB64SDSIJUP5T6 - [0:0]
        :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
        -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
        -A KUBE-SERVICES -m comment --comment "ns2/svc2:p8080 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 8080 -j KUBE-SVC-2VJB64SDSIJUP5T6
      `) +
      nodeportsJump +
      natHead +
      dedent(`
        -A KUBE-SEP-SNQ3ZNILQDEJNDQO -m comment --comment ns1/svc1:p80 -s 10.0.1.1 -j KUBE-MARK-MASQ
        -A KUBE-SEP-SNQ3ZNILQDEJNDQO -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.1.1:80
        -A KUBE-SEP-UHEGFW77JX3KXTOV -m comment --comment ns2/svc2:p8080 -s 10.0.2.1 -j KUBE-MARK-MASQ
        -A KUBE-SEP-UHEGFW77JX3KXTOV -m comment --comment ns2/svc2:p8080 -m tcp -p tcp -j DNAT --to-destination 10.0.2.1:8080
        -A KUBE-SVC-2VJB64SDSIJUP5T6 -m comment --comment "ns2/svc2:p8080 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 8080 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
        -A KUBE-SVC-2VJB64SDSIJUP5T6 -m comment --comment "ns2/svc2:p8080 -> 10.0.2.1:8080" -j KUBE-SEP-UHEGFW77JX3KXTOV
        -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
        -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.0.1.1:80" -j KUBE-SEP-SNQ3ZNILQDEJNDQO
        COMMIT
      `);
    expect(sortRestoreText(out.text)).toBe(sortRestoreText(expected));
    expect(out.partial).toBe(false);
    expect(out.counts.natRulesTotal).toBe(out.counts.natRules);
  });

  test("adding a service rewrites only its chains", () => {
    const before = generateRules(
      snapshot([
        [svc1, [endpoint("10.0.1.1", 80)]],
        [svc2, [endpoint("10.0.2.1", 8080)]],
      ]),
      "IPv4",
      fakeProxierOptions,
      full,
    );
    const out = generateRules(
      snapshot([
        [svc1, [endpoint("10.0.1.1", 80)]],
        [svc2, [endpoint("10.0.2.1", 8080)]],
        [svc3, [endpoint("10.0.3.1", 80)]],
      ]),
      "IPv4",
      fakeProxierOptions,
      { ...full, changed: new Set([svc3.key]), existingChains: before.activeNatChains },
    );
    const expected =
      filter +
      dedent(`
        *nat
        :KUBE-NODEPORTS - [0:0]
        :KUBE-SERVICES - [0:0]
        :KUBE-MARK-MASQ - [0:0]
        :KUBE-POSTROUTING - [0:0]
        :KUBE-SEP-BSWRHOQ77KEXZLNL - [0:0]
        :KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
        -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
        -A KUBE-SERVICES -m comment --comment "ns2/svc2:p8080 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 8080 -j KUBE-SVC-2VJB64SDSIJUP5T6
        -A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
      `) +
      nodeportsJump +
      natHead +
      dedent(`
        -A KUBE-SEP-BSWRHOQ77KEXZLNL -m comment --comment ns3/svc3:p80 -s 10.0.3.1 -j KUBE-MARK-MASQ
        -A KUBE-SEP-BSWRHOQ77KEXZLNL -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.3.1:80
        -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
        -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.0.3.1:80" -j KUBE-SEP-BSWRHOQ77KEXZLNL
        COMMIT
      `);
    expect(sortRestoreText(out.text)).toBe(sortRestoreText(expected));
    expect(out.partial).toBe(true);
    // 1 KUBE-SERVICES rule, 2 KUBE-SVC rules and 2 KUBE-SEP rules more than before.
    expect(out.counts.natRulesTotal).toBe(before.counts.natRulesTotal + 5);
  });

  test("deleting a service deletes its chains and leaves the others alone", () => {
    const existing = new Set([
      "KUBE-SVC-XPGD46QRK7WJZT7O",
      "KUBE-SEP-SNQ3ZNILQDEJNDQO",
      "KUBE-SVC-2VJB64SDSIJUP5T6",
      "KUBE-SEP-UHEGFW77JX3KXTOV",
      "KUBE-SVC-X27LE4BHSL4DOUIK",
      "KUBE-SEP-BSWRHOQ77KEXZLNL",
      "KUBE-SERVICES",
      "KUBE-MARK-MASQ",
      "SOMEONE-ELSES-CHAIN",
    ]);
    const out = generateRules(
      snapshot([
        [svc1, [endpoint("10.0.1.1", 80)]],
        [svc3, [endpoint("10.0.3.1", 80)]],
      ]),
      "IPv4",
      fakeProxierOptions,
      { ...full, changed: new Set([svc2.key]), existingChains: existing },
    );
    const expected =
      filter +
      dedent(`
        *nat
        :KUBE-NODEPORTS - [0:0]
        :KUBE-SERVICES - [0:0]
        :KUBE-MARK-MASQ - [0:0]
        :KUBE-POSTROUTING - [0:0]
        :KUBE-SEP-UHEGFW77JX3KXTOV - [0:0]
        :KUBE-SVC-2VJB64SDSIJUP5T6 - [0:0]
        -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
        -A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
      `) +
      nodeportsJump +
      natHead +
      dedent(`
        -X KUBE-SEP-UHEGFW77JX3KXTOV
        -X KUBE-SVC-2VJB64SDSIJUP5T6
        COMMIT
      `);
    expect(sortRestoreText(out.text)).toBe(sortRestoreText(expected));
    expect(out.deletedChains.toSorted()).toEqual(["KUBE-SEP-UHEGFW77JX3KXTOV", "KUBE-SVC-2VJB64SDSIJUP5T6"]);
    // -X lines come before the final KUBE-NODEPORTS jump, as upstream writes them.
    const lines = out.text.split("\n");
    expect(lines.findIndex((l) => l.startsWith("-X "))).toBeLessThan(lines.indexOf(nodeportsJump.trim()));
  });

  test("a service without endpoints only gets a REJECT rule", () => {
    const out = generateRules(
      snapshot([
        [svc1, [endpoint("10.0.1.1", 80)]],
        [svc3, [endpoint("10.0.3.1", 80)]],
        [svc4, []],
      ]),
      "IPv4",
      fakeProxierOptions,
      { ...full, changed: new Set([svc4.key]) },
    );
    const expected =
      dedent(`
        *filter
        :KUBE-NODEPORTS - [0:0]
        :KUBE-SERVICES - [0:0]
        :KUBE-EXTERNAL-SERVICES - [0:0]
        :KUBE-FIREWALL - [0:0]
        :KUBE-FORWARD - [0:0]
        :KUBE-PROXY-FIREWALL - [0:0]
        -A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j REJECT
        -A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
        -A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
        COMMIT
        *nat
        :KUBE-NODEPORTS - [0:0]
        :KUBE-SERVICES - [0:0]
        :KUBE-MARK-MASQ - [0:0]
        :KUBE-POSTROUTING - [0:0]
        -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
        -A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
      `) +
      nodeportsJump +
      natHead +
      "COMMIT\n";
    expect(sortRestoreText(out.text)).toBe(sortRestoreText(expected));
  });

  test("changing an endpoint rewrites the service's chains and deletes the old endpoint chain", () => {
    const before = generateRules(
      snapshot([
        [svc1, [endpoint("10.0.1.1", 80)]],
        [svc3, [endpoint("10.0.3.1", 80)]],
        [svc4, [endpoint("10.0.4.1", 80)]],
      ]),
      "IPv4",
      fakeProxierOptions,
      full,
    );
    const out = generateRules(
      snapshot([
        [svc1, [endpoint("10.0.1.1", 80)]],
        [svc3, [endpoint("10.0.3.2", 80)]],
        [svc4, [endpoint("10.0.4.1", 80)]],
      ]),
      "IPv4",
      fakeProxierOptions,
      { ...full, changed: new Set([svc3.key]), existingChains: before.activeNatChains },
    );
    const expected =
      filter +
      dedent(`
        *nat
        :KUBE-NODEPORTS - [0:0]
        :KUBE-SERVICES - [0:0]
        :KUBE-MARK-MASQ - [0:0]
        :KUBE-POSTROUTING - [0:0]
        :KUBE-SEP-BSWRHOQ77KEXZLNL - [0:0]
        :KUBE-SEP-DKCFIS26GWF2WLWC - [0:0]
        :KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
        -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
        -A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
        -A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
      `) +
      nodeportsJump +
      natHead +
      dedent(`
        -A KUBE-SEP-DKCFIS26GWF2WLWC -m comment --comment ns3/svc3:p80 -s 10.0.3.2 -j KUBE-MARK-MASQ
        -A KUBE-SEP-DKCFIS26GWF2WLWC -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.3.2:80
        -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
        -A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.0.3.2:80" -j KUBE-SEP-DKCFIS26GWF2WLWC
        -X KUBE-SEP-BSWRHOQ77KEXZLNL
        COMMIT
      `);
    expect(sortRestoreText(out.text)).toBe(sortRestoreText(expected));
    // Same number of rules as before: rewritten, not added.
    expect(out.counts.natRulesTotal).toBe(before.counts.natRulesTotal);
  });

  test("adding an endpoint splits traffic between the two", () => {
    const out = generateRules(
      snapshot([
        [svc1, [endpoint("10.0.1.1", 80)]],
        [svc3, [endpoint("10.0.3.2", 80), endpoint("10.0.3.3", 80)]],
      ]),
      "IPv4",
      fakeProxierOptions,
      { ...full, changed: new Set([svc3.key]) },
    );
    expect(out.text).toContain(
      `-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.0.3.2:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-DKCFIS26GWF2WLWC\n-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.0.3.3:80" -j KUBE-SEP-JVVZVJ7BSEPPRNBS\n`,
    );
    expect(out.text).toContain(
      "-A KUBE-SEP-JVVZVJ7BSEPPRNBS -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.0.3.3:80",
    );
    expect(out.text).not.toContain("KUBE-SEP-SNQ3ZNILQDEJNDQO");
  });
});

describe("raw order", () => {
  test("sections and lines come in upstream's write order (not only after sorting)", () => {
    const sp = servicePort("ns1", "svc1", "p80", { clusterIP: "172.30.0.41", port: 80 });
    const out = generateRules(snapshot([[sp, [endpoint("10.180.0.1", 80)]]]), "IPv4", fakeProxierOptions, full);
    expect(out.text).toBe(
      dedent(`
        *filter
        :KUBE-SERVICES - [0:0]
        :KUBE-EXTERNAL-SERVICES - [0:0]
        :KUBE-FORWARD - [0:0]
        :KUBE-NODEPORTS - [0:0]
        :KUBE-PROXY-FIREWALL - [0:0]
        :KUBE-FIREWALL - [0:0]
        -A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
        -A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
        COMMIT
        *nat
        :KUBE-SERVICES - [0:0]
        :KUBE-NODEPORTS - [0:0]
        :KUBE-POSTROUTING - [0:0]
        :KUBE-MARK-MASQ - [0:0]
        :KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
        :KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
        -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
        -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
        -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
        -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
        -A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
        -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
        -A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
        -A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
        -A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
        -A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
        COMMIT
      `),
    );
    expect(out.counts).toMatchObject({ filterChains: 6, filterRules: 4, natChains: 6, natRules: 10, natRulesTotal: 10 });
  });
});
