/**
 * Non-overlapping [start, end) intervals over integer keys, sorted by start: the index behind
 * memslot lookups by gfn and by file page. Lookups are binary searches (O(log n)); insert and
 * remove shift one array (O(n) moves, a memmove in practice, at most 32,764 slots).
 */
import { floorIndex } from './search.js';

export class IntervalIndex<T> {
  #starts: number[] = [];
  #ends: number[] = [];
  #items: T[] = [];
  #startOf = new Map<T, number>();

  get count(): number {
    return this.#items.length;
  }

  /** Index of the last entry with start <= key, or -1. */
  #floor(key: number): number {
    return floorIndex(this.#starts, key);
  }

  /** Inserts [start, end) -> item; the caller guarantees it overlaps nothing. */
  insert(start: number, end: number, item: T): void {
    const i = this.#floor(start) + 1;
    this.#starts.splice(i, 0, start);
    this.#ends.splice(i, 0, end);
    this.#items.splice(i, 0, item);
    this.#startOf.set(item, start);
  }

  remove(item: T): boolean {
    const start = this.#startOf.get(item);
    if (start === undefined) return false;
    const i = this.#floor(start);
    this.#starts.splice(i, 1);
    this.#ends.splice(i, 1);
    this.#items.splice(i, 1);
    this.#startOf.delete(item);
    return true;
  }

  containing(key: number): T | undefined {
    const i = this.#floor(key);
    return i >= 0 && key < this.#ends[i]! ? this.#items[i] : undefined;
  }

  /** The first interval (by start) overlapping [start, end) that passes `filter`. */
  firstOverlap(start: number, end: number, filter?: (item: T) => boolean): T | undefined {
    for (const item of this.overlapping(start, end)) if (!filter || filter(item)) return item;
    return undefined;
  }

  *overlapping(start: number, end: number): IterableIterator<T> {
    let i = this.#floor(start);
    if (i < 0 || this.#ends[i]! <= start) i++;
    for (; i < this.#starts.length && this.#starts[i]! < end; i++) yield this.#items[i]!;
  }

  items(): IterableIterator<T> {
    return this.#items[Symbol.iterator]();
  }
}
