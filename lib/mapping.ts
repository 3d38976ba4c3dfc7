import { kvmError } from './errors.js';
import type { GuestMemfd } from './gmem.js';
import type { Memslot } from './memslots.js';
import type { RawBackend, RawMapping } from './raw/types.js';
import { toU64, hex } from './u64.js';

/** The largest typed array V8 makes (4 GiB): bigger mappings are read through view(). */
export const MAX_VIEW = 2 ** 32;

/**
 * A shared mapping of a guest_memfd range, created by GuestMemfd.map(). Views over it are
 * zero-copy and are detached when it is unmapped (by close(), or by its gmem's close or
 * collection), so none outlives it. A gmem owns its mappings. Every byte it exposes
 * is host-accessible (the gmem has initShared and the range is inside the file), so a view
 * never faults. While a memslot uses it as userspace memory it cannot be unmapped.
 */
export class Mapping {
  readonly guestMemfd: GuestMemfd;
  /** File offset of the first byte. */
  readonly offset: bigint;
  readonly length: bigint;
  #raw: RawBackend;
  #mapping: RawMapping;
  #closed = false;
  #pins: Set<Memslot> | undefined; // made by the first pin: most mappings are never pinned
  #bytes: Uint8Array | undefined;

  /** @internal use GuestMemfd.map() */
  constructor(gmem: GuestMemfd, raw: RawBackend, mapping: RawMapping, offset: bigint, length: bigint) {
    this.guestMemfd = gmem;
    this.#raw = raw;
    this.#mapping = mapping;
    this.offset = offset;
    this.length = length;
  }

  /** The mapping's address in this process. */
  get address(): bigint {
    return this.#mapping.address;
  }

  get closed(): boolean {
    return this.#closed;
  }

  #check(): void {
    if (this.#closed) throw kvmError('EBADF', { syscall: 'mmap' }, `mapping ${hex(this.address)} is unmapped`);
  }

  /** The whole mapping as one Uint8Array (mappings up to 4 GiB; use view() beyond). */
  get bytes(): Uint8Array {
    this.#check();
    if (this.length > BigInt(MAX_VIEW)) {
      throw new RangeError(`mapping is ${this.length} bytes, more than a typed array holds (${MAX_VIEW}); use view(offset, length)`);
    }
    // (Without the addon, the simulator moves a mapping's buffer when another mapping of the
    // file comes or goes, which detaches the views taken before: take one again then.)
    if (this.#bytes === undefined || (this.#bytes.byteLength === 0 && this.length > 0n)) this.#bytes = this.#window(0, Number(this.length));
    return this.#bytes;
  }

  /** A zero-copy window [offset, offset + length) of the mapping. */
  view(offset: bigint | number, length: bigint | number): Uint8Array {
    this.#check();
    const off = toU64(offset, 'offset');
    const len = toU64(length, 'length');
    if (off + len > this.length) {
      throw new RangeError(`view [${hex(off)}, ${hex(off + len)}) is outside the mapping (${hex(this.length)} bytes)`);
    }
    if (len > BigInt(MAX_VIEW)) throw new RangeError(`a view holds at most ${MAX_VIEW} bytes`);
    return this.#window(Number(off), Number(len));
  }

  #window(offset: number, length: number): Uint8Array {
    return this.#mapping.view(offset, length);
  }

  /** Memslots whose userspace memory this mapping is. */
  get slots(): readonly Memslot[] {
    return [...(this.#pins ?? [])];
  }

  /** @internal a memslot starts/stops using this mapping */
  _pin(slot: Memslot): void {
    this.#check();
    (this.#pins ??= new Set()).add(slot);
  }
  /** @internal */
  _unpin(slot: Memslot): void {
    this.#pins?.delete(slot);
  }

  /**
   * Unmaps (idempotent). Refused with EBUSY while a memslot uses this memory: delete the
   * slot first, so a guest can never reach memory the process reuses.
   */
  close(): void {
    if (this.#closed) return;
    if (this.#pins?.size) {
      const ids = [...this.#pins].map((s) => s.id);
      throw kvmError('EBUSY', { syscall: 'munmap' }, `mapping ${hex(this.address)} is the memory of memslot ${ids.join(', ')}; delete the slot first`, {
        conflict: { slot: ids[0]!, asId: [...this.#pins][0]!.asId },
      });
    }
    this.#raw.munmap(this.#mapping);
    this.#closed = true;
    this.#bytes = undefined;
    this.guestMemfd._forget(this, this.#mapping);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
