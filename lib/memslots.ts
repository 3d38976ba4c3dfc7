import { bigOf, hex, safeNumber, toBool, toInt, toOptions, toU64, typeName, type U64 } from './base/args.js';
import { kvmError } from './base/errors.js';
import { IntervalIndex } from './base/interval.js';
import { log } from './base/log.js';
import { KVM_USER_MEM_SLOTS, MemFlag, USER_ADDRESS_MAX } from './base/uapi.js';
import { checkToken, CREATE, type VmContext } from './context.js';
import { isGuestMemfd, type GuestMemfd } from './gmem.js';
import { isMapping, pinMapping, unpinMapping, type Mapping } from './mapping.js';
import { checkMemslot, isViolation, MAX_GFN_52, memslotWhere, type MemslotContext, type MemslotDecision, type RegionInput, type SlotView } from './rules/memslot.js';
import { explainRefusal, violationError } from './rules/types.js';
import type { Vm } from './vm.js';

/** Options of MemslotTable.add(): the fields of a KVM_SET_USER_MEMORY_REGION2 call. */
export interface MemslotOptions {
  /** Slot id (bits 15:0); the lowest free id when omitted. */
  slot?: number;
  /** Address space id (bits 31:16 of the kernel's slot field), default 0. */
  asId?: number;
  /** First guest-physical address, in bytes (page-aligned). */
  guestPhysAddr: U64;
  /** Size in bytes: positive and a multiple of the page size. */
  size: U64;
  /** The guest_memfd that backs the slot's private memory (KVM_MEM_GUEST_MEMFD). */
  guestMemfd?: GuestMemfd;
  /** Byte offset of the slot's memory in `guestMemfd` (page-aligned), default 0. */
  guestMemfdOffset?: U64;
  /**
   * Host memory for the slot: a Mapping owned by the library (shared memory, or a gmem's).
   * Omitted on a gmem created with mmap + initShared: the gmem's own mapping at the slot's
   * offset. Omitted on another gmem: none (userspace_addr 0).
   */
  userspace?: Mapping;
  /** Byte offset of the slot's memory in `userspace`; by default 0, or for a mapping of the
   * slot's own gmem, the slot's file offset within it (so both views alias). */
  userspaceOffset?: U64;
  /** KVM_MEM_READONLY: guest writes exit as MMIO. */
  readonly?: boolean;
  /** KVM_MEM_LOG_DIRTY_PAGES: KVM logs the pages the guest writes. */
  logDirtyPages?: boolean;
}

/** A guest frame range that a file range backs through one memslot (end exclusive). */
export interface GuestRange {
  /** The memslot through which the file range backs guest memory. */
  slot: Memslot;
  /** First guest frame number (gpa / page size). */
  gfnStart: bigint;
  /** Guest frame number just past the range. */
  gfnEnd: bigint;
}

/** What backs a guest-physical address: MemslotTable.translate()'s answer. */
export interface Translation {
  /** The memslot containing the address. */
  slot: Memslot;
  /** Byte offset of the gpa within the slot. */
  slotOffset: bigint;
  /** The slot's guest_memfd (gmem slots), else undefined. */
  guestMemfd: GuestMemfd | undefined;
  /** File offset in guestMemfd (gmem slots). */
  offset: bigint | undefined;
  /** Host address of the gpa through the slot's userspace memory (0n when none). */
  userspaceAddr: bigint;
}

/** What the books record of a slot that the public object only reads. */
interface SlotState {
  guestPhysAddr: bigint;
  flags: number;
  books: MemslotBooks;
  /** Its first guest frame and its file page (0 without a gmem), which fit in a double. */
  gfn: number;
  filePage: number;
  /** Its size in pages. */
  npages: number;
}

/** What a Memslot is made from. */
type SlotInit = Omit<Memslot, 'guestPhysAddr' | 'flags' | 'readonly' | 'logDirtyPages' | 'deleted' | 'end' | 'delete' | 'toString' | typeof Symbol.dispose> & SlotState;

/** The books moved a slot (the kernel's MOVE) or changed its flags (FLAGS_ONLY). */
let placeSlot: (s: Memslot, guestPhysAddr: bigint, gfn: number, flags: number) => void;
/**
 * The books' record of a slot, kept on the slot itself (no map from slots to entries): where
 * it starts in the books' indexes (first gfn, file page) and its size in pages, as doubles.
 */
let gfnOf: (s: Memslot) => number;
let filePageOf: (s: Memslot) => number;
let pagesOf: (s: Memslot) => number;
/** The slot as the rules read it, made when they first ask (for a delete, a move, a
 * conflict): a slot that is only added and looked up never needs one. */
let viewOf: (s: Memslot) => SlotView;
/** Whether `x` is a Memslot the library made. */
export let isMemslot: (x: unknown) => x is Memslot;

/** A memslot the VM has (KVM_SET_USER_MEMORY_REGION2): a read-only view of the kernel's slot. */
export class Memslot {
  /** The VM whose slot it is. */
  readonly vm: Vm;
  /** Slot id (bits 15:0 of the kernel's slot field). */
  readonly id: number;
  /** Address space id (bits 31:16 of the kernel's slot field). */
  readonly asId: number;
  /** Size in bytes. */
  readonly size: bigint;
  /** The guest_memfd bound to the slot (KVM_MEM_GUEST_MEMFD), else undefined. */
  readonly guestMemfd: GuestMemfd | undefined;
  /** Byte offset of the slot's memory in `guestMemfd` (0n without one). */
  readonly guestMemfdOffset: bigint;
  /** The slot's host memory. */
  readonly userspace: Mapping | undefined;
  /** Byte offset of the slot's memory in `userspace`. */
  readonly userspaceOffset: bigint;
  /** The userspace_addr the kernel was given (0n when none). */
  readonly userspaceAddr: bigint;
  #guestPhysAddr: bigint;
  #flags: number;
  #books: MemslotBooks;
  // Numbers, not an object of their own: a VMM keeps every slot for the VM's life, and each
  // object a slot holds is one more for the garbage collector to copy while slots are added
  // (a third of the time of a batch of adds went there).
  #gfn: number;
  #filePage: number;
  #pages: number;
  #view: SlotView | undefined;

  /** @hidden made by MemslotTable.add() */
  constructor(token: symbol, init: SlotInit) {
    checkToken(token, 'Memslot', 'vm.memslots.add()');
    this.vm = init.vm;
    this.id = init.id;
    this.asId = init.asId;
    this.size = init.size;
    this.guestMemfd = init.guestMemfd;
    this.guestMemfdOffset = init.guestMemfdOffset;
    this.userspace = init.userspace;
    this.userspaceOffset = init.userspaceOffset;
    this.userspaceAddr = init.userspaceAddr;
    this.#guestPhysAddr = init.guestPhysAddr;
    this.#flags = init.flags;
    this.#books = init.books;
    this.#gfn = init.gfn;
    this.#filePage = init.filePage;
    this.#pages = init.npages;
    // Read-only for real: delete() and the books trust id, asId and userspace.
    Object.freeze(this);
  }

  static {
    placeSlot = (s, guestPhysAddr, gfn, flags) => {
      s.#guestPhysAddr = guestPhysAddr;
      s.#flags = flags;
      s.#gfn = gfn;
      s.#view = undefined;
    };
    gfnOf = (s) => s.#gfn;
    filePageOf = (s) => s.#filePage;
    pagesOf = (s) => s.#pages;
    viewOf = (s) =>
      (s.#view ??= { asId: s.asId, id: s.id, baseGfn: s.#gfn, npages: s.#pages, flags: s.#flags, userspaceAddr: s.userspaceAddr });
    isMemslot = (x: unknown): x is Memslot => typeof x === 'object' && x !== null && #books in x;
  }

  /** The slot's first guest-physical address (a non-gmem slot can move). */
  get guestPhysAddr(): bigint {
    return this.#guestPhysAddr;
  }
  /** KVM_MEM_* flags. */
  get flags(): number {
    return this.#flags;
  }
  /** KVM_MEM_READONLY: guest writes exit as MMIO. */
  get readonly(): boolean {
    return (this.flags & MemFlag.READONLY) !== 0;
  }
  /** KVM_MEM_LOG_DIRTY_PAGES: KVM logs the pages the guest writes. */
  get logDirtyPages(): boolean {
    return (this.flags & MemFlag.LOG_DIRTY_PAGES) !== 0;
  }
  /** Whether the slot is gone (deleted, or its VM closed). */
  get deleted(): boolean {
    return this.#books.get(this.id, this.asId) !== this;
  }
  /** The guest-physical address just past the slot (guestPhysAddr + size). */
  get end(): bigint {
    return this.guestPhysAddr + this.size;
  }
  /** Deletes the slot (KVM_SET_USER_MEMORY_REGION2 with size 0); a no-op once deleted or
   * once its VM is closed. */
  delete(): void {
    if (this.deleted || this.vm.closed) return;
    this.vm.memslots.delete(this);
  }
  /** `using slot = vm.memslots.add(...)` deletes it at the end of the scope, before the
   * memory declared earlier is unmapped. */
  [Symbol.dispose](): void {
    this.delete();
  }
  /** 'slot ID [START, END)', plus ' gmem@OFFSET' for a gmem slot (addresses in hex). */
  toString(): string {
    const g = this.guestMemfd ? ` gmem@${hex(this.guestMemfdOffset)}` : '';
    return `slot ${this.id} [${hex(this.guestPhysAddr)}, ${hex(this.end)})${g}`;
  }
}

const keyOf = (asId: number, id: number) => (asId << 16) | id;

/**
 * One address space's slots by guest frame, and beside each (by the index's slot number) what
 * translate() reads, in one row of a typed array: the first gfn, the file offset and
 * userspace_addr in pages, and the gmem (a small id). A lookup then touches the region entry,
 * that row and the slot reference, not the Memslot object and its BigInt fields: spread over
 * 32,764 slots, every separate array or object touched is a cache miss.
 */
class SpaceBooks {
  readonly index = new IntervalIndex<Memslot>();
  /** [first gfn, guestMemfdOffset / page, userspaceAddr / page, gmem id] by slot number. */
  rows = new Float64Array(4 * 32);
  /** Gmem ids (0: none), counted by the slots using them, reused once none does. */
  gmems: (GuestMemfd | undefined)[] = [undefined];
  #gmemIds = new Map<GuestMemfd, { id: number; slots: number }>();
  #freeIds: number[] = [];

  insert(slot: Memslot, pageSize: number): void {
    const gfn = gfnOf(slot);
    const n = this.index.insert(gfn, gfn + pagesOf(slot), slot);
    if (this.rows.length < 4 * (n + 1)) {
      const grown = new Float64Array(this.rows.length * 2);
      grown.set(this.rows);
      this.rows = grown;
    }
    const r = 4 * n;
    this.rows[r] = gfn;
    this.rows[r + 1] = filePageOf(slot);
    this.rows[r + 2] = slot.userspaceAddr === 0n ? 0 : Number(slot.userspaceAddr) / pageSize; // (aligned: exact)
    this.rows[r + 3] = slot.guestMemfd ? this.#gmemId(slot.guestMemfd) : 0;
  }

  remove(slot: Memslot): void {
    const n = this.index.remove(gfnOf(slot), slot);
    const g = slot.guestMemfd;
    const e = n >= 0 && g ? this.#gmemIds.get(g) : undefined;
    if (e && --e.slots === 0) {
      this.#gmemIds.delete(g!);
      this.gmems[e.id] = undefined;
      this.#freeIds.push(e.id);
    }
  }

  #gmemId(g: GuestMemfd): number {
    let e = this.#gmemIds.get(g);
    if (!e) {
      const id = this.#freeIds.pop() ?? this.gmems.length;
      this.gmems[id] = g;
      this.#gmemIds.set(g, (e = { id, slots: 0 }));
    }
    e.slots++;
    return e.id;
  }
}

/**
 * Slot keys ((asId << 16) | id) as bits, 65,536 per address space: the books' used ids (for
 * the lowest free one) and the slots a deleteMany() run has queued (a Set per call cost its
 * hashing and growth on every batch).
 */
class KeyBits {
  #spaces = new Map<number, Uint32Array>();

  #words(asId: number): Uint32Array {
    let w = this.#spaces.get(asId);
    if (!w) this.#spaces.set(asId, (w = new Uint32Array(2048)));
    return w;
  }
  has(key: number): boolean {
    return (this.#words(key >>> 16)[(key & 0xffff) >>> 5]! & (1 << (key & 31))) !== 0;
  }
  add(key: number): void {
    this.#words(key >>> 16)[(key & 0xffff) >>> 5]! |= 1 << (key & 31);
  }
  delete(key: number): void {
    this.#words(key >>> 16)[(key & 0xffff) >>> 5]! &= ~(1 << (key & 31));
  }
  clear(): void {
    this.#spaces.clear();
  }
  /** The lowest id of `asId` whose bit is clear (undefined when all 65,536 are set). */
  lowestClear(asId: number): number | undefined {
    const b = this.#words(asId);
    for (let w = 0; w < b.length; w++) {
      if (b[w] !== 0xffffffff) {
        const lowestZero = ~b[w]! & (b[w]! + 1);
        return w * 32 + (31 - Math.clz32(lowestZero));
      }
    }
    return undefined;
  }
}

/**
 * The VM's memslot books: slots by id, by guest frame per address space, and per gmem by file
 * page. Changed only after the backend accepted a change, so they equal the kernel's state.
 * Internal: the public face is MemslotTable.
 */
export class MemslotBooks {
  readonly page: bigint;
  /** Slots by id, per address space (arrays: a Map of 32,764 number keys cost a tenth of an
   * add and a delete in hashing and rehashing). Address space 0 has its own field. */
  #byId0: (Memslot | undefined)[] = [];
  #byId = new Map<number, (Memslot | undefined)[]>();
  #count = 0;
  /** Per address space: the slots by guest frame (ordered, and a point lookup of a few hash probes). */
  #byGfn = new Map<number, SpaceBooks>();
  #byFile = new Map<GuestMemfd, IntervalIndex<Memslot>>();
  /** Used slot ids of each address space (bitmaps, for the lowest free id). */
  #used = new KeyBits();
  /** Mappings the books made for slots given no host memory: unmapped with their last slot. */
  #own = new Set<Mapping>();

  readonly #pageSize: number;

  constructor(pageSize: number) {
    this.page = BigInt(pageSize);
    this.#pageSize = pageSize;
  }

  get size(): number {
    return this.#count;
  }

  get(id: number, asId: number): Memslot | undefined {
    return (asId === 0 ? this.#byId0 : this.#byId.get(asId))?.[id];
  }

  /** The slot of `asId` containing `gfn`. */
  find(gfn: number, asId: number): Memslot | undefined {
    return this.#byGfn.get(asId)?.index.containing(gfn);
  }

  /**
   * gpa -> (slot, gmem, file offset, host address) in address space `asId`, for `gfn` (the
   * frame of `gpa`, whose value as a double is `at`: -1 past 2^53 - 1). From the typed arrays where every figure is an exact double (always, for
   * a gpa below 2^53 and what a slot can map), else from the slot's own fields.
   */
  translate(gfn: number, gpa: U64, at: number, asId: number): Translation | undefined {
    const sp = this.#byGfn.get(asId);
    if (!sp) return undefined;
    const n = sp.index.slotContaining(gfn);
    if (n < 0) return undefined;
    const slot = sp.index.itemAt(n);
    const rows = sp.rows;
    const r = 4 * n;
    const guestMemfd = sp.gmems[rows[r + 3]!];
    const page = this.#pageSize;
    const inSlot = at - rows[r]! * page;
    const fileAt = rows[r + 1]! * page + inSlot;
    const upg = rows[r + 2]!;
    const hostAt = upg * page + inSlot;
    if (at >= 0 && fileAt <= Number.MAX_SAFE_INTEGER && hostAt <= Number.MAX_SAFE_INTEGER) {
      return { slot, slotOffset: bigOf(inSlot), guestMemfd, offset: guestMemfd ? bigOf(fileAt) : undefined, userspaceAddr: upg === 0 ? 0n : bigOf(hostAt) };
    }
    const g = BigInt(gpa);
    const slotOffset = g - slot.guestPhysAddr;
    return {
      slot,
      slotOffset,
      guestMemfd,
      offset: guestMemfd ? slot.guestMemfdOffset + slotOffset : undefined,
      userspaceAddr: slot.userspaceAddr === 0n ? 0n : slot.userspaceAddr + slotOffset,
    };
  }

  list(): Memslot[] {
    return [...this.#byGfn.keys()].sort((a, b) => a - b).flatMap((as) => [...this.#byGfn.get(as)!.index.items()]);
  }

  /** Whether any slot is bound to `gmem` (a punch with none invalidates no guest range). */
  binds(gmem: GuestMemfd): boolean {
    return this.#byFile.has(gmem);
  }

  boundTo(gmem: GuestMemfd): Memslot[] {
    return [...(this.#byFile.get(gmem)?.items() ?? [])];
  }

  /** The slot bound to the file page containing `offset` of `gmem`. */
  boundAt(gmem: GuestMemfd, offset: bigint): Memslot | undefined {
    return this.#byFile.get(gmem)?.containing(Number(offset / this.page));
  }

  /**
   * The guest frame ranges that the file range [start, end) of `gmem` backs: one per slot
   * bound to an overlapping range, clamped at both ends, in file order.
   *   gfnStart = base_gfn + (max(start, off) - off) / page
   *   gfnEnd   = base_gfn + (min(end, off + size) - off) / page
   */
  rangesOf(gmem: GuestMemfd, start: bigint, end: bigint): GuestRange[] {
    const idx = this.#byFile.get(gmem);
    if (!idx || end <= start) return [];
    const page = this.page;
    const out: GuestRange[] = [];
    for (const slot of idx.overlapping(Number(start / page), Number((end + page - 1n) / page))) {
      const off = slot.guestMemfdOffset;
      const baseGfn = slot.guestPhysAddr / page;
      const lo = start > off ? start : off;
      const hi = end < off + slot.size ? end : off + slot.size;
      if (hi <= lo) continue;
      out.push({ slot, gfnStart: baseGfn + (lo - off) / page, gfnEnd: baseGfn + (hi - off) / page });
    }
    return out;
  }

  /** The view of the books the rules take (what the kernel would look up). */
  context(vm: VmContext, gmem: GuestMemfd | undefined): MemslotContext {
    // Made once per VM (its capabilities do not change), with the gmem of this call: a
    // memslot call builds no closures.
    this.#contextGmem = gmem;
    return (this.#context ??= this.#makeContext(vm));
  }

  #context: MemslotContext | undefined;
  #contextGmem: GuestMemfd | undefined;

  #makeContext(vm: VmContext): MemslotContext {
    const page = this.page;
    const caps = vm.caps();
    const boundSlot = (pgStart: number, pgEnd: number): SlotView | undefined => {
      const s = this.#byFile.get(this.#contextGmem!)?.firstOverlap(pgStart, pgEnd);
      return s && viewOf(s);
    };
    const ok = { kind: 'ok' as const, size: 0n, boundSlot };
    return {
      pageSize: page,
      readonlyMem: caps.readonlyMem,
      guestMemfd: caps.guestMemfd,
      addressSpaces: caps.addressSpaces,
      userAddressMax: USER_ADDRESS_MAX,
      maxGfn: MAX_GFN_52,
      slot: (asId, id) => {
        const s = this.get(id, asId);
        return s && viewOf(s);
      },
      overlapping: (asId, id, start, end) => {
        const s = this.#byGfn.get(asId)?.index.firstOverlap(start, end, this.get(id, asId));
        return s && viewOf(s);
      },
      gmem: () => {
        const gmem = this.#contextGmem;
        if (!gmem || gmem.closed) return { kind: 'ebadf' };
        if (gmem.vm !== vm.vm) return { kind: 'foreign' };
        // (One answer object, refilled: the rules read it at once and keep nothing.)
        ok.size = gmem.size;
        return ok;
      },
    };
  }

  insert(slot: Memslot, d: MemslotDecision): void {
    this.#ids(slot.asId)[slot.id] = slot;
    this.#count++;
    let sp = this.#byGfn.get(slot.asId);
    if (!sp) this.#byGfn.set(slot.asId, (sp = new SpaceBooks()));
    sp.insert(slot, this.#pageSize);
    if (slot.guestMemfd) {
      let f = this.#byFile.get(slot.guestMemfd);
      if (!f) this.#byFile.set(slot.guestMemfd, (f = new IntervalIndex()));
      const pg = filePageOf(slot);
      f.insert(pg, pg + pagesOf(slot), slot);
    }
    this.#used.add(keyOf(slot.asId, slot.id));
    if (slot.userspace) pinMapping(slot.userspace, slot);
  }

  /** A non-gmem slot moved (the kernel's MOVE) or toggled LOG_DIRTY_PAGES (FLAGS_ONLY). */
  change(slot: Memslot, d: MemslotDecision, flags: number): void {
    const move = d.op === 'move';
    const sp = this.#byGfn.get(slot.asId)!;
    if (move) sp.remove(slot);
    placeSlot(slot, move ? BigInt(d.baseGfn) * this.page : slot.guestPhysAddr, move ? d.baseGfn : gfnOf(slot), flags);
    if (move) sp.insert(slot, this.#pageSize);
  }

  remove(slot: Memslot): void {
    if (this.get(slot.id, slot.asId) === slot) {
      this.#ids(slot.asId)[slot.id] = undefined;
      this.#count--;
    }
    this.#byGfn.get(slot.asId)?.remove(slot);
    if (slot.guestMemfd) {
      const f = this.#byFile.get(slot.guestMemfd);
      f?.remove(filePageOf(slot), slot);
      if (f && f.count === 0) this.#byFile.delete(slot.guestMemfd);
    }
    this.#used.delete(keyOf(slot.asId, slot.id));
    if (slot.userspace) this.#unpin(slot.userspace, slot);
  }

  #unpin(m: Mapping, slot: Memslot): void {
    unpinMapping(m, slot);
    if (this.#own.has(m) && m.slots.length === 0) {
      this.#forgetOwn(m);
      m.close();
    }
  }

  /** Own mappings by gmem and file page (they cover disjoint bound ranges), for ownMapping(). */
  #ownByFile = new Map<GuestMemfd, IntervalIndex<Mapping>>();

  #forgetOwn(m: Mapping): boolean {
    if (!this.#own.delete(m)) return false;
    const idx = m.guestMemfd && this.#ownByFile.get(m.guestMemfd);
    if (idx) {
      idx.remove(Number(m.offset / this.page), m);
      if (idx.count === 0) this.#ownByFile.delete(m.guestMemfd!);
    }
    return true;
  }

  /** Forgets every slot (the VM is being destroyed, and the kernel with it). */
  clear(): void {
    const slots = [this.#byId0, ...this.#byId.values()].flatMap((ids) => ids.filter((s) => s !== undefined));
    this.#byId0 = [];
    this.#byId.clear();
    this.#count = 0;
    this.#byGfn.clear();
    this.#byFile.clear();
    this.#used.clear();
    for (const s of slots) if (s.userspace) this.#unpin(s.userspace, s);
    this.#ownByFile.clear();
  }

  /**
   * A mapping of `gmem` covering [offset, offset + size) for a slot given no host memory: one
   * the books made earlier, else a new one of exactly that range (never the whole file: a
   * simulated terabyte file cannot be mapped whole). `made`: whether it is new.
   */
  ownMapping(gmem: GuestMemfd, offset: bigint, size: bigint): { mapping: Mapping; made: boolean } {
    const first = Number(offset / this.page);
    const last = Number((offset + size + this.page - 1n) / this.page);
    let idx = this.#ownByFile.get(gmem);
    const m = idx?.firstOverlap(first, last);
    if (m && !m.closed && m.offset <= offset && offset + size <= m.offset + m.length) return { mapping: m, made: false };
    const mapping = gmem.map({ offset, length: size });
    this.#own.add(mapping);
    // (An overlap left here would be a mapping that is not wholly in the way: keep it unindexed.)
    if (!m) {
      if (!idx) this.#ownByFile.set(gmem, (idx = new IntervalIndex()));
      idx.insert(first, last, mapping);
    }
    return { mapping, made: true };
  }

  /** Unmaps a mapping ownMapping() made for a slot that was then refused. */
  dropOwn(m: Mapping): void {
    if (this.#forgetOwn(m) && m.slots.length === 0) m.close();
  }

  #ids(asId: number): (Memslot | undefined)[] {
    if (asId === 0) return this.#byId0;
    let ids = this.#byId.get(asId);
    if (!ids) this.#byId.set(asId, (ids = []));
    return ids;
  }

  lowestFree(asId: number): number | undefined {
    const id = this.#used.lowestClear(asId);
    return id !== undefined && id < KVM_USER_MEM_SLOTS ? id : undefined;
  }
}


function checkGmem(g: unknown): GuestMemfd {
  if (!isGuestMemfd(g)) throw new TypeError(`gmem must be a GuestMemfd, got ${typeName(g)}`);
  return g;
}

/**
 * A slot on its way in: MemslotOptions read once and checked for type (a getter cannot
 * change one afterwards), then what add() decides before the call (#prepare fills the rest),
 * then the new Memslot's init (#place). One object from options to slot: a batch of adds
 * makes a few objects per slot, not one per stage.
 */
interface Prepared {
  asId: number;
  /** The id asked for (undefined: the lowest free), then the one used. */
  slot: number | undefined;
  id: number;
  guestPhysAddr: bigint;
  size: bigint;
  guestMemfd: GuestMemfd | undefined;
  guestMemfdOffset: bigint;
  userspace: Mapping | undefined;
  /** As given (undefined: derived), then as used. */
  userspaceOffset: bigint | undefined;
  userspaceAddr: bigint;
  flags: number;
  /** `userspace` is an own mapping made for this slot. */
  made: boolean;
  region: RegionInput | undefined;
  vm: Vm | undefined;
  books: MemslotBooks | undefined;
  gfn: number;
  npages: number;
  filePage: number;
}

function readOptions(options: MemslotOptions): Prepared {
  // Each option read once, into a local (a getter runs once; no copy of the object is made).
  const {
    asId: asIdOption, guestPhysAddr, size: sizeOption, guestMemfd: gmem, userspace, guestMemfdOffset, userspaceOffset: uoffOption,
    readonly, logDirtyPages, slot: slotOption,
  } = toOptions(options, 'memslot options');
  const asId = asIdOption === undefined ? 0 : toInt(asIdOption, 'asId', 0, 0xffff);
  const gpa = toU64(guestPhysAddr, 'guestPhysAddr');
  const size = toU64(sizeOption, 'size');
  if (gmem !== undefined && !isGuestMemfd(gmem)) throw new TypeError(`guestMemfd must be a GuestMemfd, got ${typeName(gmem)}`);
  if (userspace !== undefined && !isMapping(userspace)) throw new TypeError(`userspace must be a Mapping, got ${typeName(userspace)}`);
  if (gmem === undefined && guestMemfdOffset !== undefined) throw new TypeError('guestMemfdOffset needs guestMemfd');
  const gmemOffset = guestMemfdOffset === undefined ? 0n : toU64(guestMemfdOffset, 'guestMemfdOffset');
  const userspaceOffset = uoffOption === undefined ? undefined : toU64(uoffOption, 'userspaceOffset');
  let flags = 0;
  if (toBool(readonly, 'readonly')) flags |= MemFlag.READONLY;
  if (toBool(logDirtyPages, 'logDirtyPages')) flags |= MemFlag.LOG_DIRTY_PAGES;
  if (gmem) flags |= MemFlag.GUEST_MEMFD;
  if (size === 0n) throw new RangeError('size must be > 0 (use delete() to remove a slot)');
  const slot = slotOption === undefined ? undefined : toInt(slotOption, 'slot', 0, 0xffff);
  return {
    asId, slot, id: -1, guestPhysAddr: gpa, size, guestMemfd: gmem, guestMemfdOffset: gmemOffset, userspace, userspaceOffset,
    userspaceAddr: 0n, flags, made: false, region: undefined, vm: undefined, books: undefined, gfn: 0, npages: 0, filePage: 0,
  };
}

/** A batch entry that did not read: it fails when its turn comes, as in a loop. */
class Unreadable {
  constructor(readonly error: unknown) {}
}

/** Every entry of an iterable (a TypeError for anything else). */
function listOf<T>(list: Iterable<T>, name: string): T[] {
  if (typeof (list as { [Symbol.iterator]?: unknown } | null)?.[Symbol.iterator] !== 'function' || typeof list === 'string') {
    throw new TypeError(`${name} must be an iterable, got ${typeName(list)}`);
  }
  return Array.from(list);
}

/** `e`, marked with the batch entry it is about. */
function withIndex(e: unknown, index: number): unknown {
  if (typeof e === 'object' && e !== null && !Object.isFrozen(e)) Object.defineProperty(e, 'index', { value: index, enumerable: true, configurable: true, writable: true });
  return e;
}

/** The region that deletes slot `key` ((asId << 16) | id). */
function deleteRegion(key: number): RegionInput {
  return { v2: true, slot: key, flags: 0, guestPhysAddr: 0n, memorySize: 0n, userspaceAddr: 0n, guestMemfdOffset: 0n, guestMemfd: 0 };
}

/** A run of batch entries booked but not yet sent: their slots, regions and positions. */
class Run {
  slots: Memslot[] = [];
  regions: RegionInput[] = [];
  indexes: number[] = [];
  /** How many the kernel took, after a flush. */
  done = 0;
  push(slot: Memslot, region: RegionInput, index: number): void {
    this.slots.push(slot);
    this.regions.push(region);
    this.indexes.push(index);
  }
  /** Empties the run; throws the flush's refusal, if any. */
  end(error: unknown): void {
    this.slots.length = this.regions.length = this.indexes.length = 0;
    this.done = 0;
    if (error !== undefined) throw error;
  }
}

/**
 * The VM's memslots (KVM_SET_USER_MEMORY_REGION2), and the books a VMM needs about them: which
 * slot backs a guest address, which guest ranges a file range backs. Conflicts are checked
 * against the books before the call, so the error names the slot or range in the way.
 */
export class MemslotTable {
  readonly #ctx: VmContext;
  readonly #books: MemslotBooks;
  readonly #pageSize: number;
  /** The slots the running deleteMany() has queued (empty between calls). */
  readonly #queued = new KeyBits();

  /** @hidden made with its VM */
  constructor(token: symbol, ctx: VmContext) {
    checkToken(token, 'MemslotTable', 'Kvm.createVm()');
    this.#ctx = ctx;
    this.#books = ctx.books;
    this.#pageSize = ctx.pageSize;
  }

  /** The number of slots, over every address space. */
  get size(): number {
    return this.#books.size;
  }

  /** Every slot, ordered by address space then guest address. */
  list(): Memslot[] {
    return this.#books.list();
  }

  /** The slots, in list() order. */
  [Symbol.iterator](): IterableIterator<Memslot> {
    return this.list()[Symbol.iterator]();
  }

  /** The slot `id` of address space `asId`, or undefined. Both are integers in [0, 0xffff]
   * (TypeError, RangeError otherwise). */
  get(id: number, asId = 0): Memslot | undefined {
    return this.#books.get(toInt(id, 'id', 0, 0xffff), toInt(asId, 'asId', 0, 0xffff));
  }

  /** The slot containing `gpa` (address space `asId`), or undefined. A `gpa` that is not a u64
   * is a TypeError or RangeError. */
  find(gpa: U64, asId = 0): Memslot | undefined {
    return this.#books.find(this.#gfn(gpa, safeNumber(gpa, 'gpa')), asId === 0 ? 0 : toInt(asId, 'asId', 0, 0xffff));
  }

  /** The guest frame of `gpa`, from its value as a double (`at`, -1 past 2^53 - 1: then
   * with a BigInt division). */
  #gfn(gpa: U64, at: number): number {
    return at >= 0 ? Math.floor(at / this.#pageSize) : Number(BigInt(gpa) / this.#books.page);
  }

  /** gpa -> (slot, gmem, file offset, host address), or undefined where no slot is. */
  translate(gpa: U64, asId = 0): Translation | undefined {
    const at = safeNumber(gpa, 'gpa');
    return this.#books.translate(this.#gfn(gpa, at), gpa, at, asId === 0 ? 0 : toInt(asId, 'asId', 0, 0xffff));
  }

  /**
   * (gmem, file offset) -> the slot and gpa that it backs, or undefined where unbound: `slot`
   * is bound to the file page containing `offset`, and `gpa` is the guest-physical address
   * that `offset` backs. A `gmem` that is not a GuestMemfd is a TypeError.
   */
  reverse(gmem: GuestMemfd, offset: U64): { slot: Memslot; gpa: bigint } | undefined {
    const g = checkGmem(gmem);
    const off = toU64(offset, 'offset');
    const slot = this.#books.boundAt(g, off);
    return slot && { slot, gpa: slot.guestPhysAddr + (off - slot.guestMemfdOffset) };
  }

  /**
   * The guest frame ranges that the file range [start, end) of `gmem` backs: one per slot
   * bound to an overlapping range, clamped at both ends, in file order.
   */
  guestRanges(gmem: GuestMemfd, start: U64, end: U64): GuestRange[] {
    return this.#books.rangesOf(checkGmem(gmem), toU64(start, 'start'), toU64(end, 'end'));
  }

  /** Slots bound to `gmem`, in file order. */
  boundTo(gmem: GuestMemfd): Memslot[] {
    return this.#books.boundTo(checkGmem(gmem));
  }

  /**
   * KVM_SET_USER_MEMORY_REGION2 creating a slot (or, for an existing non-gmem id, moving it
   * or toggling LOG_DIRTY_PAGES, as the kernel does).
   *
   * Options of the wrong type, and a slot with neither `guestMemfd` nor `userspace`, are
   * TypeErrors; a size of 0, or slot memory past the end of `userspace`, a RangeError. A
   * closed gmem or unmapped `userspace` is EBADF; no free slot id, EINVAL. A conflict with
   * the slots already there names the slot in the way (`conflict`): EEXIST for an overlapping
   * guest range (refused before the call with `precheck`), and for a file range another slot
   * binds, the kernel's own code (EINVAL on 6.18, EEXIST on 7.x). Other refusals are the
   * kernel's KvmError, explained by the rule it applied.
   */
  add(options: MemslotOptions): Memslot {
    this.#ctx.checkOpen('ioctl');
    const p = this.#prepare(readOptions(options));
    try {
      return this.#place(p, this.#apply(p.region!, p.guestMemfd));
    } catch (e) {
      if (p.made) this.#books.dropOwn(p.userspace!);
      throw e;
    }
  }

  /**
   * add() for each entry, in order, with the same checks and errors, but with the kernel calls
   * made back to back (one call into the addon for a run of new slots): what a VMM setting up
   * many slots wants, and under emulation much faster than a loop of add(), whose JavaScript
   * between calls costs more than the calls. Every entry is read (its getters run) before the
   * first call. Returns the slots, one per entry.
   *
   * It stops at the first entry refused, as a loop would: the error has `index`, that entry's
   * position; the entries before it were added (and the books have them); none after it was.
   */
  addMany(list: Iterable<MemslotOptions>): Memslot[] {
    this.#ctx.checkOpen('ioctl');
    const entries = listOf(list, 'memslot options list').map((o) => {
      try {
        return readOptions(o);
      } catch (e) {
        return new Unreadable(e);
      }
    });
    const books = this.#books;
    const out: Memslot[] = [];
    const run = new Run();
    for (let i = 0; i < entries.length; i++) {
      let p: Prepared | undefined;
      try {
        const e = entries[i]!;
        if (e instanceof Unreadable) throw e.error;
        p = this.#prepare(e);
        const verdict = checkMemslot(p.region!, books.context(this.#ctx, p.guestMemfd));
        if (isViolation(verdict) || verdict.existing) {
          // Refused by the rules, or a change to a slot: the single call, which explains it.
          this.#flushAdds(run);
          out.push(this.#place(p, this.#apply(p.region!, p.guestMemfd)));
        } else {
          // Booked now, so that the next entries are checked against it; undone if refused.
          const slot = this.#place(p, verdict);
          run.push(slot, p.region!, i);
          out.push(slot);
        }
      } catch (e) {
        if (p?.made) books.dropOwn(p.userspace!); // (not booked: nothing after booking throws)
        this.#flushAdds(run);
        throw withIndex(e, i);
      }
    }
    this.#flushAdds(run);
    return out;
  }

  /**
   * KVM_SET_USER_MEMORY_REGION2 with size 0. Accepts the Memslot or its id (in address space
   * `asId`). A Memslot of another VM, or a value that is neither, is a TypeError; an id with
   * no slot, the kernel's EINVAL. EBADF once the VM is closed.
   */
  delete(slot: Memslot | number, asId = 0): void {
    this.#ctx.checkOpen('ioctl');
    const key = this.#target(slot, asId);
    this.#apply(deleteRegion(key), undefined);
    const s = this.#books.get(key & 0xffff, key >>> 16);
    if (s) this.#books.remove(s);
  }

  /**
   * delete() for each entry (a Memslot, or a slot id in address space `asId`), in order, with
   * the same checks and errors, the kernel calls made back to back. It stops at the first entry
   * refused: the error has `index`; the entries before it were deleted, none after it.
   */
  deleteMany(slots: Iterable<Memslot | number>, asId = 0): void {
    this.#ctx.checkOpen('ioctl');
    const entries = listOf(slots, 'slots');
    const books = this.#books;
    const run = new Run();
    const queued = this.#queued;
    for (let i = 0; i < entries.length; i++) {
      try {
        const key = this.#target(entries[i]!, asId);
        const s = books.get(key & 0xffff, key >>> 16);
        if (!s || queued.has(key)) {
          // No such slot (yet, or any more): the single call, which explains it.
          this.#flushDeletes(run);
          this.delete(key & 0xffff, key >>> 16);
        } else {
          // A slot the kernel has (the books are its state): every rule of a delete holds
          // (memslot.delete-missing is the only one a size-0 region of a valid id can break).
          queued.add(key);
          run.push(s, deleteRegion(key), i);
        }
      } catch (e) {
        this.#flushDeletes(run);
        throw withIndex(e, i);
      }
    }
    this.#flushDeletes(run);
  }

  /** The (asId << 16) | id that delete() acts on; TypeError/RangeError for anything else. */
  #target(slot: Memslot | number, asId: number): number {
    if (typeof slot === 'object' && slot !== null) {
      if (!isMemslot(slot)) throw new TypeError(`slot must be a Memslot or a slot id, got ${typeName(slot)}`);
      if (slot.vm !== this.#ctx.vm) throw new TypeError('that memslot belongs to another VM');
      return keyOf(slot.asId, slot.id);
    }
    return keyOf(toInt(asId, 'asId', 0, 0xffff), toInt(slot, 'slot', 0, 0xffff));
  }

  /** A run's new slots, to the kernel: the books keep those it took and forget the rest. */
  #flushAdds(run: Run): void {
    const error = this.#flush(run);
    for (let k = run.slots.length - 1; k >= run.done; k--) this.#books.remove(run.slots[k]!);
    run.end(error);
  }

  /** A run's deletions, to the kernel: the books forget the slots it deleted. */
  #flushDeletes(run: Run): void {
    const error = this.#flush(run);
    for (let k = 0; k < run.slots.length; k++) {
      const s = run.slots[k]!;
      this.#queued.delete(keyOf(s.asId, s.id));
      if (k < run.done) this.#books.remove(s);
    }
    run.end(error);
  }

  /** The run's calls back to back; sets run.done; returns the explained refusal, if any. */
  #flush(run: Run): unknown {
    if (run.slots.length === 0) return undefined;
    try {
      this.#ctx.raw.setUserMemoryRegions2(this.#ctx.fd, run.regions);
      run.done = run.slots.length;
      return undefined;
    } catch (e) {
      const i = (e as { index?: unknown } | undefined)?.index;
      run.done = typeof i === 'number' ? i : 0;
      return withIndex(explainRefusal(e, () => undefined, memslotWhere(true)), run.indexes[run.done]!);
    }
  }

  /** Everything add() decides before the call: host memory (perhaps a new own mapping,
   * `made`), the slot id and the region. Throws having dropped what it made. */
  #prepare(p: Prepared): Prepared {
    const { asId, size, guestMemfd: gmem, guestMemfdOffset: gmemOffset, userspaceOffset } = p;
    if (gmem?.closed) throw kvmError('EBADF', memslotWhere(true), 'guestMemfd is closed');
    const id = p.slot ?? this.#lowestFree(asId);
    const books = this.#books;
    // Host memory for the slot.
    let userspace = p.userspace;
    let made = false;
    if (userspace === undefined && gmem?.mmapable && gmem.initShared && gmemOffset + size <= gmem.size) {
      // (A range past the file's end gets no host memory; the kernel refuses it anyway.)
      ({ mapping: userspace, made } = books.ownMapping(gmem, gmemOffset, size));
    } else if (userspace === undefined && !gmem) {
      throw new TypeError('a memslot without guestMemfd needs userspace memory (a Mapping)');
    }
    try {
      if (userspace?.closed) throw kvmError('EBADF', memslotWhere(true), 'userspace mapping is unmapped');
      let uoff = userspaceOffset ?? 0n;
      if (userspaceOffset === undefined && userspace && gmem && userspace.guestMemfd === gmem && gmemOffset >= userspace.offset && gmemOffset + size <= userspace.offset + userspace.length) {
        uoff = gmemOffset - userspace.offset; // the host view aliases the slot's file range
      }
      if (userspace && uoff + size > userspace.length) {
        // A slot larger than its host memory would let the guest reach whatever the process
        // maps next; the kernel cannot tell, so the library refuses.
        throw new RangeError(`slot memory [${hex(uoff)}, ${hex(uoff + size)}) is outside its userspace mapping (${hex(userspace.length)} bytes)`);
      }
      const userspaceAddr = userspace ? userspace.address + uoff : 0n;
      p.id = id;
      p.userspace = userspace;
      p.userspaceOffset = uoff;
      p.userspaceAddr = userspaceAddr;
      p.made = made;
      p.region = {
        v2: true, slot: (asId << 16) | id, flags: p.flags, guestPhysAddr: p.guestPhysAddr, memorySize: size,
        userspaceAddr, guestMemfdOffset: gmemOffset, guestMemfd: gmem ? gmem.fd : 0,
      };
      return p;
    } catch (e) {
      if (made) books.dropOwn(userspace!);
      throw e;
    }
  }

  /** The books after the kernel took `p` as `d`: the slot changed, or a new one. */
  #place(p: Prepared, d: MemslotDecision): Memslot {
    const books = this.#books;
    const existing = d.existing && books.get(p.id, p.asId);
    if (existing) {
      books.change(existing, d, p.flags);
      if (p.made) books.dropOwn(p.userspace!);
      return existing;
    }
    p.vm = this.#ctx.vm;
    p.books = books;
    p.gfn = d.baseGfn;
    p.npages = d.npages;
    p.filePage = p.guestMemfd ? Number(p.guestMemfdOffset) / this.#pageSize : 0; // (the kernel took it: aligned, exact)
    const slot = new Memslot(CREATE, p as SlotInit);
    books.insert(slot, d);
    return slot;
  }

  #lowestFree(asId: number): number {
    const id = this.#books.lowestFree(asId);
    if (id === undefined) throw kvmError('EINVAL', memslotWhere(true), `every slot id below KVM_USER_MEM_SLOTS (${KVM_USER_MEM_SLOTS}) is in use`);
    return id;
  }

  /** Runs the rules, then the ioctl; throws the explained error; returns what the kernel did. */
  #apply(region: RegionInput, gmem: GuestMemfd | undefined): MemslotDecision {
    const ctx = this.#ctx;
    const where = memslotWhere(true);
    const verdict = checkMemslot(region, this.#books.context(ctx, gmem));
    // A conflict with the books is refused before the call, so the error names what is in the
    // way; unless kernels differ on its code, which only the kernel can then give.
    if (isViolation(verdict) && ctx.precheck && verdict.books && !verdict.altCodes) throw violationError(verdict, where);
    try {
      ctx.raw.setUserMemoryRegion2(ctx.fd, region);
    } catch (e) {
      throw explainRefusal(e, () => (isViolation(verdict) ? verdict : undefined), where);
    }
    if (!isViolation(verdict)) return verdict;
    // The kernel accepted what the rules refused: the kernel is right; keep the books true.
    log('memslot: kernel accepted a region the rules refused (%s: %s)', verdict.rule, verdict.message);
    const asId = region.slot >>> 16;
    const id = region.slot & 0xffff;
    const page = this.#books.page;
    const existing = this.#books.get(id, asId);
    return {
      op: region.memorySize === 0n ? 'delete' : existing ? 'move' : 'create', asId, id,
      baseGfn: Number(region.guestPhysAddr / page), npages: Number(region.memorySize / page),
      ...(existing ? { existing: viewOf(existing) } : {}),
    };
  }
}
