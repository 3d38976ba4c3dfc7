/**
 * Non-overlapping [start, end) intervals over integer keys (gfns, file pages), each holding an
 * item: the index behind memslot lookups by guest frame and by file page.
 *
 * Ordered queries (overlaps, in order) use a B+ tree keyed by start: insert and remove are
 * O(log n) in any order. Point lookups (which interval holds this key: memslots.find and
 * translate) use a hash of aligned regions on top: 512 keys (2 MiB of 4 KiB pages), 2^18 (1 GiB)
 * and 2^27 (512 GiB). An interval claims the largest aligned regions inside it and, at the
 * finest level, the regions it touches at its edges, so a lookup costs one to three hash
 * probes whatever the number of intervals and their layout; only a 2 MiB region that several
 * intervals share falls back to the tree. An interval costs a few regions (a 1 TiB one: one),
 * never one per page.
 */
import { BTree } from './btree.js';

interface Entry<T> {
  start: number;
  end: number;
  item: T;
}

/** A region several intervals share: how many. */
class Shared {
  constructor(public count: number) {}
}

const LEVELS = [9, 18, 27].map((b) => 2 ** b); // region sizes in keys

/** Open addressing over region numbers (non-negative integers below 2^53). */
class RegionTable<T> {
  #keys = new Float64Array(16).fill(-1);
  #values: (Entry<T> | Shared | undefined)[] = new Array(16);
  #used = 0; // keys not -1 (live and deleted)
  #live = 0;

  static readonly #DELETED = -2;

  #slot(key: number): number {
    const mask = this.#keys.length - 1;
    const lo = key % 4294967296;
    const hi = (key - lo) / 4294967296;
    let h = Math.imul((lo | 0) ^ Math.imul(hi | 0, 0x85ebca6b), 0x9e3779b1) >>> 0;
    h = (h ^ (h >>> 15)) & mask;
    return h;
  }

  get(key: number): Entry<T> | Shared | undefined {
    const keys = this.#keys;
    const mask = keys.length - 1;
    for (let i = this.#slot(key); ; i = (i + 1) & mask) {
      const k = keys[i]!;
      if (k === key) return this.#values[i];
      if (k === -1) return undefined;
    }
  }

  set(key: number, value: Entry<T> | Shared): void {
    const keys = this.#keys;
    const mask = keys.length - 1;
    let free = -1;
    for (let i = this.#slot(key); ; i = (i + 1) & mask) {
      const k = keys[i]!;
      if (k === key) {
        this.#values[i] = value;
        return;
      }
      if (k === RegionTable.#DELETED && free < 0) free = i;
      if (k === -1) {
        if (free < 0) {
          free = i;
          this.#used++;
        }
        break;
      }
    }
    keys[free] = key;
    this.#values[free] = value;
    this.#live++;
    if (this.#used * 2 > keys.length) this.#rehash(this.#live * 4 > keys.length ? keys.length * 2 : keys.length);
  }

  delete(key: number): void {
    const keys = this.#keys;
    const mask = keys.length - 1;
    for (let i = this.#slot(key); ; i = (i + 1) & mask) {
      const k = keys[i]!;
      if (k === key) {
        keys[i] = RegionTable.#DELETED;
        this.#values[i] = undefined;
        this.#live--;
        if (keys.length > 16 && this.#live * 8 < keys.length) this.#rehash(keys.length / 2);
        return;
      }
      if (k === -1) return;
    }
  }

  #rehash(size: number): void {
    const oldKeys = this.#keys;
    const oldValues = this.#values;
    this.#keys = new Float64Array(size).fill(-1);
    this.#values = new Array(size);
    this.#used = 0;
    this.#live = 0;
    for (let i = 0; i < oldKeys.length; i++) if (oldKeys[i]! >= 0) this.set(oldKeys[i]!, oldValues[i]!);
  }

  /** Bytes held (for the benchmark's bytes-per-interval figure). */
  get bytes(): number {
    return this.#keys.length * 16;
  }
}

export class IntervalIndex<T> {
  #tree = new BTree<Entry<T>>();
  #startOf = new Map<T, number>();
  #levels = LEVELS.map(() => new RegionTable<T>());

  get count(): number {
    return this.#tree.size;
  }

  /** Inserts [start, end) -> item; the caller guarantees it overlaps nothing. */
  insert(start: number, end: number, item: T): void {
    const e: Entry<T> = { start, end, item };
    this.#tree.set(start, e);
    this.#startOf.set(item, start);
    this.#regions(start, end, (level, r) => {
      const table = this.#levels[level]!;
      const v = table.get(r);
      if (v === undefined) table.set(r, e);
      else if (v instanceof Shared) v.count++;
      else table.set(r, new Shared(2));
    });
  }

  remove(item: T): boolean {
    const start = this.#startOf.get(item);
    if (start === undefined) return false;
    const e = this.#tree.get(start)!;
    this.#tree.delete(start);
    this.#startOf.delete(item);
    this.#regions(e.start, e.end, (level, r) => {
      const table = this.#levels[level]!;
      const v = table.get(r);
      if (!(v instanceof Shared)) return table.delete(r);
      if (--v.count > 1) return;
      // One interval left in the region: it holds the region alone again.
      const size = LEVELS[level]!;
      const left = this.#firstOverlapEntry(r * size, (r + 1) * size);
      if (left) table.set(r, left);
      else table.delete(r);
    });
    return true;
  }

  /**
   * The regions [start, end) claims: at each level, the aligned regions inside it that no
   * coarser region of it holds; at the finest, also the regions it only touches.
   */
  #regions(start: number, end: number, visit: (level: number, region: number) => void): void {
    // What the coarser levels claimed: one contiguous range of keys, [lo, hi).
    let lo = 0;
    let hi = 0;
    for (let level = LEVELS.length - 1; level >= 0; level--) {
      const size = LEVELS[level]!;
      const first = level === 0 ? Math.floor(start / size) : Math.ceil(start / size);
      const last = level === 0 ? Math.ceil(end / size) : Math.floor(end / size);
      if (first >= last) continue;
      for (let r = first; r < last; r++) {
        if (r * size >= lo && (r + 1) * size <= hi) r = hi / size - 1; // held by a coarser region
        else visit(level, r);
      }
      lo = first * size;
      hi = last * size;
    }
  }

  #firstOverlapEntry(start: number, end: number): Entry<T> | undefined {
    const f = this.#tree.floor(start);
    if (f && f[1].end > start) return f[1];
    const c = this.#tree.ceil(start);
    return c && c[0] < end ? c[1] : undefined;
  }

  /** The item whose interval holds `key`. */
  containing(key: number): T | undefined {
    const levels = this.#levels;
    const v = levels[0]!.get(Math.floor(key / 512));
    if (v !== undefined) {
      if (!(v instanceof Shared)) return v.start <= key && key < v.end ? v.item : undefined;
      const f = this.#tree.floor(key);
      return f && key < f[1].end ? f[1].item : undefined;
    }
    for (let level = 1; level < levels.length; level++) {
      const w = levels[level]!.get(Math.floor(key / LEVELS[level]!));
      if (w !== undefined) return (w as Entry<T>).item;
    }
    return undefined;
  }

  /** The first interval (by start) overlapping [start, end) that passes `filter`. */
  firstOverlap(start: number, end: number, filter?: (item: T) => boolean): T | undefined {
    for (const item of this.overlapping(start, end)) if (!filter || filter(item)) return item;
    return undefined;
  }

  *overlapping(start: number, end: number): IterableIterator<T> {
    const f = this.#tree.floor(start);
    const from = f && f[1].end > start ? f[0] : start;
    for (const [s, e] of this.#tree.entries(from)) {
      if (s >= end) return;
      if (e.end > start) yield e.item;
    }
  }

  *items(): IterableIterator<T> {
    for (const [, e] of this.#tree.entries()) yield e.item;
  }

  /** Approximate bytes held by the index (the benchmark's per-interval figure). */
  get bytes(): number {
    return this.#tree.size * 96 + this.#levels.reduce((s, t) => s + t.bytes, 0);
  }
}
