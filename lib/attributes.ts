/** A VM's memory attributes (KVM_SET_MEMORY_ATTRIBUTES), kept as merged ranges. */
import { toU64, type U64 } from './base/args.js';
import { RangeMap } from './base/rangemap.js';
import { MemoryAttribute } from './base/uapi.js';
import { checkToken } from './context.js';

/** A range of equal memory attributes, in guest-physical bytes (end exclusive). */
export interface AttributeRange {
  /** First guest-physical address, in bytes (page-aligned). */
  start: bigint;
  /** Guest-physical address just past the range, in bytes (page-aligned). */
  end: bigint;
  /** The range's KVM_MEMORY_ATTRIBUTE_* bits (PRIVATE = 8n). */
  attributes: bigint;
}

/** A range whose attributes changed, with its old value. */
export interface ChangedRange {
  /** First guest-physical address, in bytes (page-aligned). */
  start: bigint;
  /** Guest-physical address just past the range, in bytes (page-aligned). */
  end: bigint;
  /** The attributes the range had before the change. */
  from: bigint;
}

/** Records a change the backend accepted: the ranges whose value changed. */
export let setAttributes: (book: AttributeBook, gpa: bigint, size: bigint, attributes: bigint) => ChangedRange[];

/**
 * The VM's memory attributes per gfn, merged into ranges (adjacent equal values coalesce: 1 TiB
 * set private is one entry); updated after the backend agreed.
 */
export class AttributeBook {
  readonly #map = new RangeMap<bigint>(0n);
  readonly #page: bigint;

  /** @hidden made with its VM */
  constructor(token: symbol, pageSize: number) {
    checkToken(token, 'AttributeBook', 'Kvm.createVm()');
    this.#page = BigInt(pageSize);
  }

  static {
    setAttributes = (book, gpa, size, attributes) => {
      const p = book.#page;
      return book.#map
        .set(Number(gpa / p), Number((gpa + size) / p), attributes)
        .map((c) => ({ start: BigInt(c.start) * p, end: BigInt(c.end) * p, from: c.value }));
    };
  }

  /** Attributes of the page containing `gpa` (0n where none were set). A `gpa` that is not a
   * u64 is a TypeError or RangeError. */
  get(gpa: U64): bigint {
    return this.#map.get(Number(toU64(gpa, 'gpa') / this.#page));
  }

  /** Whether the page containing `gpa` is private (KVM_MEMORY_ATTRIBUTE_PRIVATE set). */
  isPrivate(gpa: U64): boolean {
    return (this.get(gpa) & MemoryAttribute.PRIVATE) !== 0n;
  }

  /** Merged ranges with non-zero attributes, in address order (optionally within [start, end)). */
  ranges(start?: U64, end?: U64): AttributeRange[] {
    const p = this.#page;
    const lo = start === undefined ? -Infinity : Number(toU64(start, 'start') / p);
    const hi = end === undefined ? Infinity : Number((toU64(end, 'end') + p - 1n) / p);
    return [...this.#map.entries(lo, hi)].map((e) => ({ start: BigInt(e.start) * p, end: BigInt(e.end) * p, attributes: e.value }));
  }

  /** The first page at or after `gpa` whose attributes differ from those of `gpa` (end exclusive of the run), or undefined. */
  runEnd(gpa: bigint): bigint | undefined {
    const p = this.#page;
    const g = Number(gpa / p);
    const at = this.#map.get(g);
    for (const e of this.#map.entries(g, Infinity)) {
      if (e.value !== at) return BigInt(e.start) * p;
      if (e.end > g) return BigInt(e.end) * p;
    }
    return undefined;
  }

  /** Number of stored ranges (one per run of equal attributes). */
  get count(): number {
    return this.#map.count;
  }
}
