/**
 * A string-keyed map split into shards, so that freezing a read-only view costs one array copy and
 * a later write copies only the shard it touches. This is what makes taking a snapshot after every
 * watch event cheap on a cluster with tens of thousands of service ports.
 */
const DEFAULT_SHARDS = 256;

function hash(key: string): number {
  // FNV-1a over UTF-16 code units; only spread matters here.
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

export class CowMap<V> {
  private shards: Map<string, V>[];
  /** owned[i]: shard i is not referenced by any frozen view, so it may be written in place. */
  private owned: boolean[];
  private count = 0;
  private frozen: FrozenMap<V> | undefined;

  constructor(private readonly shardCount = DEFAULT_SHARDS) {
    this.shards = Array.from({ length: shardCount }, () => new Map<string, V>());
    this.owned = new Array<boolean>(shardCount).fill(true);
  }

  get size(): number {
    return this.count;
  }

  get(key: string): V | undefined {
    return this.shards[hash(key) % this.shardCount]!.get(key);
  }

  has(key: string): boolean {
    return this.shards[hash(key) % this.shardCount]!.has(key);
  }

  private writable(i: number): Map<string, V> {
    if (!this.owned[i]) {
      this.shards[i] = new Map(this.shards[i]);
      this.owned[i] = true;
    }
    return this.shards[i]!;
  }

  set(key: string, value: V): void {
    const i = hash(key) % this.shardCount;
    const shard = this.writable(i);
    const before = shard.size;
    shard.set(key, value);
    this.count += shard.size - before;
    this.frozen = undefined;
  }

  delete(key: string): boolean {
    const i = hash(key) % this.shardCount;
    if (!this.shards[i]!.has(key)) return false;
    this.writable(i).delete(key);
    this.count--;
    this.frozen = undefined;
    return true;
  }

  /** An immutable view of the current contents; later writes do not show through it. */
  freeze(): ReadonlyMap<string, V> {
    if (!this.frozen) {
      this.frozen = new FrozenMap(this.shards.slice(), this.count);
      this.owned.fill(false);
    }
    return this.frozen;
  }
}

class FrozenMap<V> implements ReadonlyMap<string, V> {
  constructor(
    private readonly shards: readonly ReadonlyMap<string, V>[],
    readonly size: number,
  ) {}

  get(key: string): V | undefined {
    return this.shards[hash(key) % this.shards.length]!.get(key);
  }

  has(key: string): boolean {
    return this.shards[hash(key) % this.shards.length]!.has(key);
  }

  forEach(fn: (value: V, key: string, map: ReadonlyMap<string, V>) => void, thisArg?: unknown): void {
    for (const shard of this.shards) for (const [k, v] of shard) fn.call(thisArg, v, k, this);
  }

  *entries(): MapIterator<[string, V]> {
    for (const shard of this.shards) yield* shard.entries();
  }

  *keys(): MapIterator<string> {
    for (const shard of this.shards) yield* shard.keys();
  }

  *values(): MapIterator<V> {
    for (const shard of this.shards) yield* shard.values();
  }

  [Symbol.iterator](): MapIterator<[string, V]> {
    return this.entries();
  }
}
