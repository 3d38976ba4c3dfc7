/**
 * A radix table from gfn to the memslot containing it, so that `find` costs the same with 16
 * slots as with 32,764 (a binary search over that many slots mispredicts a branch per level).
 *
 * Three levels over the gfn's bits, like a page table: a Map keyed by gfn >> 18 (1 GiB of 4 KiB
 * pages), then 512 leaves of 512 pages. At either level an entry that one slot covers whole is
 * just that slot, so a terabyte slot costs a thousand entries, not millions; only a leaf
 * shared by several slots (or partly covered) holds a per-page array (4 KiB).
 */
const L1 = 18;
const L2 = 9;
const LEAF = 1 << L2;
const FANOUT = 1 << (L1 - L2);

// Items are stored in the table itself (no index into a side array: at 32,764 slots that
// array is one more cache miss per lookup). An item is never an array, so Array.isArray
// tells a subdivided entry from an item; undefined is "no slot".
type Leaf<T> = T | undefined | (T | undefined)[]; // the item for the whole leaf, or per page
type Chunk<T> = Leaf<T> | Leaf<T>[]; // the item for the whole chunk, or 512 leaves

export class GfnRadix<T extends object | number> {
  #top = new Map<number, Chunk<T>>();
  #index = new Map<T, { start: number; end: number }>();

  get(gfn: number): T | undefined {
    const c = this.#top.get(Math.floor(gfn / 2 ** L1));
    if (!Array.isArray(c)) return c as T | undefined;
    const leaf = (c as Leaf<T>[])[Math.floor(gfn / LEAF) % FANOUT];
    return Array.isArray(leaf) ? leaf[gfn % LEAF] : (leaf as T | undefined);
  }

  /** Adds [start, end) -> item; the caller guarantees it overlaps nothing. */
  insert(start: number, end: number, item: T): void {
    this.#index.set(item, { start, end });
    this.#fill(start, end, item);
  }

  remove(item: T): void {
    const e = this.#index.get(item);
    if (!e) return;
    this.#fill(e.start, e.end, undefined);
    this.#index.delete(item);
  }

  /** Sets every page of [start, end) to `item` (undefined clears). */
  #fill(start: number, end: number, item: T | undefined): void {
    const chunkPages = 2 ** L1;
    let g = start;
    while (g < end) {
      const ci = Math.floor(g / chunkPages);
      const cStart = ci * chunkPages;
      const cEnd = cStart + chunkPages;
      if (g === cStart && end >= cEnd) {
        if (item === undefined) this.#top.delete(ci);
        else this.#top.set(ci, item);
        g = cEnd;
        continue;
      }
      let chunk = this.#top.get(ci);
      if (!Array.isArray(chunk)) {
        chunk = new Array<Leaf<T>>(FANOUT).fill(chunk as T | undefined);
        this.#top.set(ci, chunk);
      }
      const leaves = chunk as Leaf<T>[];
      const stop = Math.min(end, cEnd);
      while (g < stop) {
        const li = Math.floor(g / LEAF) % FANOUT;
        const lStart = Math.floor(g / LEAF) * LEAF;
        const lEnd = lStart + LEAF;
        if (g === lStart && stop >= lEnd) {
          leaves[li] = item;
          g = lEnd;
          continue;
        }
        let leaf = leaves[li];
        if (!Array.isArray(leaf)) leaves[li] = leaf = new Array<T | undefined>(LEAF).fill(leaf as T | undefined);
        const pages = leaf as (T | undefined)[];
        const s = Math.min(stop, lEnd);
        pages.fill(item, g - lStart, s - lStart);
        if (pages.every((x) => x === pages[0])) leaves[li] = pages[0]; // collapse
        g = s;
      }
      if (leaves.every((x) => x === undefined)) this.#top.delete(ci);
    }
  }
}
