/**
 * Host mappings the library owns: of a guest_memfd (GuestMemfd.map()), or of shared memory
 * that is not gmem (Vm.createSharedMemory(), the host half of a private VM's memory).
 */
import { hex, toU64 } from './base/args.js';
import { kvmError } from './base/errors.js';
import { Madv } from './base/uapi.js';
import { checkToken } from './context.js';
import type { GuestMemfd } from './gmem.js';
import { onCollect, unregister } from './lifetime.js';
import type { Memslot } from './memslots.js';
import type { Handle, RawBackend, RawMapping } from './raw/types.js';

/** The largest typed array V8 makes (4 GiB): bigger mappings are read through view(). */
export const MAX_VIEW = 2 ** 32;

/** What a mapping maps: a guest_memfd, a memfd, or anonymous shared memory. */
export type MappingSource = 'guest_memfd' | 'memfd' | 'anonymous';

/** The owner a mapping reports its unmap to (its gmem, or its VM for shared memory). */
export interface MappingOwner {
  forget(m: Mapping, raw: RawMapping): void;
}

/** The memslots using each mapping as host memory: a mapping they use cannot be unmapped. */
const pins = new WeakMap<Mapping, Set<Memslot>>();
/** Mappings whose owner closed while slots used them: unmapped with their last slot. */
const orphans = new WeakSet<Mapping>();

export function pinMapping(m: Mapping, slot: Memslot): void {
  let s = pins.get(m);
  if (!s) pins.set(m, (s = new Set()));
  s.add(slot);
}

export function unpinMapping(m: Mapping, slot: Memslot): void {
  const s = pins.get(m);
  if (!s) return;
  s.delete(slot);
  if (s.size === 0) {
    pins.delete(m);
    if (orphans.has(m)) m.close();
  }
}

export function isPinned(m: Mapping): boolean {
  return (pins.get(m)?.size ?? 0) > 0;
}

/** Whether `x` is a Mapping the library made (not an object posing as one). */
export let isMapping: (x: unknown) => x is Mapping;

/**
 * Closes `m` as part of its owner's close: unmapped now, or, when memslots use it, left
 * mapped (the guest may still reach it) and unmapped with its last slot.
 */
export let releaseMapping: (m: Mapping) => void;

export interface MappingInit {
  owner: MappingOwner;
  raw: RawBackend;
  mapping: RawMapping;
  source: MappingSource;
  /** File offset of the first byte (0 for shared memory). */
  offset: bigint;
  length: bigint;
  guestMemfd?: GuestMemfd;
  /** The memfd behind shared memory, closed with the mapping. */
  memfd?: Handle;
}

/**
 * A shared mapping the library made. Views over it are zero-copy and are detached when it is
 * unmapped (by close(), or by its owner's close or collection), so none outlives it. Every
 * byte it exposes is host-accessible (a guest_memfd mapping exists only with initShared and
 * inside the file), so a view never faults. While a memslot uses it as host memory it cannot
 * be unmapped.
 */
export class Mapping {
  /** The guest_memfd mapped, for a guest_memfd mapping. */
  readonly guestMemfd: GuestMemfd | undefined;
  /** What is mapped. */
  readonly source: MappingSource;
  /** File offset of the first byte (0 for shared memory). */
  readonly offset: bigint;
  /** Length of the mapping in bytes. */
  readonly length: bigint;
  #raw: RawBackend;
  #mapping: RawMapping;
  #owner: MappingOwner;
  #memfd: Handle | undefined;
  #closed = false;
  #bytes: Uint8Array | undefined;

  /** @hidden made by GuestMemfd.map() and Vm.createSharedMemory() */
  constructor(token: symbol, init: MappingInit) {
    checkToken(token, 'Mapping', 'GuestMemfd.map() and Vm.createSharedMemory()');
    this.#raw = init.raw;
    this.#mapping = init.mapping;
    this.#owner = init.owner;
    this.#memfd = init.memfd;
    this.guestMemfd = init.guestMemfd;
    this.source = init.source;
    this.offset = init.offset;
    this.length = init.length;
    // What memslots.add() and the books read (length, closed, address, guestMemfd) cannot be
    // shadowed by properties of the caller's: a slot larger than its memory, or over memory
    // already unmapped, would let the guest reach whatever the process maps there next.
    Object.freeze(this);
  }

  static {
    isMapping = (x: unknown): x is Mapping => typeof x === 'object' && x !== null && #mapping in x;
    releaseMapping = (m: Mapping) => {
      if (m.#closed) return;
      if (!isPinned(m)) return m.close();
      // Slots of another VM use it: it stays mapped (with a finalizer of its own) until the last goes.
      orphans.add(m);
      const raw = m.#raw;
      const mapping = m.#mapping;
      const memfd = m.#memfd;
      onCollect(m, () => {
        raw.munmap(mapping);
        if (memfd !== undefined) raw.close(memfd);
      });
    };
  }

  /** The mapping's address in this process. */
  get address(): bigint {
    return this.#mapping.address;
  }

  /** Whether it is unmapped (by close(), or by its owner's close). */
  get closed(): boolean {
    return this.#closed;
  }

  /** The memfd behind shared memory made with `memfd: true` (for passing to another process);
   * undefined for other mappings. A KvmError (EBADF) once unmapped. */
  get fd(): Handle | undefined {
    this.#check();
    return this.#memfd;
  }

  #check(): void {
    if (this.#closed) throw kvmError('EBADF', { syscall: 'mmap' }, `mapping ${hex(this.address)} is unmapped`);
  }

  /** The whole mapping as one zero-copy Uint8Array (mappings up to 4 GiB; beyond, a
   * RangeError: use view()). EBADF once unmapped. */
  get bytes(): Uint8Array {
    this.#check();
    if (this.length > BigInt(MAX_VIEW)) {
      throw new RangeError(`mapping is ${this.length} bytes, more than a typed array holds (${MAX_VIEW}); use view(offset, length)`);
    }
    // (Without the addon, the simulator moves a mapping's buffer when another mapping of the
    // file comes or goes, which detaches the views taken before: take one again then.)
    if (this.#bytes === undefined || (this.#bytes.byteLength === 0 && this.length > 0n)) this.#bytes = this.#mapping.view(0, Number(this.length));
    return this.#bytes;
  }

  /** A zero-copy window [offset, offset + length) of the mapping, in bytes. A window past the
   * mapping's end or longer than 4 GiB is a RangeError; EBADF once unmapped. */
  view(offset: bigint | number, length: bigint | number): Uint8Array {
    this.#check();
    const [off, len] = this.#range(offset, length, 'view');
    if (len > BigInt(MAX_VIEW)) throw new RangeError(`a view holds at most ${MAX_VIEW} bytes`);
    return this.#mapping.view(Number(off), Number(len));
  }

  #range(offset: unknown, length: unknown, what: string): [bigint, bigint] {
    const off = toU64(offset, 'offset');
    const len = toU64(length, 'length');
    if (off + len > this.length) throw new RangeError(`${what} [${hex(off)}, ${hex(off + len)}) is outside the mapping (${hex(this.length)} bytes)`);
    return [off, len];
  }

  /** Memslots whose host memory this mapping is. */
  get slots(): readonly Memslot[] {
    void this.#closed; // (a TypeError on an object that is not a Mapping)
    return [...(pins.get(this) ?? [])];
  }

  /**
   * Frees the pages of [offset, offset + length) of shared memory (MADV_REMOVE): they read as
   * zeros after, here and in the guest. What a VMM does with the shared half of a range it
   * converts to private. (A guest_memfd range is freed with GuestMemfd.punchHole().)
   * On a guest_memfd mapping, a TypeError; a range outside the mapping or not page-aligned, a
   * RangeError; EBADF once unmapped.
   */
  discard(offset: bigint | number, length: bigint | number): void {
    this.#check();
    if (this.source === 'guest_memfd') throw new TypeError('discard() frees shared memory; free a guest_memfd range with guestMemfd.punchHole()');
    const [off, len] = this.#range(offset, length, 'discard');
    const page = BigInt(this.#raw.pageSize);
    if (off % page !== 0n || len % page !== 0n) throw new RangeError(`discard [${hex(off)}, +${hex(len)}) must be page-aligned`);
    if (len > 0n) this.#raw.madvise(this.#mapping, off, len, Madv.REMOVE);
  }

  /**
   * Unmaps (idempotent). Refused with EBUSY while a memslot uses this memory: delete the
   * slot first, so a guest can never reach memory the process reuses.
   */
  close(): void {
    if (this.#closed) return;
    const slots = pins.get(this);
    if (slots?.size) {
      const ids = [...slots].map((s) => s.id);
      throw kvmError('EBUSY', { syscall: 'munmap' }, `mapping ${hex(this.address)} is the memory of memslot ${ids.join(', ')}; delete the slot first`, {
        conflict: { slot: ids[0]!, asId: [...slots][0]!.asId },
      });
    }
    this.#raw.munmap(this.#mapping);
    this.#closed = true;
    this.#bytes = undefined;
    try {
      if (this.#memfd !== undefined) this.#raw.close(this.#memfd);
    } finally {
      // (Unmapped: its owner forgets it even when the memfd was closed behind its back.)
      if (orphans.has(this)) {
        orphans.delete(this);
        unregister(this);
      }
      this.#owner.forget(this, this.#mapping);
    }
  }

  /** close(), for `using m = gmem.map()`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
