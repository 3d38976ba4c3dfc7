import { checkU64, hex, toOptions, toU64, type U64 } from './base/args.js';
import { kvmError } from './base/errors.js';
import { Falloc, GuestMemfdFlag, MapFlag, Prot } from './base/uapi.js';
import { checkToken, CREATE, type VmContext } from './context.js';
import type { ChildResources } from './lifetime.js';
import { Mapping, releaseMapping } from './mapping.js';
import type { GuestRange } from './memslots.js';
import type { Handle, RawMapping, RawStat } from './raw/types.js';
import { checkFallocate } from './rules/fallocate.js';
import { explainRefusal } from './rules/types.js';
import type { Vm } from './vm.js';

/** Whether `x` is a GuestMemfd the library made. */
export let isGuestMemfd: (x: unknown) => x is GuestMemfd;
/** Closes `g` as part of its VM's close: never refused (mappings memslots use stay mapped). */
export let releaseGuestMemfd: (g: GuestMemfd) => void;

/**
 * A guest_memfd: a file of guest memory created by KVM_CREATE_GUEST_MEMFD on a VM. It can
 * back several memslots at different offsets (each offset at most once), be allocated and
 * punched, and, with mmap + initShared, be mapped by the host.
 */
export class GuestMemfd {
  /** The VM it was created on. */
  readonly vm: Vm;
  /** Size in bytes (fixed at creation). */
  readonly size: bigint;
  /** Creation flags (GUEST_MEMFD_FLAG_*). */
  readonly flags: bigint;
  #ctx: VmContext;
  #fd: Handle;
  #closed = false;
  #mappings = new Set<Mapping>();
  /** The fd and raw mappings, for the VM's finalizer (which must not reach this object). */
  #resources: ChildResources;
  #key: number;

  /** @hidden made by Vm.createGuestMemfd() */
  constructor(token: symbol, ctx: VmContext, fd: Handle, size: bigint, flags: bigint) {
    checkToken(token, 'GuestMemfd', 'Vm.createGuestMemfd()');
    this.vm = ctx.vm;
    this.#ctx = ctx;
    this.#fd = fd;
    this.size = size;
    this.flags = flags;
    this.#resources = { fd, mappings: new Set() };
    this.#key = ctx.adopt(this.#resources);
    // What memslots.add() and the books read (closed, size, fd, vm, flags) cannot be shadowed.
    Object.freeze(this);
  }

  static {
    isGuestMemfd = (x: unknown): x is GuestMemfd => typeof x === 'object' && x !== null && #fd in x;
    releaseGuestMemfd = (g: GuestMemfd) => g.#release();
  }

  /** The guest_memfd's fd (or simulated handle). A KvmError (EBADF) once closed. */
  get fd(): Handle {
    this.#check('fd');
    return this.#fd;
  }
  /** Whether it is closed (by close(), or with its VM). */
  get closed(): boolean {
    return this.#closed;
  }
  /** GUEST_MEMFD_FLAG_MMAP: the host may mmap it. */
  get mmapable(): boolean {
    return (this.flags & GuestMemfdFlag.MMAP) !== 0n;
  }
  /** GUEST_MEMFD_FLAG_INIT_SHARED: its pages start shared, so the host may touch them. */
  get initShared(): boolean {
    return (this.flags & GuestMemfdFlag.INIT_SHARED) !== 0n;
  }

  #check(syscall: string): void {
    if (this.#closed) throw kvmError('EBADF', { syscall }, 'guest_memfd is closed');
  }

  #fallocate(mode: number, offset: unknown, length: unknown): [U64, U64] {
    this.#check('fallocate');
    const off = checkU64(offset, 'offset');
    const len = checkU64(length, 'length');
    const raw = this.#ctx.raw;
    try {
      raw.fallocate(this.#fd, mode, off, len);
    } catch (e) {
      throw explainRefusal(e, () => checkFallocate(mode, BigInt(off), BigInt(len), { kind: 'gmem', size: this.size }, BigInt(raw.pageSize)), { syscall: 'fallocate' });
    }
    return [off, len];
  }

  /**
   * fallocate(FALLOC_FL_KEEP_SIZE): allocates [offset, offset + length) (bytes). The kernel
   * refuses (EINVAL) a length of 0, a range that is not page-aligned or ends past the file's
   * size. A value that is not a u64 is a TypeError or RangeError; EBADF once closed.
   */
  allocate(offset: U64, length: U64): void {
    this.#fallocate(Falloc.KEEP_SIZE, offset, length);
  }

  /**
   * fallocate(PUNCH_HOLE | KEEP_SIZE): frees [offset, offset + length), which then reads as
   * zeros from the host and the guest. Returns the guest frame ranges the punch invalidated
   * (one per memslot bound to an overlapping file range, clamped at both ends); the VM also
   * emits them as an 'invalidate' event. The kernel refuses (EINVAL) a length of 0 and a range
   * that is not page-aligned; EBADF once closed.
   */
  punchHole(offset: U64, length: U64): GuestRange[] {
    const [off, len] = this.#fallocate(Falloc.PUNCH_HOLE | Falloc.KEEP_SIZE, offset, length);
    const books = this.#ctx.books;
    if (!books.binds(this)) return [];
    const start = BigInt(off);
    const bytes = BigInt(len);
    const ranges = books.rangesOf(this, start, start + bytes);
    if (ranges.length) this.#ctx.emit('invalidate', { guestMemfd: this, offset: start, length: bytes, ranges });
    return ranges;
  }

  /**
   * Maps [offset, offset + length) shared (default: the whole file, or from `offset` to its
   * end), in bytes. Refused when the pages are not host-accessible (no initShared: a touch
   * would SIGBUS; KvmError EFAULT) and past the file's end (RangeError). A gmem created
   * without mmap gets the kernel's ENODEV. EBADF once closed.
   */
  map(opts?: { offset?: U64; length?: U64 }): Mapping {
    this.#check('mmap');
    const options = toOptions(opts, 'map options');
    const optOffset = options.offset;
    const optLength = options.length;
    const offset = optOffset === undefined ? 0n : toU64(optOffset, 'offset');
    const length = optLength === undefined ? (offset < this.size ? this.size - offset : 0n) : toU64(optLength, 'length');
    if (offset + length > this.size) {
      throw new RangeError(`map [${hex(offset)}, ${hex(offset + length)}) extends past the end of the guest_memfd (${hex(this.size)}); bytes there would fault`);
    }
    if (this.mmapable && !this.initShared) {
      throw kvmError('EFAULT', { syscall: 'mmap' }, 'this guest_memfd was created without initShared: its pages are private to the guest and any host access would fault');
    }
    const raw = this.#ctx.raw;
    const mapping = raw.mmap(this.#fd, length, offset, Prot.READ | Prot.WRITE, MapFlag.SHARED);
    const m = new Mapping(CREATE, { owner: this.#owner, raw, mapping, source: 'guest_memfd', offset, length, guestMemfd: this });
    this.#mappings.add(m);
    this.#resources.mappings.add(mapping);
    return m;
  }

  /** What this gmem's mappings report their unmap to. */
  #owner = {
    forget: (m: Mapping, mapping: RawMapping) => {
      this.#mappings.delete(m);
      this.#resources.mappings.delete(mapping);
    },
  };

  /** fstat(2) of the file. EBADF once closed. */
  stat(): RawStat {
    this.#check('fstat');
    return this.#ctx.raw.fstat(this.#fd);
  }

  /**
   * Unmaps its mappings and closes the fd (idempotent). Refused with EBUSY, changing
   * nothing, while one of its mappings is a memslot's memory. Slots bound with no host
   * mapping may outlive the file, as in the kernel (a guest access there then exits with a
   * memory fault).
   */
  close(): void {
    if (this.#closed) return;
    const pinned = [...this.#mappings].flatMap((m) => m.slots);
    if (pinned.length) {
      throw kvmError('EBUSY', { syscall: 'close' }, `guest_memfd memory is in use by memslot ${pinned.map((s) => s.id).join(', ')}; delete the slot first`, {
        conflict: { slot: pinned[0]!.id, asId: pinned[0]!.asId },
      });
    }
    this.#release();
  }

  #release(): void {
    if (this.#closed) return;
    this.#closed = true;
    // Unmapped, except what memslots of another VM use: that stays mapped, on a finalizer of
    // its own, until its last slot goes.
    for (const m of [...this.#mappings]) releaseMapping(m);
    this.#ctx.forget(this, this.#key);
    this.#ctx.raw.close(this.#fd);
  }

  /** close(), for `using gmem = vm.createGuestMemfd(...)`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
