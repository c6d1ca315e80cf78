/**
 * klog-style logging: `I1126 15:04:05.123456    4242 kproxy] message key="value"` on stderr, or one JSON
 * object per line with `logging.format: json`. Verbosity works like `--v`: a message at level N is
 * written when N <= the configured verbosity.
 */
export type LogFormat = "text" | "json";
export type Fields = Readonly<Record<string, unknown>>;

export interface Logger {
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  /** Detail written only at verbosity >= level. */
  debug(level: number, msg: string, fields?: Fields): void;
  enabled(level: number): boolean;
  /** A logger that adds `fields` to every line. */
  with(fields: Fields): Logger;
}

export interface LoggerOptions {
  readonly format?: LogFormat;
  readonly verbosity?: number;
  readonly write?: (line: string) => void;
  readonly now?: () => Date;
}

type Severity = "I" | "W" | "E";

function pad(n: number, width = 2): string {
  return String(n).padStart(width, "0");
}

function klogHeader(sev: Severity, at: Date): string {
  const micro = pad(at.getUTCMilliseconds(), 3) + "000";
  return `${sev}${pad(at.getUTCMonth() + 1)}${pad(at.getUTCDate())} ${pad(at.getUTCHours())}:${pad(at.getUTCMinutes())}:${pad(at.getUTCSeconds())}.${micro} ${String(process.pid).padStart(7)} kproxy]`;
}

/** JSON that never throws: bigints become strings and cycles "[Circular]", so logging in a catch block is safe. */
function safeStringify(value: unknown): string {
  const seen = new WeakSet<object>();
  return JSON.stringify(value, (_key, v: unknown) => {
    if (typeof v === "bigint") return v.toString();
    if (typeof v === "object" && v !== null) {
      if (seen.has(v)) return "[Circular]";
      seen.add(v);
    }
    return v;
  });
}

function formatValue(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (value instanceof Error) return JSON.stringify(value.message);
  if (typeof value === "number" || typeof value === "boolean" || value === null || value === undefined) return String(value);
  return safeStringify(value);
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const format = options.format ?? "text";
  const verbosity = options.verbosity ?? 0;
  const write = options.write ?? ((line: string) => process.stderr.write(line + "\n"));
  const now = options.now ?? (() => new Date());

  function make(base: Fields): Logger {
    function emit(sev: Severity, level: number, msg: string, fields?: Fields): void {
      const all = fields ? { ...base, ...fields } : base;
      const at = now();
      if (format === "json") {
        const record: Record<string, unknown> = { ts: at.getTime() / 1000, v: level, msg };
        if (sev === "E") record["err"] = true;
        if (sev === "W") record["warning"] = true;
        for (const [k, v] of Object.entries(all)) record[k] = v instanceof Error ? v.message : v;
        write(safeStringify(record));
        return;
      }
      let line = `${klogHeader(sev, at)} ${JSON.stringify(msg)}`;
      for (const [k, v] of Object.entries(all)) line += ` ${k}=${formatValue(v)}`;
      write(line);
    }
    return {
      info: (msg, fields) => emit("I", 0, msg, fields),
      warn: (msg, fields) => emit("W", 0, msg, fields),
      error: (msg, fields) => emit("E", 0, msg, fields),
      debug: (level, msg, fields) => {
        if (level <= verbosity) emit("I", level, msg, fields);
      },
      enabled: (level) => level <= verbosity,
      with: (fields) => make({ ...base, ...fields }),
    };
  }
  return make({});
}

/** A logger that keeps its lines, for tests. */
export function memoryLogger(verbosity = 10): Logger & { readonly lines: string[] } {
  const lines: string[] = [];
  const logger = createLogger({ format: "json", verbosity, write: (l) => lines.push(l) });
  return Object.assign(logger, { lines });
}

export const silentLogger: Logger = createLogger({ write: () => {} });
