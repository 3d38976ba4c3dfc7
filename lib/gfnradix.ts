/**
 * A radix table from gfn to the memslot containing it, so that `find` costs the same with 16
 * slots as with 32,764 (a binary search over that many slots mispredicts a branch per level).
 *
 * Three levels over the gfn's bits, like a page table: a Map keyed by gfn >> 18 (1 GiB of 4 KiB
 * pages), then 512 leaves of 512 pages. At either level an entry that one slot covers whole is
 * just that slot's index, so a terabyte slot costs a thousand entries, not millions; only a
 * leaf shared by several slots (or partly covered) holds a per-page Int32Array (2 KiB).
 */
const L1 = 18;
const L2 = 9;
const LEAF = 1 << L2;
const FANOUT = 1 << (L1 - L2);

type Leaf = number | Int32Array; // slot index (-1: none) for the whole leaf, or per page
type Chunk = number | Leaf[]; // slot index for the whole chunk, or 512 leaves

export class GfnRadix<T> {
  #top = new Map<number, Chunk>();
  #items: (T | undefined)[] = [];
  #free: number[] = [];
  #index = new Map<T, { k: number; start: number; end: number }>();

  get(gfn: number): T | undefined {
    const c = this.#top.get(Math.floor(gfn / 2 ** L1));
    if (c === undefined) return undefined;
    let k: number;
    if (typeof c === 'number') k = c;
    else {
      const leaf = c[Math.floor(gfn / LEAF) % FANOUT]!;
      k = typeof leaf === 'number' ? leaf : leaf[gfn % LEAF]!;
    }
    return k < 0 ? undefined : this.#items[k];
  }

  /** Adds [start, end) -> item; the caller guarantees it overlaps nothing. */
  insert(start: number, end: number, item: T): void {
    const k = this.#free.pop() ?? this.#items.length;
    this.#items[k] = item;
    this.#index.set(item, { k, start, end });
    this.#fill(start, end, k);
  }

  remove(item: T): void {
    const e = this.#index.get(item);
    if (!e) return;
    this.#fill(e.start, e.end, -1);
    this.#index.delete(item);
    this.#items[e.k] = undefined;
    this.#free.push(e.k);
  }

  /** Sets every page of [start, end) to slot index k (-1 clears). */
  #fill(start: number, end: number, k: number): void {
    const chunkPages = 2 ** L1;
    let g = start;
    while (g < end) {
      const ci = Math.floor(g / chunkPages);
      const cStart = ci * chunkPages;
      const cEnd = cStart + chunkPages;
      if (g === cStart && end >= cEnd) {
        if (k < 0) this.#top.delete(ci);
        else this.#top.set(ci, k);
        g = cEnd;
        continue;
      }
      let chunk = this.#top.get(ci);
      if (chunk === undefined || typeof chunk === 'number') {
        chunk = new Array<Leaf>(FANOUT).fill(chunk ?? -1);
        this.#top.set(ci, chunk);
      }
      const stop = Math.min(end, cEnd);
      while (g < stop) {
        const li = Math.floor(g / LEAF) % FANOUT;
        const lStart = Math.floor(g / LEAF) * LEAF;
        const lEnd = lStart + LEAF;
        if (g === lStart && stop >= lEnd) {
          chunk[li] = k;
          g = lEnd;
          continue;
        }
        let leaf = chunk[li]!;
        if (typeof leaf === 'number') chunk[li] = leaf = new Int32Array(LEAF).fill(leaf);
        const s = Math.min(stop, lEnd);
        leaf.fill(k, g - lStart, s - lStart);
        if (leaf.every((x) => x === leaf[0]!)) chunk[li] = (leaf as Int32Array)[0]!; // collapse
        g = s;
      }
      if (chunk.every((x) => x === -1)) this.#top.delete(ci);
    }
  }
}
