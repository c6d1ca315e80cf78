/**
 * What credential loading needs from the host: environment variables and file contents. Passed in
 * so tests can describe a pod or a node without touching the real filesystem.
 */
export interface HostFiles {
  /** Reads a whole file as UTF-8 text; rejects when it cannot be read. */
  readText(path: string): Promise<string>;
}

export type HostEnv = Readonly<Record<string, string | undefined>>;

export const realHostFiles: HostFiles = {
  readText: (path) => Bun.file(path).text(),
};

export function realHostEnv(): HostEnv {
  return process.env;
}
