import { describe, expect, test } from "bun:test";
import { CowMap } from "../../src/model/cow-map.ts";

describe("CowMap", () => {
  test("frozen views keep their contents while the map changes", () => {
    const m = new CowMap<number>(4);
    for (let i = 0; i < 100; i++) m.set(`k${i}`, i);
    const a = m.freeze();
    m.set("k1", -1);
    m.delete("k2");
    m.set("new", 7);
    const b = m.freeze();
    expect(a.size).toBe(100);
    expect(a.get("k1")).toBe(1);
    expect(a.has("k2")).toBe(true);
    expect(a.has("new")).toBe(false);
    expect(b.size).toBe(100);
    expect(b.get("k1")).toBe(-1);
    expect(b.has("k2")).toBe(false);
    expect([...a.keys()].length).toBe(100);
    expect(new Map(b).get("new")).toBe(7);
    let n = 0;
    b.forEach(() => n++);
    expect(n).toBe(100);
  });

  test("freezing twice without writes returns the same view; size tracks overwrites", () => {
    const m = new CowMap<string>();
    m.set("a", "1");
    m.set("a", "2");
    expect(m.size).toBe(1);
    expect(m.freeze()).toBe(m.freeze());
    expect(m.delete("missing")).toBe(false);
    expect([...m.freeze().values()]).toEqual(["2"]);
  });
});
