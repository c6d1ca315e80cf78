import { describe, expect, test } from "bun:test";
import { NdjsonDecoder, NdjsonError } from "../../src/kube/ndjson.ts";

const values = [
  { type: "ADDED", object: { metadata: { name: "a", labels: { zone: "zürich-ü" } } } },
  { type: "BOOKMARK", object: { metadata: { resourceVersion: "12" } } },
  { type: "MODIFIED", object: { note: "emoji 🚀 and 中文", n: 3 } },
];
const text = values.map((v) => JSON.stringify(v)).join("\n") + "\n";
const bytes = new TextEncoder().encode(text);

describe("NdjsonDecoder", () => {
  test("decodes the same values at every single split position of the byte stream", () => {
    for (let cut = 0; cut <= bytes.length; cut++) {
      const d = new NdjsonDecoder();
      const out = [...d.push(bytes.subarray(0, cut)), ...d.push(bytes.subarray(cut)), ...d.end()];
      expect(out).toEqual(values);
    }
  });

  test("decodes the same values at every pair of split positions", () => {
    for (let a = 0; a <= bytes.length; a += 3) {
      for (let b = a; b <= bytes.length; b += 5) {
        const d = new NdjsonDecoder();
        const out = [...d.push(bytes.subarray(0, a)), ...d.push(bytes.subarray(a, b)), ...d.push(bytes.subarray(b)), ...d.end()];
        expect(out).toEqual(values);
      }
    }
  });

  test("one byte at a time", () => {
    const d = new NdjsonDecoder();
    const out: unknown[] = [];
    for (const byte of bytes) out.push(...d.push(Uint8Array.of(byte)));
    expect(out).toEqual(values);
    expect(d.pendingLength).toBe(0);
  });

  test("a value is emitted only once its newline arrives; a final line without newline counts at end", () => {
    const d = new NdjsonDecoder();
    expect(d.push('{"a":1}\n{"b"')).toEqual([{ a: 1 }]);
    expect(d.push(":2}")).toEqual([]);
    expect(d.end()).toEqual([{ b: 2 }]);
  });

  test("blank lines and CRLF are tolerated", () => {
    const d = new NdjsonDecoder();
    expect(d.push('\n{"a":1}\r\n\n{"b":2}\n')).toEqual([{ a: 1 }, { b: 2 }]);
  });

  test("a malformed line is an NdjsonError", () => {
    const d = new NdjsonDecoder();
    expect(() => d.push('{"a":1}\n{nope}\n')).toThrow(NdjsonError);
  });
});
