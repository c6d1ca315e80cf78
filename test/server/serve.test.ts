import { describe, expect, test } from "bun:test";
import { Hono } from "hono";
import { memoryLogger } from "../../src/log.ts";
import { BindError, parseHostPort, serve } from "../../src/server/serve.ts";
import { FakeClock } from "../helpers/fake-clock.ts";

function helloApp(text = "hello") {
  const app = new Hono();
  app.get("/", (c) => c.text(text));
  return app;
}

/** Holds a loopback port until released, so a server under test cannot bind it. */
function occupyPort() {
  const holder = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("holder") });
  return { port: holder.port!, release: () => holder.stop(true) };
}

async function pollUntil(check: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
  }
}

describe("parseHostPort", () => {
  test.each([
    ["0.0.0.0:10256", "0.0.0.0", 10256],
    ["127.0.0.1:10249", "127.0.0.1", 10249],
    ["[::]:10256", "::", 10256],
    ["[fe80::1%eth0]:80", "fe80::1%eth0", 80],
    [":10249", "0.0.0.0", 10249],
    ["localhost:0", "localhost", 0],
  ])("%s", (address, hostname, port) => {
    expect(parseHostPort(address)).toEqual({ hostname, port });
  });

  test.each(["10256", "0.0.0.0", "::1:80", "1.2.3.4:65536", "host:port", "[::1]"])("rejects %s", (address) => {
    expect(() => parseHostPort(address)).toThrow(/invalid address/);
  });
});

describe("serve", () => {
  test("serves on port 0 over IPv4 and reports the bound port; stop closes it", async () => {
    const server = await serve({ name: "t", address: "127.0.0.1:0", app: helloApp(), logger: memoryLogger() });
    try {
      expect(server.port).toBeGreaterThan(0);
      expect(await server.listening).toBe(server.port!);
      const res = await fetch(`http://127.0.0.1:${server.port}/`);
      expect(await res.text()).toBe("hello");
    } finally {
      await server.stop();
    }
    expect(server.port).toBeUndefined();
  });

  test("serves on an IPv6 address in brackets", async () => {
    const server = await serve({ name: "t6", address: "[::1]:0", app: helloApp("six"), logger: memoryLogger() });
    try {
      const res = await fetch(`http://[::1]:${server.port}/`);
      expect(await res.text()).toBe("six");
    } finally {
      await server.stop();
    }
  });

  test("hardFail: a taken port rejects with BindError naming the address", async () => {
    const held = occupyPort();
    try {
      const address = `127.0.0.1:${held.port}`;
      const err = await serve({ name: "t", address, app: helloApp(), logger: memoryLogger(), hardFail: true }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BindError);
      expect((err as BindError).message).toContain(`failed to listen on ${address}`);
      expect((err as BindError).message).toContain("EADDRINUSE");
    } finally {
      await held.release();
    }
  });

  test("without hardFail: logs the failure, retries after the delay, and serves once the port is free", async () => {
    const held = occupyPort();
    const clock = new FakeClock();
    const logger = memoryLogger();
    let server: Awaited<ReturnType<typeof serve>> | undefined;
    try {
      server = await serve({ name: "metrics", address: `127.0.0.1:${held.port}`, app: helloApp("late"), logger, clock, retryDelayMs: 5000 });
      expect(server.port).toBeUndefined();
      const failures = () => logger.lines.filter((l) => l.includes("Failed to start server")).length;
      expect(failures()).toBe(1);
      expect(JSON.parse(logger.lines[0]!)).toMatchObject({ server: "metrics", err: expect.stringContaining("EADDRINUSE"), retryAfterMs: 5000 });

      // Still taken at the first retry: logged again, still retrying.
      await clock.waitForSleepers(1);
      await clock.advance(4999);
      expect(failures()).toBe(1);
      await clock.advance(1);
      await pollUntil(() => failures() === 2, "second failure log");
      expect(server.port).toBeUndefined();

      await held.release();
      await clock.waitForSleepers(1);
      await clock.advance(5000);
      expect(await server.listening).toBe(held.port);
      const res = await fetch(`http://127.0.0.1:${held.port}/`);
      expect(await res.text()).toBe("late");
    } finally {
      await held.release();
      await server?.stop();
    }
  });

  test("stop while retrying ends the retries and resolves listening with undefined", async () => {
    const held = occupyPort();
    const clock = new FakeClock();
    try {
      const server = await serve({ name: "t", address: `127.0.0.1:${held.port}`, app: helloApp(), logger: memoryLogger(), clock });
      await clock.waitForSleepers(1);
      await server.stop();
      expect(await server.listening).toBeUndefined();
      expect(clock.sleepers).toBe(0);
    } finally {
      await held.release();
    }
  });

  test("a malformed address is an error even without hardFail", async () => {
    await expect(serve({ name: "t", address: "nonsense", app: helloApp(), logger: memoryLogger() })).rejects.toThrow(/invalid address/);
  });
});
