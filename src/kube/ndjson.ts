/**
 * Incremental decoder for newline-delimited JSON, the framing of a watch stream. Bytes arrive in
 * chunks cut anywhere (inside a line, inside a multi-byte character), so partial input is kept
 * until its newline arrives.
 */
export class NdjsonError extends Error {
  override readonly name = "NdjsonError";
  constructor(
    message: string,
    readonly line: string,
  ) {
    super(message);
  }
}

export class NdjsonDecoder {
  readonly #text = new TextDecoder("utf-8", { fatal: false });
  #pending = "";

  /** Feeds one chunk; returns the values of every line it completed. Throws NdjsonError on a bad line. */
  push(chunk: Uint8Array | string): unknown[] {
    const text = typeof chunk === "string" ? chunk : this.#text.decode(chunk, { stream: true });
    if (text.length === 0) return [];
    const out: unknown[] = [];
    let start = 0;
    let newline = text.indexOf("\n");
    if (newline < 0) {
      this.#pending += text;
      return out;
    }
    // The first completed line may begin in earlier chunks.
    this.#emit(this.#pending + text.slice(0, newline), out);
    this.#pending = "";
    start = newline + 1;
    while ((newline = text.indexOf("\n", start)) >= 0) {
      this.#emit(text.slice(start, newline), out);
      start = newline + 1;
    }
    this.#pending = text.slice(start);
    return out;
  }

  /** Ends the stream: a last line without a newline still counts. */
  end(): unknown[] {
    const out: unknown[] = [];
    const rest = this.#pending + this.#text.decode();
    this.#pending = "";
    this.#emit(rest, out);
    return out;
  }

  /** Bytes (as characters) held back waiting for a newline. */
  get pendingLength(): number {
    return this.#pending.length;
  }

  #emit(line: string, out: unknown[]): void {
    const trimmed = line.endsWith("\r") ? line.slice(0, -1) : line;
    if (trimmed.trim().length === 0) return;
    try {
      out.push(JSON.parse(trimmed));
    } catch (err) {
      const preview = trimmed.length > 200 ? trimmed.slice(0, 200) + "…" : trimmed;
      throw new NdjsonError(`invalid JSON line in watch stream: ${(err as Error).message}`, preview);
    }
  }
}
