import { kvmError, type KvmError } from './errors.js';
import { log } from './debug.js';
import { GuestMemfd } from './gmem.js';
import { GfnRadix } from './gfnradix.js';
import { IntervalIndex } from './interval.js';
import { Mapping } from './mapping.js';
import { KVM_USER_MEM_SLOTS, MemFlag } from './raw/constants.js';
import { checkMemslot, isViolation, MAX_GFN_52, memslotWhere, type MemslotContext, type MemslotDecision, type RegionInput, type SlotView } from './rules/memslot.js';
import { violationError, type Violation } from './rules/types.js';
import { hex, toBool, toInt, toU64, typeName, type U64 } from './u64.js';
import type { Vm } from './vm.js';

/** Rules whose answer depends on the books (what is already there); checked before the call. */
const BOOK_RULES = new Set([
  'memslot.delete-missing', 'memslot.gmem-immutable', 'memslot.modify', 'memslot.gpa-overlap',
  'memslot.gmem-bound', 'memslot.gmem-owner', 'memslot.gmem-fd',
]);

/** Highest end (userspace_addr + memory_size) that access_ok() accepts on x86-64 with
 * 4-level paging: TASK_SIZE_MAX (observed on the 6.18 host). */
export const USER_ADDRESS_MAX = 0x7ffffffff000n;

export interface MemslotOptions {
  /** Slot id (bits 15:0); the lowest free id when omitted. */
  slot?: number;
  /** Address space id (bits 31:16 of the kernel's slot field), default 0. */
  asId?: number;
  guestPhysAddr: U64;
  size: U64;
  guestMemfd?: GuestMemfd;
  guestMemfdOffset?: U64;
  /**
   * Host memory for the slot: a Mapping owned by the library. Omitted on a gmem created with
   * mmap + initShared: the gmem's own mapping at the slot's offset. Omitted on another gmem:
   * none (userspace_addr 0).
   */
  userspace?: Mapping;
  /** Byte offset of the slot's memory in `userspace`; by default 0, or for a mapping of the
   * slot's own gmem, the slot's file offset within it (so both views alias). */
  userspaceOffset?: U64;
  readonly?: boolean;
  logDirtyPages?: boolean;
}

/** A guest frame range that a file range backs through one memslot (end exclusive). */
export interface GuestRange {
  slot: Memslot;
  gfnStart: bigint;
  gfnEnd: bigint;
}

export interface Translation {
  slot: Memslot;
  /** Byte offset of the gpa within the slot. */
  slotOffset: bigint;
  guestMemfd: GuestMemfd | undefined;
  /** File offset in guestMemfd (gmem slots). */
  offset: bigint | undefined;
  /** Host address of the gpa through the slot's userspace memory (0n when none). */
  userspaceAddr: bigint;
}

/** A memslot the VM has (KVM_SET_USER_MEMORY_REGION2). Read-only view of the kernel's slot. */
export class Memslot {
  #deleted = false;
  /** @internal */
  constructor(
    readonly vm: Vm,
    readonly id: number,
    readonly asId: number,
    public guestPhysAddr: bigint,
    readonly size: bigint,
    public flags: number,
    readonly guestMemfd: GuestMemfd | undefined,
    readonly guestMemfdOffset: bigint,
    readonly userspace: Mapping | undefined,
    /** Byte offset of the slot's memory in `userspace`. */
    readonly userspaceOffset: bigint,
    readonly userspaceAddr: bigint,
  ) {}

  get readonly(): boolean {
    return (this.flags & MemFlag.READONLY) !== 0;
  }
  get logDirtyPages(): boolean {
    return (this.flags & MemFlag.LOG_DIRTY_PAGES) !== 0;
  }
  get deleted(): boolean {
    return this.#deleted;
  }
  /** @internal */
  _markDeleted(): void {
    this.#deleted = true;
  }
  get end(): bigint {
    return this.guestPhysAddr + this.size;
  }
  /** Deletes the slot (KVM_SET_USER_MEMORY_REGION2 with size 0); a no-op once deleted or
   * once its VM is closed. */
  delete(): void {
    if (this.#deleted || this.vm.closed) return;
    this.vm.memslots.delete(this);
  }
  /** `using slot = vm.memslots.add(...)` deletes it at the end of the scope, before the
   * memory declared earlier is unmapped. */
  [Symbol.dispose](): void {
    this.delete();
  }
  toString(): string {
    const g = this.guestMemfd ? ` gmem@${hex(this.guestMemfdOffset)}` : '';
    return `slot ${this.id} [${hex(this.guestPhysAddr)}, ${hex(this.end)})${g}`;
  }
}

/**
 * The VM's memslot books: by guest-physical address per address space, and per gmem by file
 * offset. Updated only after the backend accepted a change, so they always equal the
 * kernel's state.
 */
export class MemslotTable {
  readonly #vm: Vm;
  readonly #page: bigint;
  #byKey = new Map<number, Memslot>();
  #byGfn = new Map<number, IntervalIndex<Memslot>>();
  /** O(1) gfn -> slot lookup per address space (find/translate). */
  #radix = new Map<number, GfnRadix<Memslot>>();
  #byFile = new Map<GuestMemfd, IntervalIndex<Memslot>>();
  /** Used slot ids of address space 0..n (bitmaps, for the lowest free id). */
  #used = new Map<number, Uint32Array>();

  /** @internal */
  constructor(vm: Vm, pageSize: number) {
    this.#vm = vm;
    this.#page = BigInt(pageSize);
  }

  get size(): number {
    return this.#byKey.size;
  }

  /** Every slot, ordered by address space then guest address. */
  list(): Memslot[] {
    return [...this.#byGfn.keys()].sort((a, b) => a - b).flatMap((as) => [...this.#byGfn.get(as)!.items()]);
  }

  [Symbol.iterator](): IterableIterator<Memslot> {
    return this.list()[Symbol.iterator]();
  }

  get(id: number, asId = 0): Memslot | undefined {
    return this.#byKey.get((toInt(asId, 'asId', 0, 0xffff) << 16) | toInt(id, 'id', 0, 0xffff));
  }

  /** The slot containing `gpa` (address space `asId`), in O(1). */
  find(gpa: U64, asId = 0): Memslot | undefined {
    const g = toU64(gpa, 'gpa');
    return this.#radix.get(toInt(asId, 'asId', 0, 0xffff))?.get(Number(g / this.#page));
  }

  /** gpa -> (slot, gmem, file offset, host address), or undefined where no slot is. */
  translate(gpa: U64, asId = 0): Translation | undefined {
    const g = toU64(gpa, 'gpa');
    const slot = this.find(g, asId);
    if (!slot) return undefined;
    const slotOffset = g - slot.guestPhysAddr;
    return {
      slot,
      slotOffset,
      guestMemfd: slot.guestMemfd,
      offset: slot.guestMemfd ? slot.guestMemfdOffset + slotOffset : undefined,
      userspaceAddr: slot.userspaceAddr === 0n ? 0n : slot.userspaceAddr + slotOffset,
    };
  }

  /** (gmem, file offset) -> the slot and gpa that it backs, or undefined where unbound. */
  reverse(gmem: GuestMemfd, offset: U64): { slot: Memslot; gpa: bigint } | undefined {
    checkGmem(gmem);
    const off = toU64(offset, 'offset');
    const slot = this.#byFile.get(gmem)?.containing(Number(off / this.#page));
    return slot && { slot, gpa: slot.guestPhysAddr + (off - slot.guestMemfdOffset) };
  }

  /**
   * The guest frame ranges that the file range [start, end) of `gmem` backs: one per slot
   * bound to an overlapping range, clamped at both ends, in file order.
   *   gfnStart = base_gfn + (max(start, off) - off) / page
   *   gfnEnd   = base_gfn + (min(end, off + size) - off) / page
   */
  guestRanges(gmem: GuestMemfd, start: U64, end: U64): GuestRange[] {
    checkGmem(gmem);
    const s = toU64(start, 'start');
    const e = toU64(end, 'end');
    const idx = this.#byFile.get(gmem);
    if (!idx || e <= s) return [];
    const page = this.#page;
    const out: GuestRange[] = [];
    const hiPage = Number((e + page - 1n) / page);
    for (const slot of idx.overlapping(Number(s / page), hiPage)) {
      const off = slot.guestMemfdOffset;
      const baseGfn = slot.guestPhysAddr / page;
      const lo = s > off ? s : off;
      const hi = e < off + slot.size ? e : off + slot.size;
      if (hi <= lo) continue;
      out.push({ slot, gfnStart: baseGfn + (lo - off) / page, gfnEnd: baseGfn + (hi - off) / page });
    }
    return out;
  }

  /** @internal whether any slot is bound to `gmem` (a punch with none has no guest ranges). */
  _binds(gmem: GuestMemfd): boolean {
    return this.#byFile.has(gmem);
  }

  /** Slots bound to `gmem`, in file order. */
  boundTo(gmem: GuestMemfd): Memslot[] {
    checkGmem(gmem);
    return [...(this.#byFile.get(gmem)?.items() ?? [])];
  }

  /** KVM_SET_USER_MEMORY_REGION2 creating a slot (or, for an existing non-gmem id, moving it
   * or toggling LOG_DIRTY_PAGES, as the kernel does). */
  add(options: MemslotOptions): Memslot {
    this.#vm._checkOpen('ioctl');
    if (typeof options !== 'object' || options === null) throw new TypeError('memslot options must be an object');
    const asId = options.asId === undefined ? 0 : toInt(options.asId, 'asId', 0, 0xffff);
    const gpa = toU64(options.guestPhysAddr, 'guestPhysAddr');
    const size = toU64(options.size, 'size');
    const gmem = options.guestMemfd;
    if (gmem !== undefined && !(gmem instanceof GuestMemfd)) throw new TypeError('guestMemfd must be a GuestMemfd');
    if (options.userspace !== undefined && !(options.userspace instanceof Mapping)) throw new TypeError('userspace must be a Mapping');
    if (gmem === undefined && options.guestMemfdOffset !== undefined) throw new TypeError('guestMemfdOffset needs guestMemfd');
    const gmemOffset = options.guestMemfdOffset === undefined ? 0n : toU64(options.guestMemfdOffset, 'guestMemfdOffset');
    let flags = 0;
    if (toBool(options.readonly, 'readonly')) flags |= MemFlag.READONLY;
    if (toBool(options.logDirtyPages, 'logDirtyPages')) flags |= MemFlag.LOG_DIRTY_PAGES;
    if (gmem) flags |= MemFlag.GUEST_MEMFD;
    if (gmem?.closed) throw kvmError('EBADF', memslotWhere(true), 'guestMemfd is closed');
    const id = options.slot === undefined ? this.#lowestFree(asId) : toInt(options.slot, 'slot', 0, 0xffff);

    // Host memory for the slot.
    let userspace = options.userspace;
    let created = false;
    if (userspace === undefined && gmem?.mmapable && gmem.initShared && gmemOffset + size <= gmem.size) {
      // (A range past the file's end gets no host memory; the kernel refuses it anyway.)
      ({ mapping: userspace, created } = gmem._ownMapping(gmemOffset, size));
    } else if (userspace === undefined && !gmem) {
      throw new TypeError('a memslot without guestMemfd needs userspace memory (a Mapping)');
    }
    try {
      if (userspace?.closed) throw kvmError('EBADF', memslotWhere(true), 'userspace mapping is unmapped');
      let uoff = 0n;
      if (options.userspaceOffset !== undefined) uoff = toU64(options.userspaceOffset, 'userspaceOffset');
      else if (userspace && gmem && userspace.guestMemfd === gmem && gmemOffset >= userspace.offset && gmemOffset + size <= userspace.offset + userspace.length) {
        uoff = gmemOffset - userspace.offset; // the host view aliases the slot's file range
      }
      if (userspace && uoff + size > userspace.length) {
        // A slot larger than its host memory would let the guest reach whatever the process
        // maps next; the kernel cannot tell, so the library refuses.
        throw new RangeError(`slot memory [${hex(uoff)}, ${hex(uoff + size)}) is outside its userspace mapping (${hex(userspace.length)} bytes)`);
      }
      const region: RegionInput = {
        v2: true, slot: (asId << 16) | id, flags, guestPhysAddr: gpa, memorySize: size,
        userspaceAddr: userspace ? userspace.address + uoff : 0n,
        guestMemfdOffset: gmemOffset, guestMemfd: gmem ? gmem.fd : 0,
      };
      if (size === 0n) throw new RangeError('size must be > 0 (use delete() to remove a slot)');
      const decision = this.#apply(region, gmem);
      const existing = decision.existing && this.get(id, asId);
      if (existing) {
        // A non-gmem slot moved or had LOG_DIRTY_PAGES toggled (the kernel's MOVE / FLAGS_ONLY).
        if (decision.op === 'move') {
          const [lo, hi] = [Number(decision.baseGfn), Number(decision.baseGfn + decision.npages)];
          this.#byGfn.get(asId)!.remove(existing);
          this.#radix.get(asId)!.remove(existing);
          existing.guestPhysAddr = gpa;
          this.#byGfn.get(asId)!.insert(lo, hi, existing);
          this.#radix.get(asId)!.insert(lo, hi, existing);
        }
        existing.flags = flags;
        return existing;
      }
      const slot = new Memslot(this.#vm, id, asId, gpa, size, flags, gmem, gmemOffset, userspace, uoff, region.userspaceAddr);
      this.#insert(slot, decision);
      userspace?._pin(slot);
      return slot;
    } catch (e) {
      if (created) userspace!.close();
      throw e;
    }
  }

  /** KVM_SET_USER_MEMORY_REGION2 with size 0. Accepts the Memslot or its id. */
  delete(slot: Memslot | number, asId = 0): void {
    this.#vm._checkOpen('ioctl');
    let id: number;
    if (slot instanceof Memslot) {
      if (slot.vm !== this.#vm) throw new TypeError('that memslot belongs to another VM');
      id = slot.id;
      asId = slot.asId;
    } else {
      id = toInt(slot, 'slot', 0, 0xffff);
      asId = toInt(asId, 'asId', 0, 0xffff);
    }
    const region: RegionInput = {
      v2: true, slot: (asId << 16) | id, flags: 0, guestPhysAddr: 0n, memorySize: 0n,
      userspaceAddr: 0n, guestMemfdOffset: 0n, guestMemfd: 0,
    };
    this.#apply(region, undefined);
    const s = this.get(id, asId)!;
    this.#remove(s);
  }

  /** @internal Forget every slot (the VM is being destroyed). */
  _clear(): void {
    for (const s of this.#byKey.values()) {
      s.userspace?._unpin(s);
      s._markDeleted();
    }
    this.#byKey.clear();
    this.#byGfn.clear();
    this.#radix.clear();
    this.#byFile.clear();
    this.#used.clear();
  }

  /** Runs the rules, then the ioctl; throws the explained error; returns what the kernel did. */
  #apply(region: RegionInput, gmem: GuestMemfd | undefined): MemslotDecision {
    const where = memslotWhere(true);
    const verdict = checkMemslot(region, this.#context(gmem));
    if (isViolation(verdict) && this.#vm.precheck && BOOK_RULES.has(verdict.rule)) {
      throw violationError(verdict, where);
    }
    try {
      this.#vm._raw.setUserMemoryRegion2(this.#vm.fd, region);
    } catch (e) {
      throw explain(e, isViolation(verdict) ? verdict : undefined, where);
    }
    if (isViolation(verdict)) {
      // The kernel accepted what the rules refused: the kernel is right; keep the books true.
      log('memslot: kernel accepted a region the rules refused (%s: %s)', verdict.rule, verdict.message);
      const asId = region.slot >>> 16;
      const id = region.slot & 0xffff;
      const page = this.#page;
      const existing = this.get(id, asId);
      return {
        op: region.memorySize === 0n ? 'delete' : existing ? 'move' : 'create', asId, id,
        baseGfn: region.guestPhysAddr / page, npages: region.memorySize / page,
        ...(existing ? { existing: view(existing, page) } : {}),
      };
    }
    return verdict;
  }

  #context(gmem: GuestMemfd | undefined): MemslotContext {
    const page = this.#page;
    const vm = this.#vm;
    return {
      pageSize: page,
      readonlyMem: vm._caps.readonlyMem,
      guestMemfd: vm._caps.guestMemfd,
      addressSpaces: vm._caps.addressSpaces,
      userAddressMax: USER_ADDRESS_MAX,
      maxGfn: MAX_GFN_52,
      slot: (asId, id) => {
        const s = this.get(id, asId);
        return s && view(s, page);
      },
      overlapping: (asId, id, start, end) => {
        const s = this.#byGfn.get(asId)?.firstOverlap(Number(start), Number(end), (x) => x.id !== id);
        return s && view(s, page);
      },
      gmem: () => {
        if (!gmem || gmem.closed) return { kind: 'ebadf' };
        if (gmem.vm !== vm) return { kind: 'foreign' };
        const idx = this.#byFile.get(gmem);
        return {
          kind: 'ok',
          size: gmem.size,
          boundSlot: (pgStart, pgEnd) => {
            const s = idx?.firstOverlap(Number(pgStart), Number(pgEnd));
            return s && view(s, page);
          },
        };
      },
    };
  }

  #insert(slot: Memslot, d: MemslotDecision): void {
    const key = (slot.asId << 16) | slot.id;
    this.#byKey.set(key, slot);
    let idx = this.#byGfn.get(slot.asId);
    if (!idx) this.#byGfn.set(slot.asId, (idx = new IntervalIndex()));
    idx.insert(Number(d.baseGfn), Number(d.baseGfn + d.npages), slot);
    let radix = this.#radix.get(slot.asId);
    if (!radix) this.#radix.set(slot.asId, (radix = new GfnRadix()));
    radix.insert(Number(d.baseGfn), Number(d.baseGfn + d.npages), slot);
    if (slot.guestMemfd) {
      let f = this.#byFile.get(slot.guestMemfd);
      if (!f) this.#byFile.set(slot.guestMemfd, (f = new IntervalIndex()));
      const pg = Number(slot.guestMemfdOffset / this.#page);
      f.insert(pg, pg + Number(d.npages), slot);
    }
    this.#bitmap(slot.asId)[slot.id >>> 5]! |= 1 << (slot.id & 31);
  }

  #remove(slot: Memslot): void {
    this.#byKey.delete((slot.asId << 16) | slot.id);
    this.#byGfn.get(slot.asId)?.remove(slot);
    this.#radix.get(slot.asId)?.remove(slot);
    if (slot.guestMemfd) {
      const f = this.#byFile.get(slot.guestMemfd);
      f?.remove(slot);
      if (f && f.count === 0) this.#byFile.delete(slot.guestMemfd);
    }
    this.#bitmap(slot.asId)[slot.id >>> 5]! &= ~(1 << (slot.id & 31));
    slot.userspace?._unpin(slot);
    if (slot.userspace) slot.userspace.guestMemfd._releaseOwn(slot.userspace);
    slot._markDeleted();
  }

  #bitmap(asId: number): Uint32Array {
    let b = this.#used.get(asId);
    if (!b) this.#used.set(asId, (b = new Uint32Array(2048)));
    return b;
  }

  #lowestFree(asId: number): number {
    const b = this.#bitmap(asId);
    for (let w = 0; w < b.length; w++) {
      if (b[w] !== 0xffffffff) {
        const lowestZero = ~b[w]! & (b[w]! + 1);
        const slot = w * 32 + (31 - Math.clz32(lowestZero));
        if (slot < KVM_USER_MEM_SLOTS) return slot;
        break;
      }
    }
    throw kvmError('EINVAL', memslotWhere(true), `every slot id below KVM_USER_MEM_SLOTS (${KVM_USER_MEM_SLOTS}) is in use`);
  }
}

function checkGmem(g: unknown): void {
  if (!(g instanceof GuestMemfd)) throw new TypeError(`gmem must be a GuestMemfd, got ${typeName(g)}`);
}

function view(s: Memslot, page: bigint): SlotView {
  return { asId: s.asId, id: s.id, baseGfn: s.guestPhysAddr / page, npages: s.size / page, flags: s.flags, userspaceAddr: s.userspaceAddr };
}

/** A kernel error, explained by the rule that predicted it when the codes agree. */
export function explain(e: unknown, v: Violation | undefined, where: { syscall: string; request?: string }): unknown {
  const code = (e as KvmError).code;
  if (v && code === v.code) return violationError(v, where);
  if (v) log('rules predicted %s (%s) but the kernel said %s', v.code, v.rule, code);
  return e;
}
