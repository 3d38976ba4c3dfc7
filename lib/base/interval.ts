/**
 * Non-overlapping [start, end) intervals over integer keys (gfns, file pages), each holding an
 * item: the index behind memslot lookups by guest frame and by file page.
 *
 * Ordered queries (overlaps, in order) use a B+ tree keyed by start: insert and remove are
 * O(log n) in any order. Point lookups (which interval holds this key: memslots.find and
 * translate) use hashes of aligned regions on top: 512 keys (2 MiB of 4 KiB pages), 2^18 (1 GiB)
 * and 2^27 (512 GiB). An interval claims the largest aligned regions inside it and, at the
 * finest level, the regions it touches at its edges, so a lookup costs one to three hash
 * probes whatever the number of intervals and their layout; only a 2 MiB region that several
 * intervals share falls back to the tree. An interval costs a few regions (a 1 TiB one: one),
 * never one per page.
 *
 * The lookup path touches typed arrays only, until the item itself: a region hash (region
 * number -> the interval's slot number), the intervals' bounds by slot number, the items by
 * slot number. With 32,764 intervals that is about a megabyte, which stays in the cache where
 * a path through an object per interval would not (a lookup spread over every memslot costs
 * what it costs over a few).
 *
 * Insert, remove and firstOverlap allocate nothing but what the tables grow by: the tree maps
 * starts to slot numbers, and regions are walked in loops, not through callbacks. (They are
 * on the path of every memslot add and delete; under emulation every allocation shows.)
 */
import { BTree } from './btree.js';

/** No region here (RegionTable.get). Values <= -2 are a region that -value intervals share. */
const NONE = -1;
const EMPTY_KEY = -1;
const DELETED_KEY = -2;
const SHIFT = [9, 18, 27]; // log2 of the region sizes, finest first
const REGION = SHIFT.map((s) => 2 ** s); // region sizes in keys

/**
 * floor(x / 2^shift) for an integer 0 <= x < 2^53: a shift where x fits in 31 bits (guest
 * frames below 8 TiB), else a division. Under emulation a double division, and the rounding
 * after it, are library calls each (50-130 ns, an integer operation about 20); the index
 * computes several of these per memslot add and delete.
 */
function floorShift(x: number, shift: number): number {
  return x <= 0x7fffffff ? x >> shift : Math.floor(x / (1 << shift));
}

/** ceil(x / 2^shift), as floorShift(). */
function ceilShift(x: number, shift: number): number {
  return floorShift(x + ((1 << shift) - 1), shift);
}

/**
 * Open addressing (linear probing, at most a quarter full) from region numbers (non-negative
 * integers below 2^53) to a value: an interval's slot number, or minus the number of
 * intervals sharing the region. The hash mixes every bit (murmur3's finaliser), so that probe
 * lengths do not depend on the layout: Fibonacci hashing alone gave one probe for regions
 * 1 apart but six on average for regions 128 apart (slots 256 MiB apart), and lookups on
 * such layouts took twice as long. Each entry also holds where in the region the owning
 * interval starts and ends (clamped to the region), so that a lookup reads one 16-byte entry
 * and nothing else of the index. Entry i: key (f64 at byte 16i), value (i32 at 16i + 8),
 * start and end within the region (u16 at 16i + 12 and 16i + 14; used at the finest level,
 * whose regions are 512 keys).
 */
class RegionTable {
  keys!: Float64Array;
  values!: Int32Array;
  offsets!: Uint16Array;
  /** 32 - log2(capacity): the hash is the top bits of a multiplicative hash. */
  shift = 28;
  used = 0; // keys that are not EMPTY (live and deleted)
  live = 0;

  constructor(readonly size: number) {
    this.#allocate(16);
  }

  #allocate(capacity: number): void {
    const buffer = new ArrayBuffer(capacity * 16);
    this.keys = new Float64Array(buffer);
    this.values = new Int32Array(buffer);
    this.offsets = new Uint16Array(buffer);
    for (let i = 0; i < capacity; i++) this.keys[2 * i] = EMPTY_KEY;
    this.shift = 32 - Math.log2(capacity);
  }

  get capacity(): number {
    return this.keys.length >> 1;
  }

  #home(key: number): number {
    // The low 32 bits of an integer below 2^53 (ToUint32 is exact modulo 2^32), and the high
    // ones with a division only past 2^31 (a double remainder is an fmod call).
    const lo = key >>> 0;
    const hi = key > 0x7fffffff ? (key - lo) / 4294967296 : 0;
    let x = lo ^ Math.imul(hi, 0x85ebca6b);
    x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
    x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
    return (x ^ (x >>> 16)) >>> this.shift;
  }

  /** The position (entry index) of `key`, or -1. */
  find(key: number): number {
    const keys = this.keys;
    const mask = (keys.length >> 1) - 1;
    for (let i = this.#home(key); ; i = (i + 1) & mask) {
      const k = keys[2 * i]!;
      if (k === key) return i;
      if (k === EMPTY_KEY) return -1;
    }
  }

  get(key: number): number {
    const i = this.find(key);
    return i < 0 ? NONE : this.values[4 * i + 2]!;
  }

  /** Where `key` is (>= 0), or -1 - where it would go (the first tombstone or the empty entry ending the probe). */
  #probe(key: number): number {
    const keys = this.keys;
    const mask = (keys.length >> 1) - 1;
    let tomb = -1;
    for (let i = this.#home(key); ; i = (i + 1) & mask) {
      const k = keys[2 * i]!;
      if (k === key) return i;
      if (k === DELETED_KEY && tomb < 0) tomb = i;
      if (k === EMPTY_KEY) return -1 - (tomb < 0 ? i : tomb);
    }
  }

  #write(at: number, key: number, value: number, start: number, end: number): void {
    const base = key * this.size;
    this.keys[2 * at] = key;
    this.values[4 * at + 2] = value;
    this.offsets[8 * at + 6] = Math.max(0, Math.min(this.size, start - base)) & 0xffff;
    this.offsets[8 * at + 7] = Math.max(0, Math.min(this.size, end - base)) & 0xffff;
  }

  /** A new key at `at` (a place #probe gave); grows or cleans the table when it is half used. */
  #insertAt(at: number, key: number, value: number, start: number, end: number): void {
    if (this.keys[2 * at] === EMPTY_KEY) this.used++;
    this.#write(at, key, value, start, end);
    this.live++;
    const capacity = this.capacity;
    if (this.used * 4 > capacity) this.#rehash(this.live * 8 > capacity ? capacity * 2 : capacity);
  }

  /** Sets region `key` to `value`, owned by the interval [start, end) (in keys). */
  set(key: number, value: number, start: number, end: number): void {
    const p = this.#probe(key);
    if (p >= 0) this.#write(p, key, value, start, end);
    else this.#insertAt(-1 - p, key, value, start, end);
  }

  /**
   * One more interval [start, end) in region `key`: the region becomes `slot`'s when it was
   * free, else shared by one more (one probe sequence, where get() then set() take two).
   */
  claim(key: number, slot: number, start: number, end: number): void {
    const p = this.#probe(key);
    if (p < 0) return this.#insertAt(-1 - p, key, slot, start, end);
    const v = this.values[4 * p + 2]!;
    this.values[4 * p + 2] = v >= 0 ? -2 : v - 1;
  }

  delete(key: number): void {
    const i = this.find(key);
    if (i < 0) return;
    this.keys[2 * i] = DELETED_KEY;
    this.live--;
    const capacity = this.capacity;
    if (capacity > 16 && this.live * 16 < capacity) this.#rehash(capacity / 2);
  }

  #rehash(capacity: number): void {
    const { keys, values, offsets } = this;
    const old = keys.length >> 1;
    this.#allocate(capacity);
    this.used = 0;
    this.live = 0;
    for (let i = 0; i < old; i++) {
      const k = keys[2 * i]!;
      if (k < 0) continue;
      const base = k * this.size;
      this.set(k, values[4 * i + 2]!, base + offsets[8 * i + 6]!, base + offsets[8 * i + 7]!);
    }
  }

  /** Bytes held. */
  get bytes(): number {
    return this.keys.byteLength;
  }
}

export class IntervalIndex<T> {
  /** Interval start -> slot number: its place in #items and #bounds (reused after removal). */
  #tree = new BTree<number>();
  #items: (T | undefined)[] = [];
  /** [start, end) of the interval in each slot. */
  #bounds = new Float64Array(32);
  #free: number[] = [];
  #levels = REGION.map((size) => new RegionTable(size));

  get count(): number {
    return this.#tree.size;
  }

  /**
   * Inserts [start, end) -> item; the caller guarantees it overlaps nothing. Returns the
   * interval's slot number (for slotContaining(), itemAt(), startAt(); reused once removed).
   */
  insert(start: number, end: number, item: T): number {
    const slot = this.#free.length > 0 ? this.#free.pop()! : this.#items.length;
    if (slot === this.#items.length) this.#items.push(item);
    else this.#items[slot] = item;
    if (this.#bounds.length < 2 * (slot + 1)) {
      const grown = new Float64Array(this.#bounds.length * 2);
      grown.set(this.#bounds);
      this.#bounds = grown;
    }
    this.#bounds[2 * slot] = start;
    this.#bounds[2 * slot + 1] = end;
    this.#tree.set(start, slot);
    this.#walk(start, end, slot, true);
    return slot;
  }

  /**
   * Removes the interval that starts at `start`, if it holds `item` (the caller knows where
   * its items start: no map from items back to intervals to keep). Returns the slot number
   * it had, or -1.
   */
  remove(start: number, item: T): number {
    // One descent: deleted first, put back in the (unexpected) case that it held another item.
    const slot = this.#tree.delete(start);
    if (slot === undefined) return -1;
    if (this.#items[slot] !== item) {
      this.#tree.set(start, slot);
      return -1;
    }
    const end = this.#bounds[2 * slot + 1]!;
    this.#items[slot] = undefined;
    this.#free.push(slot);
    this.#walk(start, end, slot, false);
    return slot;
  }

  /**
   * Claims (`claim`) or releases the regions [start, end) holds: at each level, the aligned
   * regions inside it that no coarser region of it holds; at the finest, also the regions it
   * only touches. Released after the interval left the tree.
   */
  #walk(start: number, end: number, slot: number, claim: boolean): void {
    // What the coarser levels claimed: one contiguous range of keys, [lo, hi).
    let lo = 0;
    let hi = 0;
    for (let level = REGION.length - 1; level >= 0; level--) {
      const size = REGION[level]!;
      const shift = SHIFT[level]!;
      const first = level === 0 ? floorShift(start, shift) : ceilShift(start, shift);
      const last = level === 0 ? ceilShift(end, shift) : floorShift(end, shift);
      if (first >= last) continue;
      const table = this.#levels[level]!;
      for (let r = first; r < last; r++) {
        if (r * size >= lo && (r + 1) * size <= hi) r = floorShift(hi, shift) - 1; // held by a coarser region
        else if (claim) table.claim(r, slot, start, end);
        else this.#release(table, r);
      }
      lo = first * size;
      hi = last * size;
    }
  }

  /** One interval fewer in region `r` of `table`. */
  #release(table: RegionTable, r: number): void {
    const v = table.get(r);
    if (v >= 0) return table.delete(r);
    if (v < -2) return table.set(r, v + 1, 0, 0);
    // One interval left in the region: it holds the region alone again.
    const size = table.size;
    const left = this.#firstOverlapSlot(r * size, (r + 1) * size);
    if (left >= 0) table.set(r, left, this.#bounds[2 * left]!, this.#bounds[2 * left + 1]!);
    else table.delete(r);
  }

  /**
   * The slot of the first interval (by start) overlapping [start, end) whose item is not
   * `except`, or -1. (An item to skip rather than a predicate: a predicate naming the caller's
   * value is a closure made on every memslot add.)
   */
  #firstOverlapSlot(start: number, end: number, except?: T): number {
    const t = this.#tree;
    let ok = t.seekFloor(start) || t.seekCeil(start);
    while (ok && t.cursorKey < end) {
      const n = t.cursorValue!;
      if (this.#bounds[2 * n + 1]! > start && (except === undefined || this.#items[n] !== except)) return n;
      ok = t.advance();
    }
    return -1;
  }

  /** The item whose interval holds `key`. */
  containing(key: number): T | undefined {
    const n = this.slotContaining(key);
    return n < 0 ? undefined : this.#items[n];
  }

  /** The slot number of the interval holding `key`, or -1. */
  slotContaining(key: number): number {
    const levels = this.#levels;
    const fine = levels[0]!;
    const r = floorShift(key, 9);
    const i = fine.find(r);
    const v = i < 0 ? NONE : fine.values[4 * i + 2]!;
    if (v >= 0) {
      const within = key - r * 512;
      const o = fine.offsets;
      return o[8 * i + 6]! <= within && within < o[8 * i + 7]! ? v : -1;
    }
    if (v !== NONE) {
      const t = this.#tree;
      if (!t.seekFloor(key)) return -1;
      const n = t.cursorValue!;
      return key < this.#bounds[2 * n + 1]! ? n : -1;
    }
    // Coarser regions are claimed only by an interval that covers them whole.
    const w = levels[1]!.get(floorShift(key, 18));
    if (w >= 0) return w;
    const x = levels[2]!.get(floorShift(key, 27));
    return x >= 0 ? x : -1;
  }

  /** The item in slot `n` (a number slotContaining() or insert() gave). */
  itemAt(n: number): T {
    return this.#items[n]!;
  }

  /** The start of the interval in slot `n`. */
  startAt(n: number): number {
    return this.#bounds[2 * n]!;
  }

  /** The first interval (by start) overlapping [start, end) whose item is not `except`. */
  firstOverlap(start: number, end: number, except?: T): T | undefined {
    const n = this.#firstOverlapSlot(start, end, except);
    return n < 0 ? undefined : this.#items[n];
  }

  *overlapping(start: number, end: number): IterableIterator<T> {
    const f = this.#tree.floor(start);
    const from = f && this.#bounds[2 * f[1] + 1]! > start ? f[0] : start;
    for (const [s, n] of this.#tree.entries(from)) {
      if (s >= end) return;
      if (this.#bounds[2 * n + 1]! > start) yield this.#items[n]!;
    }
  }

  *items(): IterableIterator<T> {
    for (const [, n] of this.#tree.entries()) yield this.#items[n]!;
  }

  /** Approximate bytes held by the index. */
  get bytes(): number {
    return this.#tree.size * 64 + this.#bounds.byteLength + this.#levels.reduce((s, t) => s + t.bytes, 0);
  }
}
