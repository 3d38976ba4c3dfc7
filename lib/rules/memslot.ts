/**
 * KVM_SET_USER_MEMORY_REGION(2) validation, rule by rule in the kernel's order
 * (kvm_set_memory_region → kvm_gmem_bind; docs/kernel-rules.md, memslots). Written once: the simulator
 * runs it as the kernel, and the typed layer runs it before the call to name the slot or range
 * in the way (and to explain a kernel refusal).
 */
import { hex } from '../base/args.js';
import type { ErrnoCode } from '../base/errors.js';
import { KVM_MEM_MAX_NR_PAGES, KVM_MEM_SLOTS_NUM, KVM_USER_MEM_SLOTS, MemFlag } from '../base/uapi.js';
import type { Violation } from './types.js';

/** A memslot as the rules see it. */
export interface SlotView {
  asId: number;
  id: number;
  /** Guest frames and page counts are numbers: a gfn is below 2^52 and a slot's pages below
   * 2^31, exact as doubles (the rules and the books make no BigInt for them). */
  baseGfn: number;
  npages: number;
  flags: number;
  userspaceAddr: bigint;
}

/** How the `guestMemfd` fd of a region resolves (fget + f_op + owner checks). */
export type GmemLookup =
  | { kind: 'ebadf' }
  | { kind: 'not-gmem'; what: string }
  | { kind: 'foreign' }
  | { kind: 'ok'; size: bigint; boundSlot(pgStart: number, pgEnd: number): SlotView | undefined };

/** What the rules need to know about the VM and the host. */
export interface MemslotContext {
  pageSize: bigint;
  /** kvm_arch_has_readonly_mem(kvm) */
  readonlyMem: boolean;
  /** CONFIG_KVM_GUEST_MEMFD */
  guestMemfd: boolean;
  /** kvm_arch_nr_memslot_as_ids(kvm) */
  addressSpaces: number;
  /** Highest end of a user range that access_ok accepts (x86-64, 4-level paging: 0x7ffffffff000). */
  userAddressMax: bigint;
  /** kvm_mmu_max_gfn(): the highest gfn the MMU maps (52-bit physical addresses: 2^40 - 1). */
  maxGfn: bigint;
  /**
   * What kvm_gmem_bind answers for a file range already bound to a slot: EINVAL on 6.18,
   * EEXIST on 7.x (from a profile); undefined where it is not known (a real host).
   */
  gmemBoundCode?: ErrnoCode | undefined;
  /**
   * Where the kernel checks that the slot ends within kvm_mmu_max_gfn(), for a gmem slot:
   * 'first' (before the guest_memfd checks), 'before-bind', or after the binding (undefined:
   * 7.2, where kvm_gmem_bind runs before kvm_arch_prepare_memory_region). From a profile.
   */
  maxGfnCheck?: 'first' | 'before-bind' | undefined;
  slot(asId: number, id: number): SlotView | undefined;
  /** A slot of `asId` other than `id` whose gfn range intersects [start, end). */
  overlapping(asId: number, id: number, gfnStart: number, gfnEnd: number): SlotView | undefined;
  gmem(fd: number): GmemLookup;
}

/** The region as the kernel reads it (struct kvm_userspace_memory_region2; v1 has no gmem). */
export interface RegionInput {
  v2: boolean;
  slot: number;
  flags: number;
  guestPhysAddr: bigint;
  memorySize: bigint;
  userspaceAddr: bigint;
  guestMemfdOffset: bigint;
  guestMemfd: number;
}

export type MemslotOp = 'create' | 'delete' | 'move' | 'flags' | 'noop';

export interface MemslotDecision {
  op: MemslotOp;
  asId: number;
  id: number;
  baseGfn: number;
  npages: number;
  /** The slot being deleted/moved/changed. */
  existing?: SlotView;
}

export const memslotWhere = (v2: boolean) => ({
  syscall: 'ioctl',
  request: v2 ? 'KVM_SET_USER_MEMORY_REGION2' : 'KVM_SET_USER_MEMORY_REGION',
});

function fail(rule: string, message: string, extra: Partial<Violation> = {}): Violation {
  return { rule, code: 'EINVAL', message, ...extra };
}

/** 2^63 and 2^64 as doubles (exact). */
const OFFSET_LIMIT = 2 ** 63;
const TWO_64 = 2 ** 64;
const MAX_NR_PAGES = Number(KVM_MEM_MAX_NR_PAGES);

/**
 * Whether the u64 `x` (`n` is Number(x)) is a multiple of the page size (a power of two):
 * from the low 32 bits of the double where it is exact (ToInt32 of an integer is exact modulo
 * 2^32), with a BigInt remainder only past 2^53. A page-aligned u64 is exact as a double (at
 * most 52 significant bits), and so is the sum of two: after the alignment checks, the rules
 * below do their arithmetic on doubles, making no BigInt (each BigInt result is an allocation,
 * and this runs before every memslot call).
 */
function aligned(x: bigint, n: number, page: number, pageBig: bigint): boolean {
  return n < 2 ** 53 ? (n & (page - 1)) === 0 : x % pageBig === 0n;
}

function decide(op: MemslotOp, asId: number, id: number, baseGfn: number, npages: number, existing: SlotView | undefined): MemslotDecision {
  return existing ? { op, asId, id, baseGfn, npages, existing } : { op, asId, id, baseGfn, npages };
}

/** kvm_arch_prepare_memory_region (x86): a new or moved slot must end within the MMU's reach. */
function beyondMmu(op: MemslotOp, baseGfn: number, npages: number, ctx: MemslotContext): Violation | undefined {
  if ((op !== 'create' && op !== 'move') || baseGfn + npages - 1 <= Number(ctx.maxGfn)) return undefined;
  const page = ctx.pageSize;
  return fail('memslot.max-gfn', `guest range ends at ${hex(BigInt(baseGfn + npages) * page)}, beyond the highest guest frame the MMU maps (${hex((ctx.maxGfn + 1n) * page)})`);
}

/**
 * Decides what the kernel does with `r`: the first rule it breaks, or the operation it
 * performs. Pure: reads the context, changes nothing.
 */
export function checkMemslot(r: RegionInput, ctx: MemslotContext): Violation | MemslotDecision {
  const pageBig = ctx.pageSize;
  const page = Number(pageBig);
  const gmem = (r.flags & MemFlag.GUEST_MEMFD) !== 0;
  const asId = r.slot >>> 16;
  const id = r.slot & 0xffff;
  const size = Number(r.memorySize);
  const gpa = Number(r.guestPhysAddr);
  const uaddr = Number(r.userspaceAddr);
  const offset = Number(r.guestMemfdOffset);

  if (!r.v2 && r.flags & ~(MemFlag.LOG_DIRTY_PAGES | MemFlag.READONLY)) {
    return fail('memslot.v1-flags', `flags ${hex(r.flags)} are not valid for KVM_SET_USER_MEMORY_REGION (guest_memfd needs the v2 ioctl)`);
  }
  if (id >= KVM_USER_MEM_SLOTS) {
    return fail('memslot.slot-id', `slot id ${id} is not below KVM_USER_MEM_SLOTS (${KVM_USER_MEM_SLOTS})`);
  }
  let valid: number = MemFlag.LOG_DIRTY_PAGES;
  if (ctx.guestMemfd) valid |= MemFlag.GUEST_MEMFD;
  if (gmem) valid &= ~MemFlag.LOG_DIRTY_PAGES;
  if (ctx.readonlyMem && !gmem) valid |= MemFlag.READONLY;
  if (r.flags & ~valid) {
    return fail('memslot.flags', `flags ${hex(r.flags)} include bits outside ${hex(valid)}` +
      (gmem ? ' (a guest_memfd slot cannot be readonly or log dirty pages)' : ''));
  }
  if (!aligned(r.memorySize, size, page, pageBig)) {
    return fail('memslot.size-align', `memorySize ${hex(r.memorySize)} is not page-aligned`);
  }
  if (!aligned(r.guestPhysAddr, gpa, page, pageBig)) {
    return fail('memslot.gpa-align', `guestPhysAddr ${hex(r.guestPhysAddr)} is not page-aligned`);
  }
  // (Each sum below is of two page-aligned u64s: exact. A sum past U64_MAX is >= 2^64.)
  if (!aligned(r.userspaceAddr, uaddr, page, pageBig) || uaddr + size >= TWO_64 || uaddr + size > Number(ctx.userAddressMax)) {
    return fail('memslot.userspace-addr', `userspaceAddr ${hex(r.userspaceAddr)} is not a page-aligned user address range of ${hex(r.memorySize)} bytes`);
  }
  if (gmem && (!aligned(r.guestMemfdOffset, offset, page, pageBig) || offset + size >= TWO_64)) {
    return fail('memslot.gmem-offset', `guestMemfdOffset ${hex(r.guestMemfdOffset)} is not page-aligned or wraps`);
  }
  if (asId >= ctx.addressSpaces || id >= KVM_MEM_SLOTS_NUM) {
    return fail('memslot.as-id', `address space ${asId} does not exist (this VM has ${ctx.addressSpaces})`);
  }
  if (gpa + size >= TWO_64) {
    return fail('memslot.gpa-wrap', `guestPhysAddr ${hex(r.guestPhysAddr)} + memorySize wraps`);
  }
  const npages = size / page;
  if (npages > MAX_NR_PAGES) {
    return fail('memslot.npages', `${npages} pages exceed KVM_MEM_MAX_NR_PAGES (${KVM_MEM_MAX_NR_PAGES})`);
  }
  const baseGfn = gpa / page;
  const existing = ctx.slot(asId, id);

  if (npages === 0) {
    if (!existing) return fail('memslot.delete-missing', `slot ${id} does not exist`, { conflict: { slot: id, asId }, books: true });
    return decide('delete', asId, id, baseGfn, npages, existing);
  }

  let op: MemslotOp = 'create';
  if (existing) {
    const ro = MemFlag.READONLY | MemFlag.GUEST_MEMFD;
    if (gmem) {
      return fail('memslot.gmem-immutable', `slot ${id} exists; a guest_memfd slot can only be deleted, not changed or re-set`, { conflict: { slot: id, asId }, books: true });
    }
    if (r.userspaceAddr !== existing.userspaceAddr || npages !== existing.npages || ((r.flags ^ existing.flags) & ro)) {
      return fail('memslot.modify', `slot ${id} exists; only its guestPhysAddr and LOG_DIRTY_PAGES may change`, { conflict: { slot: id, asId }, books: true });
    }
    if (baseGfn !== existing.baseGfn) op = 'move';
    else if (r.flags !== existing.flags) op = 'flags';
    else return decide('noop', asId, id, baseGfn, npages, existing);
  }

  if (op === 'create' || op === 'move') {
    const other = ctx.overlapping(asId, id, baseGfn, baseGfn + npages);
    if (other) {
      const start = BigInt(other.baseGfn) * pageBig;
      const end = start + BigInt(other.npages) * pageBig;
      return {
        rule: 'memslot.gpa-overlap',
        code: 'EEXIST',
        message: `guest range [${hex(r.guestPhysAddr)}, ${hex(r.guestPhysAddr + r.memorySize)}) overlaps slot ${other.id} at [${hex(start)}, ${hex(end)})`,
        conflict: { slot: other.id, asId, start, end, space: 'gpa' },
        books: true,
      };
    }
  }

  // The slot must end within the MMU's reach: where this comes relative to the guest_memfd
  // checks depends on the kernel (ctx.maxGfnCheck).
  const early = gmem && op === 'create' ? ctx.maxGfnCheck : undefined;
  if (early === 'first') {
    const v = beyondMmu(op, baseGfn, npages, ctx);
    if (v) return v;
  }

  if (gmem && op === 'create') {
    const g = ctx.gmem(r.guestMemfd);
    if (g.kind === 'ebadf') return { rule: 'memslot.gmem-fd', code: 'EBADF', message: `guestMemfd ${r.guestMemfd} is not an open file`, books: true };
    if (g.kind === 'not-gmem') return fail('memslot.gmem-fd', `guestMemfd ${r.guestMemfd} is ${g.what}, not a guest_memfd`, { books: true });
    if (g.kind === 'foreign') return fail('memslot.gmem-owner', `guestMemfd ${r.guestMemfd} belongs to another VM`, { books: true });
    if (offset >= OFFSET_LIMIT || offset + size > Number(g.size)) {
      return fail('memslot.gmem-bounds', `file range [${hex(r.guestMemfdOffset)}, ${hex(r.guestMemfdOffset + r.memorySize)}) is past the guest_memfd's end (${hex(g.size)})`);
    }
    if (early === 'before-bind') {
      const v = beyondMmu(op, baseGfn, npages, ctx);
      if (v) return v;
    }
    const pg = offset / page;
    const bound = g.boundSlot(pg, pg + npages);
    if (bound) {
      const code = ctx.gmemBoundCode ?? 'EINVAL';
      const end = r.guestMemfdOffset + r.memorySize;
      return {
        rule: 'memslot.gmem-bound',
        code,
        message: `file range [${hex(r.guestMemfdOffset)}, ${hex(end)}) is already bound to slot ${bound.id}: a file offset backs at most one guest frame`,
        conflict: { slot: bound.id, asId: bound.asId, start: r.guestMemfdOffset, end, space: 'file' },
        books: true,
        ...(ctx.gmemBoundCode ? {} : { altCodes: GMEM_BOUND_CODES.filter((c) => c !== code) }),
      };
    }
  }
  return beyondMmu(op, baseGfn, npages, ctx) ?? decide(op, asId, id, baseGfn, npages, existing);
}

/** kvm_mmu_max_gfn() on x86 with 52-bit physical addresses and 4 KiB pages. */
export const MAX_GFN_52 = (1n << 40n) - 1n;

/** What kernels answer for a second binding of a file range (6.18: EINVAL, 7.x: EEXIST). */
export const GMEM_BOUND_CODES: readonly ErrnoCode[] = ['EINVAL', 'EEXIST'];



export function isViolation(x: Violation | object): x is Violation {
  return 'rule' in x && 'code' in x;
}
