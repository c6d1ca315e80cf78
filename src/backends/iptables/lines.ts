/**
 * Accumulates restore-input lines as text. A sync writes a few hundred thousand short lines; growing
 * strings in bounded chunks and joining the chunks once is markedly cheaper here than one array
 * entry per line and a join over all of them.
 */
const LINES_PER_CHUNK = 1024;

export class LineBuffer {
  private readonly chunks: string[] = [];
  private current = "";
  private inCurrent = 0;
  /** Lines written so far. */
  lines = 0;

  add(line: string): void {
    this.current += line + "\n";
    this.lines++;
    if (++this.inCurrent === LINES_PER_CHUNK) {
      this.chunks.push(this.current);
      this.current = "";
      this.inCurrent = 0;
    }
  }

  /** Everything written, each line ending in a newline. */
  text(): string {
    if (this.chunks.length === 0) return this.current;
    return this.chunks.join("") + this.current;
  }
}
