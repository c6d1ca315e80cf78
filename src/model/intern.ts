/**
 * One shared copy per distinct small string (namespaces, node names, zones, port names): API JSON
 * gives every object its own copies, and with tens of thousands of endpoints the duplicates would
 * be most of the model's memory.
 */
export class Interner<T> {
  private readonly values = new Map<string, T>();
  constructor(private readonly limit: number) {}

  get(key: string, make: () => T): T {
    let v = this.values.get(key);
    if (v === undefined) {
      v = make();
      // Bounded: a stream of unique names must not grow this forever.
      if (this.values.size >= this.limit) this.values.clear();
      this.values.set(key, v);
    }
    return v;
  }
}

const strings = new Interner<string>(100000);

export function intern(s: string | null | undefined): string {
  return s ? strings.get(s, () => s) : "";
}
