/**
 * A map from integer keys (gfns) to values in which a value covers a range and adjacent
 * ranges with equal values merge: one entry per range, never one per key (as the kernel
 * discussion's maple tree does for shareability). Keys not covered have the default value,
 * which is never stored. get() is a binary search; set() touches only the entries it
 * overlaps plus its two neighbours.
 *
 * Keys are numbers: a gfn is below 2^52 (a u64 address shifted by the page shift), exactly
 * representable in a double, which keeps the arrays compact and the comparisons fast.
 */
import { floorIndex } from './search.js';

export interface RangeEntry<V> {
  start: number;
  /** exclusive */
  end: number;
  value: V;
}

export class RangeMap<V> {
  #starts: number[] = [];
  #ends: number[] = [];
  #values: V[] = [];

  constructor(
    readonly defaultValue: V,
    private readonly equal: (a: V, b: V) => boolean = Object.is,
  ) {}

  /** Number of stored (non-default, merged) ranges. */
  get count(): number {
    return this.#starts.length;
  }

  /** Index of the last entry with start <= key, or -1. */
  #floor(key: number): number {
    return floorIndex(this.#starts, key);
  }

  get(key: number): V {
    const i = this.#floor(key);
    return i >= 0 && key < this.#ends[i]! ? this.#values[i]! : this.defaultValue;
  }

  /**
   * Sets [start, end) to `value`. Returns the sub-ranges whose value changed, with their old
   * values, in key order (empty when nothing changed).
   */
  set(start: number, end: number, value: V): RangeEntry<V>[] {
    if (!(end > start)) return [];
    const changed: RangeEntry<V>[] = [];
    const starts = this.#starts;
    const ends = this.#ends;
    const values = this.#values;
    // First entry that ends after `start` (it may begin before `start`).
    let i = this.#floor(start);
    if (i < 0 || ends[i]! <= start) i++;
    // Collect overlapped entries [i, j).
    let j = i;
    const keep: RangeEntry<V>[] = [];
    let cursor = start;
    while (j < starts.length && starts[j]! < end) {
      const s = starts[j]!;
      const e = ends[j]!;
      const v = values[j]!;
      if (s > cursor && !this.equal(this.defaultValue, value)) changed.push({ start: cursor, end: s, value: this.defaultValue });
      const os = Math.max(s, start);
      const oe = Math.min(e, end);
      if (!this.equal(v, value)) changed.push({ start: os, end: oe, value: v });
      if (s < start) keep.push({ start: s, end: start, value: v });
      if (e > end) keep.push({ start: end, end: e, value: v });
      cursor = oe;
      j++;
    }
    if (cursor < end && !this.equal(this.defaultValue, value)) changed.push({ start: cursor, end, value: this.defaultValue });
    if (changed.length === 0) return changed;

    // Replacement entries for [i, j): the kept head, the new range, the kept tail.
    const repl: RangeEntry<V>[] = [];
    const head = keep.find((k) => k.end === start);
    const tail = keep.find((k) => k.start === end);
    if (head) repl.push(head);
    if (!this.equal(value, this.defaultValue)) repl.push({ start, end, value });
    if (tail) repl.push(tail);
    // Merge with the neighbours outside [i, j) and within repl.
    let lo = i;
    let hi = j;
    if (lo > 0 && repl.length && ends[lo - 1] === repl[0]!.start && this.equal(values[lo - 1]!, repl[0]!.value)) {
      lo--;
      repl[0] = { start: starts[lo]!, end: repl[0]!.end, value: repl[0]!.value };
    }
    if (hi < starts.length && repl.length && starts[hi] === repl[repl.length - 1]!.end && this.equal(values[hi]!, repl[repl.length - 1]!.value)) {
      const last = repl[repl.length - 1]!;
      repl[repl.length - 1] = { start: last.start, end: ends[hi]!, value: last.value };
      hi++;
    }
    const merged: RangeEntry<V>[] = [];
    for (const r of repl) {
      const prev = merged[merged.length - 1];
      if (prev && prev.end === r.start && this.equal(prev.value, r.value)) prev.end = r.end;
      else merged.push({ ...r });
    }
    starts.splice(lo, hi - lo, ...merged.map((r) => r.start));
    ends.splice(lo, hi - lo, ...merged.map((r) => r.end));
    values.splice(lo, hi - lo, ...merged.map((r) => r.value));
    return changed;
  }

  /** Stored ranges overlapping [start, end) (all when omitted), clamped, in key order. */
  *entries(start = -Infinity, end = Infinity): IterableIterator<RangeEntry<V>> {
    let i = this.#floor(start);
    if (i < 0 || this.#ends[i]! <= start) i++;
    for (; i < this.#starts.length && this.#starts[i]! < end; i++) {
      yield { start: Math.max(this.#starts[i]!, start), end: Math.min(this.#ends[i]!, end), value: this.#values[i]! };
    }
  }

  clear(): void {
    this.#starts = [];
    this.#ends = [];
    this.#values = [];
  }
}
