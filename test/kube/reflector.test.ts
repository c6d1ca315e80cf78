import { describe, expect, test } from "bun:test";
import { KubeClient } from "../../src/kube/client.ts";
import { Reflector, type RawObject } from "../../src/kube/reflector.ts";
import { staticToken } from "../../src/kube/token.ts";
import { memoryLogger } from "../../src/log.ts";
import { FakeClock } from "../helpers/fake-clock.ts";
import { list, obj, ScriptedFetch, status, WatchStream, type SeenRequest } from "./scripted-fetch.ts";

function describeObj(o: RawObject): string {
  const m = o["metadata"] as { name: string; resourceVersion: string };
  return `${m.name}@${m.resourceVersion}`;
}

function setup(random = () => 0) {
  const clock = new FakeClock();
  const f = new ScriptedFetch();
  const logger = memoryLogger(10);
  const client = new KubeClient({
    config: { server: "https://api.test", tls: { insecureSkipVerify: false }, auth: { kind: "token", token: staticToken("t") }, origin: "test" },
    fetch: f.fetch,
    clock,
    qps: 0,
  });
  const seen: string[] = [];
  const reflector = new Reflector({
    client,
    path: "/api/v1/services",
    name: "services",
    labelSelector: "!service.kubernetes.io/service-proxy-name",
    handler: {
      onUpsert: (o) => seen.push(`upsert ${describeObj(o)}`),
      onDelete: (o) => seen.push(`delete ${describeObj(o)}`),
      onSynced: () => seen.push("synced"),
    },
    clock,
    random,
    logger,
    pageSize: 2,
  });
  const ac = new AbortController();
  let run: Promise<void> | undefined;
  return {
    clock,
    f,
    logger,
    seen,
    reflector,
    start() {
      run = reflector.run(ac.signal);
    },
    async stop() {
      ac.abort();
      await run;
    },
    /** retryInMs values logged so far. */
    delays(): number[] {
      return logger.lines.map((l) => JSON.parse(l) as { retryInMs?: number }).flatMap((l) => (l.retryInMs === undefined ? [] : [l.retryInMs]));
    },
  };
}

async function until(cond: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

const isWatch = (r: SeenRequest | undefined) => r?.url.searchParams.get("watch") === "true";
const q = (r: SeenRequest | undefined, key: string) => r?.url.searchParams.get(key) ?? null;

describe("Reflector", () => {
  test("lists page by page, reports objects then synced, and watches from the list's resourceVersion", async () => {
    const t = setup();
    const w1 = new WatchStream();
    t.f.reply(list("10", [obj("a", "5"), obj("b", "6")], "page-2"), list("10", [obj("c", "7")]), w1.response);
    t.start();
    try {
      await t.f.waitForRequests(3);
      const [p1, p2, w] = t.f.requests;
      expect(q(p1, "limit")).toBe("2");
      expect(q(p1, "continue")).toBeNull();
      expect(q(p1, "labelSelector")).toBe("!service.kubernetes.io/service-proxy-name");
      expect(q(p2, "continue")).toBe("page-2");
      expect(isWatch(w)).toBe(true);
      expect(q(w, "resourceVersion")).toBe("10");
      expect(q(w, "allowWatchBookmarks")).toBe("true");
      expect(q(w, "timeoutSeconds")).toBe("300");
      expect(q(w, "labelSelector")).toBe("!service.kubernetes.io/service-proxy-name");
      expect(t.seen).toEqual(["upsert a@5", "upsert b@6", "upsert c@7", "synced"]);

      const w2 = new WatchStream();
      t.f.reply(w2.response);
      w1.push({ type: "ADDED", object: obj("d", "11") });
      w1.push({ type: "MODIFIED", object: obj("a", "12") });
      w1.push({ type: "DELETED", object: obj("b", "13") });
      w1.push({ type: "MODIFIED", object: obj("a", "12") }); // a replay of what we have: no event
      w1.push({ type: "BOOKMARK", object: { kind: "Service", metadata: { resourceVersion: "20" } } });
      await until(() => t.reflector.resourceVersion === "20", "bookmark");
      expect(t.seen.slice(4)).toEqual(["upsert d@11", "upsert a@12", "delete b@13"]);
      w1.close();
      // A watch that ended normally is re-opened at once from the bookmark.
      await t.f.waitForRequests(4);
      expect(isWatch(t.f.requests[3])).toBe(true);
      expect(q(t.f.requests[3], "resourceVersion")).toBe("20");
      expect([...t.reflector.objects.keys()].sort()).toEqual(["default/a", "default/c", "default/d"]);
      expect(t.delays()).toEqual([]);
    } finally {
      await t.stop();
    }
  });

  test("timeoutSeconds is randomized between the minimum and twice it", async () => {
    const t = setup(() => 0.75);
    t.f.reply(list("1", []), new WatchStream().response);
    t.start();
    try {
      await t.f.waitForRequests(2);
      expect(q(t.f.requests[1], "timeoutSeconds")).toBe("525");
    } finally {
      await t.stop();
    }
  });

  test("an ERROR 410 event re-lists: vanished objects are deleted with their last state, changed ones updated", async () => {
    const t = setup();
    const w1 = new WatchStream();
    t.f.reply(list("10", [obj("a", "5"), obj("b", "6")], "p2"), list("10", [obj("c", "7")]), w1.response);
    t.start();
    try {
      await t.f.waitForRequests(3);
      w1.push({ type: "MODIFIED", object: obj("b", "11", { spec: { v: 2 } }) });
      await until(() => t.seen.includes("upsert b@11"), "b@11");
      t.f.reply(list("30", [obj("a", "5"), obj("c", "29")], "p2"), list("30", [obj("e", "25")]), new WatchStream().response);
      w1.push({ type: "ERROR", object: { kind: "Status", apiVersion: "v1", status: "Failure", message: "too old resource version: 11 (25)", reason: "Expired", code: 410 } });
      await t.f.waitForRequests(6);
      expect(isWatch(t.f.requests[3])).toBe(false);
      expect(q(t.f.requests[3], "resourceVersion")).toBeNull();
      expect(isWatch(t.f.requests[5])).toBe(true);
      expect(q(t.f.requests[5], "resourceVersion")).toBe("30");
      expect(t.seen).toEqual(["upsert a@5", "upsert b@6", "upsert c@7", "synced", "upsert b@11", "upsert c@29", "upsert e@25", "delete b@11"]);
      expect(t.delays()).toEqual([]);
    } finally {
      await t.stop();
    }
  });

  test("an HTTP 410 on the watch re-lists", async () => {
    const t = setup();
    t.f.reply(list("10", [obj("a", "5")]), status(410, "Expired", "too old resource version"), list("40", [obj("b", "33")]), new WatchStream().response);
    t.start();
    try {
      await t.f.waitForRequests(4);
      expect(isWatch(t.f.requests[2])).toBe(false);
      expect(q(t.f.requests[3], "resourceVersion")).toBe("40");
      expect(t.seen).toEqual(["upsert a@5", "synced", "upsert b@33", "delete a@5"]);
    } finally {
      await t.stop();
    }
  });

  test("an expired continue token falls back to one unpaginated list", async () => {
    const t = setup();
    t.f.reply(list("10", [obj("a", "5"), obj("b", "6")], "p2"), status(410, "Expired", "continue too old"), list("12", [obj("a", "5"), obj("b", "6"), obj("c", "11")]), new WatchStream().response);
    t.start();
    try {
      await t.f.waitForRequests(4);
      expect(q(t.f.requests[2], "limit")).toBeNull();
      expect(q(t.f.requests[2], "continue")).toBeNull();
      expect(q(t.f.requests[3], "resourceVersion")).toBe("12");
      expect(t.seen).toEqual(["upsert a@5", "upsert b@6", "upsert c@11", "synced"]);
    } finally {
      await t.stop();
    }
  });

  test("5xx and network errors back off 800 ms, doubling, capped at 30 s, with no request before the delay ends", async () => {
    const t = setup();
    const failures = [
      status(503, "ServiceUnavailable"),
      new Error("connect ECONNREFUSED"),
      status(500, "InternalError"),
      status(503, "ServiceUnavailable"),
      status(500, "InternalError"),
      status(500, "InternalError"),
      status(500, "InternalError"),
    ];
    t.f.reply(...failures, list("10", []), new WatchStream().response);
    t.start();
    try {
      const expected = [800, 1600, 3200, 6400, 12800, 25600, 30000];
      for (let i = 0; i < expected.length; i++) {
        await t.f.waitForRequests(i + 1);
        await until(() => t.delays().length === i + 1, `delay ${i + 1}`);
        const delay = expected[i]!;
        await t.clock.advance(delay - 1);
        expect(t.f.requests.length).toBe(i + 1);
        await t.clock.advance(1);
      }
      await t.f.waitForRequests(expected.length + 2);
      expect(t.delays()).toEqual(expected);
      expect(t.seen).toEqual(["synced"]);
      expect(t.logger.lines.some((l) => l.includes("ECONNREFUSED"))).toBe(true);
    } finally {
      await t.stop();
    }
  });

  test("the backoff resets after a watch that stayed healthy for two minutes", async () => {
    const t = setup();
    const brief = new WatchStream();
    t.f.reply(list("10", []), status(500, "InternalError"), status(500, "InternalError"), status(500, "InternalError"), brief.response);
    t.start();
    try {
      for (const [i, delay] of [800, 1600, 3200].entries()) {
        await until(() => t.delays().length === i + 1, `delay ${i + 1}`);
        await t.clock.advance(delay);
      }
      await t.f.waitForRequests(5);
      brief.fail();
      await until(() => t.delays().length === 4, "fourth delay");
      expect(t.delays()[3]).toBe(6400);
      const healthy = new WatchStream();
      t.f.reply(healthy.response);
      await t.clock.advance(6400);
      await t.f.waitForRequests(6);
      await t.clock.advance(120_000);
      healthy.fail();
      await until(() => t.delays().length === 5, "fifth delay");
      expect(t.delays()).toEqual([800, 1600, 3200, 6400, 800]);
      // The re-watch continues from where the failed watch was.
      t.f.reply(new WatchStream().response);
      await t.clock.advance(800);
      await t.f.waitForRequests(7);
      expect(isWatch(t.f.requests[6])).toBe(true);
      expect(q(t.f.requests[6], "resourceVersion")).toBe("10");
    } finally {
      await t.stop();
    }
  });

  test("a broken watch resumes from the last event's resourceVersion without re-listing", async () => {
    const t = setup();
    const w1 = new WatchStream();
    t.f.reply(list("10", []), w1.response, new WatchStream().response);
    t.start();
    try {
      await t.f.waitForRequests(2);
      w1.push({ type: "ADDED", object: obj("a", "11") });
      await until(() => t.seen.includes("upsert a@11"), "a@11");
      w1.fail();
      await until(() => t.delays().length === 1, "delay");
      await t.clock.advance(800);
      await t.f.waitForRequests(3);
      expect(isWatch(t.f.requests[2])).toBe(true);
      expect(q(t.f.requests[2], "resourceVersion")).toBe("11");
    } finally {
      await t.stop();
    }
  });

  test("a watch that closes at once with no events is retried after a backoff, not in a hot loop", async () => {
    const t = setup();
    t.f.reply(list("10", []), new WatchStream([], { close: true }).response, new WatchStream().response);
    t.start();
    try {
      await t.f.waitForRequests(2);
      await until(() => t.delays().length === 1, "delay");
      expect(t.f.requests.length).toBe(2);
      await t.clock.advance(800);
      await t.f.waitForRequests(3);
      expect(q(t.f.requests[2], "resourceVersion")).toBe("10");
      expect(t.delays()).toEqual([800]);
    } finally {
      await t.stop();
    }
  });

  test("other ERROR events and undecodable lines back off and re-watch; nameless objects are skipped", async () => {
    const t = setup();
    const w1 = new WatchStream();
    t.f.reply(list("10", [{ metadata: {} }, obj("a", "5")]), w1.response);
    t.start();
    try {
      await t.f.waitForRequests(2);
      expect(t.seen).toEqual(["upsert a@5", "synced"]);
      w1.push({ type: "ERROR", object: { kind: "Status", code: 500, reason: "InternalError", message: "etcd hiccup" } });
      await until(() => t.delays().length === 1, "delay");
      const w2 = new WatchStream();
      t.f.reply(w2.response);
      await t.clock.advance(800);
      await t.f.waitForRequests(3);
      expect(q(t.f.requests[2], "resourceVersion")).toBe("10");
      w2.push({ type: "SURPRISE", object: {} });
      await until(() => t.delays().length === 2, "second delay");
      expect(t.delays()).toEqual([800, 1600]);
      expect(t.logger.lines.some((l) => l.includes("etcd hiccup"))).toBe(true);
      expect(t.logger.lines.some((l) => l.includes("without metadata.name"))).toBe(true);
    } finally {
      await t.stop();
    }
  });

  test("a watch refused with 'Too large resource version' re-lists after a backoff", async () => {
    const t = setup();
    t.f.reply(list("10", [obj("a", "5")]), status(504, "Timeout", "Timeout: Too large resource version: 10, current: 3"), list("4", [obj("b", "2")]), new WatchStream().response);
    t.start();
    try {
      await until(() => t.delays().length === 1, "delay");
      await t.clock.advance(800);
      await t.f.waitForRequests(4);
      expect(isWatch(t.f.requests[2])).toBe(false);
      expect(q(t.f.requests[3], "resourceVersion")).toBe("4");
      expect(t.seen).toEqual(["upsert a@5", "synced", "upsert b@2", "delete a@5"]);
    } finally {
      await t.stop();
    }
  });

  test("stops promptly when aborted during a backoff or an open watch", async () => {
    const t = setup();
    t.f.reply(status(503, "ServiceUnavailable"));
    t.start();
    await until(() => t.delays().length === 1, "delay");
    await t.stop();
    const t2 = setup();
    t2.f.reply(list("1", []), new WatchStream().response);
    t2.start();
    await t2.f.waitForRequests(2);
    await t2.stop();
    expect(t2.seen).toEqual(["synced"]);
  });
});
