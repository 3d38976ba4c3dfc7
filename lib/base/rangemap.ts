/**
 * A map from integer keys (gfns) to values in which a value covers a range and adjacent
 * ranges with equal values merge: one entry per range, never one per key (as the kernel
 * discussion's maple tree does for shareability). Keys not covered have the default value,
 * which is never stored. The ranges live in a B+ tree keyed by start: get() is O(log n), and
 * set() O(log n + the ranges it replaces), in any order of keys (a guest converting pages as it
 * pleases is the normal case).
 *
 * Keys are numbers: a gfn is below 2^52 (a u64 address shifted by the page shift), exactly
 * representable in a double.
 */
import { BTree } from './btree.js';

/** A range of keys with one value: [start, end). */
export interface RangeEntry<V> {
  /** First key. */
  start: number;
  /** exclusive */
  end: number;
  /** The value of every key in the range. */
  value: V;
}

interface Stored<V> {
  end: number;
  value: V;
}

/**
 * Integer keys (gfns) to values, stored as merged ranges: adjacent ranges with equal values
 * are one entry, and keys not covered have `defaultValue`, which is never stored. get() is
 * O(log n); set() is O(log n + the ranges it replaces).
 */
export class RangeMap<V> {
  #tree = new BTree<Stored<V>>();

  /**
   * @param defaultValue The value of every key not set to another.
   * @param equal Whether two values are equal, so that their ranges merge (default Object.is).
   */
  constructor(
    /** The value of every key not set to another (never stored). */
    readonly defaultValue: V,
    private readonly equal: (a: V, b: V) => boolean = Object.is,
  ) {}

  /** Number of stored (non-default, merged) ranges. */
  get count(): number {
    return this.#tree.size;
  }

  /** The value at `key` (`defaultValue` where no range covers it). */
  get(key: number): V {
    const f = this.#tree.floor(key);
    return f && key < f[1].end ? f[1].value : this.defaultValue;
  }

  /** Stored ranges overlapping [start, end) (whole, not clamped), in key order. */
  *#overlapping(start: number, end: number): IterableIterator<RangeEntry<V>> {
    const f = this.#tree.floor(start);
    const from = f && f[1].end > start ? f[0] : start;
    for (const [s, e] of this.#tree.entries(from)) {
      if (s >= end) return;
      yield { start: s, end: e.end, value: e.value };
    }
  }

  /**
   * Sets [start, end) to `value`. Returns the sub-ranges whose value changed, with their old
   * values, in key order (empty when nothing changed).
   */
  set(start: number, end: number, value: V): RangeEntry<V>[] {
    if (!(end > start)) return [];
    const isDefault = this.equal(value, this.defaultValue);
    const old = [...this.#overlapping(start, end)];
    const changed: RangeEntry<V>[] = [];
    let cursor = start;
    for (const o of old) {
      if (o.start > cursor && !isDefault) changed.push({ start: cursor, end: o.start, value: this.defaultValue });
      if (!this.equal(o.value, value)) changed.push({ start: Math.max(o.start, start), end: Math.min(o.end, end), value: o.value });
      cursor = Math.max(cursor, Math.min(o.end, end));
    }
    if (cursor < end && !isDefault) changed.push({ start: cursor, end, value: this.defaultValue });
    if (changed.length === 0) return changed;

    // Replace the overlapped ranges by their parts outside [start, end) and the new range,
    // merged with equal neighbours.
    const tree = this.#tree;
    for (const o of old) tree.delete(o.start);
    const head = old[0] && old[0].start < start ? old[0] : undefined;
    const tail = old.length && old[old.length - 1]!.end > end ? old[old.length - 1] : undefined;
    if (head) tree.set(head.start, { end: start, value: head.value });
    if (tail) tree.set(end, { end: tail.end, value: tail.value });
    if (!isDefault) {
      let s = start;
      let e = end;
      const left = tree.floor(start - 1);
      if (left && left[1].end === start && this.equal(left[1].value, value)) {
        s = left[0];
        tree.delete(left[0]);
      }
      const right = tree.get(end);
      if (right && this.equal(right.value, value)) {
        e = right.end;
        tree.delete(end);
      }
      tree.set(s, { end: e, value });
    }
    return changed;
  }

  /** Stored ranges overlapping [start, end) (all when omitted), clamped, in key order. */
  *entries(start = -Infinity, end = Infinity): IterableIterator<RangeEntry<V>> {
    for (const o of this.#overlapping(start, end)) yield { start: Math.max(o.start, start), end: Math.min(o.end, end), value: o.value };
  }

  /** Removes every range: every key has `defaultValue` again. */
  clear(): void {
    this.#tree.clear();
  }
}
