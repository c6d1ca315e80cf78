import { describe, expect, test } from "bun:test";
import {
  acceptTarget,
  createHandoverShared,
  DEFAULT_HANDOVER_LIMITS,
  HandoverFlag,
  handoverTarget,
  INBOX_CAPACITY,
  inboxOf,
} from "../../../src/backends/userspace/handover.ts";

describe("handover inbox", () => {
  test("takes what was put, oldest first, once", () => {
    const shared = createHandoverShared(2, [-1, -1]);
    const inbox = inboxOf(shared, 1);
    expect(inbox.put({ listenId: 7, clientFd: 10, backendFd: 11, flags: 0 })).toBe(true);
    expect(inbox.put({ listenId: 7, clientFd: 12, backendFd: 13, flags: HandoverFlag.clientFinIn | HandoverFlag.backendFinOut })).toBe(true);
    expect(inbox.takeAll()).toEqual([
      { listenId: 7, clientFd: 10, backendFd: 11, flags: 0 },
      { listenId: 7, clientFd: 12, backendFd: 13, flags: 9 },
    ]);
    expect(inbox.takeAll()).toEqual([]);
  });

  test("each thread's inbox is its own", () => {
    const shared = createHandoverShared(3, [-1, -1, -1]);
    inboxOf(shared, 0).put({ listenId: 1, clientFd: 3, backendFd: 4, flags: 0 });
    expect(inboxOf(shared, 1).takeAll()).toEqual([]);
    expect(inboxOf(shared, 2).takeAll()).toEqual([]);
    expect(inboxOf(shared, 0).takeAll()).toHaveLength(1);
  });

  test("a full inbox refuses, and takes again once emptied", () => {
    const inbox = inboxOf(createHandoverShared(1, [-1]), 0);
    for (let i = 0; i < INBOX_CAPACITY; i++) expect(inbox.put({ listenId: 1, clientFd: i, backendFd: i + 1, flags: 0 })).toBe(true);
    expect(inbox.put({ listenId: 1, clientFd: 999, backendFd: 1000, flags: 0 })).toBe(false);
    const taken = inbox.takeAll();
    expect(taken).toHaveLength(INBOX_CAPACITY);
    expect(taken.at(-1)?.clientFd).toBe(INBOX_CAPACITY - 1);
    expect(inbox.put({ listenId: 1, clientFd: 999, backendFd: 1000, flags: 0 })).toBe(true);
  });
});

describe("where connections go", () => {
  const loads = (l: Record<number, number>) => (thread: number) => l[thread] ?? 0;
  const { saturatedLoad, spareLoad } = DEFAULT_HANDOVER_LIMITS;

  test("a saturated thread hands to the least loaded other thread of the port with room", () => {
    expect(handoverTarget(0, [0, 1, 2], loads({ 0: 0.99, 1: 0.4, 2: 0.1 }))).toBe(2);
    // Any thread of the port, not only the one that opened it.
    expect(handoverTarget(2, [0, 1, 2], loads({ 0: 0.3, 1: 0.45, 2: 1 }))).toBe(0);
  });

  test("a thread below saturation keeps its connections, however idle the others", () => {
    expect(handoverTarget(1, [0, 1], loads({ 0: 0, 1: saturatedLoad }))).toBeUndefined();
    expect(handoverTarget(0, [0, 1], loads({ 0: 0.5, 1: 0 }))).toBeUndefined();
  });

  test("with no other thread below the spare load, nothing moves (it would only move the saturation)", () => {
    expect(handoverTarget(0, [0, 1], loads({ 0: 1, 1: spareLoad }))).toBeUndefined();
    expect(handoverTarget(0, [0, 1, 2], loads({ 0: 1, 1: 0.8, 2: 0.95 }))).toBeUndefined();
  });

  test("a port served by one thread (ClientIP affinity) never moves", () => {
    expect(handoverTarget(0, [0], loads({ 0: 1 }))).toBeUndefined();
  });

  test("limits can be given", () => {
    expect(handoverTarget(0, [0, 1], loads({ 0: 0.2, 1: 0.9 }), { saturatedLoad: 0.1, spareLoad: 1 })).toBe(1);
  });
});

describe("where a new connection goes", () => {
  const counts = (c: number[]) => (slot: number) => c[slot] ?? 0;

  test("to the thread with the fewest, when it has fewer than the one that accepted it", () => {
    expect(acceptTarget(0, 2, counts([3, 1]))).toBe(1);
    expect(acceptTarget(1, 3, counts([5, 4, 2]))).toBe(2);
  });

  test("the accepting thread keeps it on a tie or when it has the fewest", () => {
    expect(acceptTarget(0, 2, counts([2, 2]))).toBe(0);
    expect(acceptTarget(1, 2, counts([3, 1]))).toBe(1);
  });
});
