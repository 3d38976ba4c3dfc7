import { kvmError } from './errors.js';
import { Children } from './lifetime.js';
import { Mapping } from './mapping.js';
import type { GuestRange } from './memslots.js';
import { Falloc, GuestMemfdFlag, Map as MapFlag, Prot } from './raw/constants.js';
import type { Handle, RawBackend, RawMapping, RawStat } from './raw/types.js';
import { checkFallocate } from './rules/gmem.js';
import { violationError } from './rules/types.js';
import { checkU64, hex, toOptions, toU64, type U64 } from './u64.js';
import type { Vm } from './vm.js';

/**
 * A guest_memfd: a file of guest memory created by KVM_CREATE_GUEST_MEMFD on a VM. It can
 * back several memslots at different offsets (each offset at most once), be allocated and
 * punched, and, with mmap + initShared, be mapped by the host.
 */
export class GuestMemfd {
  readonly vm: Vm;
  /** Size in bytes (fixed at creation). */
  readonly size: bigint;
  /** Creation flags (GUEST_MEMFD_FLAG_*). */
  readonly flags: bigint;
  #raw: RawBackend;
  #fd: Handle;
  #closed = false;
  #mappings = new Children<Mapping>();
  /** The raw mappings of #mappings, for the finalizer (which must not reach the Mapping objects). */
  #rawMappings = new Set<RawMapping>();
  /** Mappings made for slots that were given no `userspace` (unmapped with their last slot). */
  #own = new Set<Mapping>();

  /** @internal use Vm.createGuestMemfd() */
  constructor(vm: Vm, raw: RawBackend, fd: Handle, size: bigint, flags: bigint) {
    this.vm = vm;
    this.#raw = raw;
    this.#fd = fd;
    this.size = size;
    this.flags = flags;
    vm._adopt(fd, this.#rawMappings); // (released by the VM's finalizer if both are dropped)
  }

  get fd(): Handle {
    this.#check('fd');
    return this.#fd;
  }
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
    try {
      this.#raw.fallocate(this.#fd, mode, off, len);
    } catch (e) {
      // Explain the kernel's refusal with the rule it applied (same code; kernel errno kept).
      const v = checkFallocate(mode, BigInt(off), BigInt(len), { kind: 'gmem', size: this.size }, BigInt(this.#raw.pageSize));
      if (v && (e as { code?: string }).code === v.code) throw violationError(v, { syscall: 'fallocate' });
      throw e;
    }
    return [off, len];
  }

  /** fallocate(FALLOC_FL_KEEP_SIZE): allocates [offset, offset + length). */
  allocate(offset: bigint | number, length: bigint | number): void {
    this.#fallocate(Falloc.KEEP_SIZE, offset, length);
  }

  /**
   * fallocate(PUNCH_HOLE | KEEP_SIZE): frees [offset, offset + length), which then reads as
   * zeros from the host and the guest. Returns the guest frame ranges the punch invalidated
   * (one per memslot bound to an overlapping file range, clamped at both ends); the VM also
   * emits them as an 'invalidate' event.
   */
  punchHole(offset: bigint | number, length: bigint | number): GuestRange[] {
    const [off, len] = this.#fallocate(Falloc.PUNCH_HOLE | Falloc.KEEP_SIZE, offset, length);
    if (!this.vm.memslots._binds(this)) return [];
    const start = BigInt(off);
    const bytes = BigInt(len);
    const ranges = this.vm.memslots.guestRanges(this, start, start + bytes);
    if (ranges.length) this.vm.emit('invalidate', { guestMemfd: this, offset: start, length: bytes, ranges });
    return ranges;
  }

  /**
   * Maps [offset, offset + length) shared (default: the whole file). Refused when the pages
   * are not host-accessible (no initShared: a touch would SIGBUS) and past the file's end.
   * A gmem created without mmap gets the kernel's ENODEV.
   */
  map(opts?: { offset?: bigint | number; length?: bigint | number }): Mapping {
    this.#check('mmap');
    const options = toOptions(opts, 'map options');
    const offset = options.offset === undefined ? 0n : toU64(options.offset, 'offset');
    const length = options.length === undefined ? (offset < this.size ? this.size - offset : 0n) : toU64(options.length, 'length');
    if (offset + length > this.size) {
      throw new RangeError(`map [${hex(offset)}, ${hex(offset + length)}) extends past the end of the guest_memfd (${hex(this.size)}); bytes there would fault`);
    }
    if (this.mmapable && !this.initShared) {
      throw kvmError('EFAULT', { syscall: 'mmap' }, 'this guest_memfd was created without initShared: its pages are private to the guest and any host access would fault');
    }
    const raw = this.#raw.mmap(this.#fd, length, offset, Prot.READ | Prot.WRITE, MapFlag.SHARED);
    const m = new Mapping(this, this.#raw, raw, offset, length);
    this.#mappings.add(m);
    this.#rawMappings.add(raw);
    return m;
  }

  /**
   * @internal The gmem's own mapping of [offset, offset + size), a slot's userspace memory
   * when none is given: an existing one that covers the range, else a new one of exactly
   * that range (never the whole file: a simulated terabyte file cannot be mapped whole).
   */
  _ownMapping(offset: bigint, size: bigint): { mapping: Mapping; created: boolean } {
    for (const m of this.#own) if (m.offset <= offset && offset + size <= m.offset + m.length) return { mapping: m, created: false };
    const mapping = this.map({ offset, length: size });
    this.#own.add(mapping);
    return { mapping, created: true };
  }

  /** @internal A slot stopped using `m`: unmap it if it was made for slots and none is left. */
  _releaseOwn(m: Mapping): void {
    if (this.#own.has(m) && m.slots.length === 0) m.close();
  }

  /** @internal a Mapping was unmapped */
  _forget(m: Mapping, raw: RawMapping): void {
    this.#mappings.delete(m);
    this.#rawMappings.delete(raw);
    this.#own.delete(m);
  }

  /** fstat(2) of the file. */
  stat(): RawStat {
    this.#check('fstat');
    return this.#raw.fstat(this.#fd);
  }

  /**
   * Unmaps its mappings and closes the fd (idempotent). Refused with EBUSY while one of its
   * mappings is a memslot's memory. Slots bound with no host mapping may outlive the file, as
   * in the kernel (a guest access there then exits with a memory fault).
   */
  close(): void {
    if (this.#closed) return;
    const pinned = this.#mappings.live().flatMap((m) => m.slots);
    if (pinned.length) {
      throw kvmError('EBUSY', { syscall: 'close' }, `guest_memfd memory is in use by memslot ${pinned.map((s) => s.id).join(', ')}; delete the slot first`, {
        conflict: { slot: pinned[0]!.id, asId: pinned[0]!.asId },
      });
    }
    for (const m of this.#mappings.live()) m.close();
    this.#closed = true;
    this.vm._forgetGmem(this, this.#fd);
    this.#raw.close(this.#fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
