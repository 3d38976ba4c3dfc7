/**
 * Differential testing of two RawBackends (the kernel through the native addon, and the
 * simulator): a seed gives a list of operations, generated once and without looking at any
 * result; the list runs on both backends in lockstep, and every result is compared, as are
 * the bytes of every live mapping after each operation that can change memory.
 *
 * Operations name objects symbolically ('v3' a VM, 'g5' a guest_memfd, 'c7' a vCPU, 'm9' a
 * mapping, 'sys' /dev/kvm): each backend keeps its own map from names to its own handles,
 * since kernel fds and simulator handles differ. A name whose object was never created (the
 * create failed) or is closed resolves to STALE_FD, a number that is never an open fd on
 * either side (the kernel may reuse a closed fd's number; 99999 it never hands out here).
 *
 * Safety on the kernel side: bytes are only touched where the kernel faults them in (a
 * mapping of a GUEST_MEMFD_FLAG_INIT_SHARED gmem, inside the file, with PROT_READ, and
 * PROT_WRITE for writes); anywhere else the access would be SIGBUS or SIGSEGV.
 *
 * A divergence where both sides refused the op (different errnos) or a query answered
 * differently leaves both in the same state, so the run goes on and finds further ones; any
 * other divergence (one side created, closed, mapped or wrote something; memory differs)
 * ends the run. Each divergence comes with its shortest failing prefix (re-run on fresh
 * backends), and minimize() shrinks one to a minimal op sequence.
 *
 * Deliberately not generated: private writable mappings of 4 GiB or more (ENOMEM or not by
 * the host's overcommit policy, checked before the gmem's own mmap), and reads of mappings
 * over 4 GiB (Node cannot make an ArrayBuffer that large).
 */
import { Cap, Falloc, GuestMemfdFlag, MapFlag, MemFlag, Prot } from '../../lib/base/uapi.js';
import type { Handle, RawBackend, RawMapping } from '../../lib/raw/types.js';

// ---- PRNG ---------------------------------------------------------------------------------

/** mulberry32: a small, fast, seedable 32-bit generator. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

export class Rng {
  #next: () => number;
  constructor(seed: number) {
    this.#next = mulberry32(seed);
  }
  u32(): number {
    return this.#next();
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.#next() / 2 ** 32) * n);
  }
  chance(p: number): boolean {
    return this.#next() / 2 ** 32 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  /** A random u64. */
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
  /** Picks by weight; entries with weight 0 are never picked. */
  weighted<T>(entries: readonly (readonly [T, number])[]): T {
    const total = entries.reduce((s, [, w]) => s + w, 0);
    let r = (this.#next() / 2 ** 32) * total;
    for (const [v, w] of entries) {
      if (r < w) return v;
      r -= w;
    }
    return entries[entries.length - 1]![0];
  }
}

// ---- operations ---------------------------------------------------------------------------

/** A value handed to a u64 argument: a bigint, or a number (including invalid ones: -1, 1.5). */
export type Val = bigint | number;
/** A handle reference: a symbolic name, or STALE (never open), or NEG (-1). */
export type HRef = string;
/** A userspace address: a mapping's address (0 if it does not exist) plus `plus`, or a literal. */
export type UAddr = { map: string; plus: bigint } | { lit: bigint };

export type Op =
  | { k: 'createVm'; id: string; type: number }
  | { k: 'close'; h: HRef }
  | { k: 'createGmem'; id: string; vm: HRef; size: Val; flags: Val }
  | { k: 'mmap'; id: string; g: HRef; len: Val; off: Val; prot: number; flags: number }
  | { k: 'munmap'; m: string }
  | { k: 'write'; m: string; at: number; len: number; data: number }
  | { k: 'fallocate'; g: HRef; mode: number; off: Val; len: Val }
  | { k: 'region2'; vm: HRef; slot: number; flags: number; gpa: Val; size: Val; uaddr: UAddr; gmOff: Val; gm: HRef | undefined }
  | { k: 'region'; vm: HRef; slot: number; flags: number; gpa: Val; size: Val; uaddr: UAddr }
  | { k: 'attrs'; vm: HRef; address: Val; size: Val; attributes: Val; flags: Val }
  | { k: 'checkExt'; h: HRef; cap: number }
  | { k: 'createVcpu'; id: string; vm: HRef; vcpuId: number }
  | { k: 'preFault'; c: HRef; gpa: Val; size: Val; flags: Val }
  | { k: 'fstat'; h: HRef }
  | { k: 'apiVersion'; h: HRef }
  | { k: 'vcpuMmapSize'; h: HRef };

export const STALE = 'STALE';
export const NEG = 'NEG';
/** The fd number a stale reference becomes, on both sides: never open here. */
export const STALE_FD = 99999;

const KiB = 1024n;
const MiB = 1024n * KiB;
const GiB = 1024n * MiB;
const PAGE = 4096n;
const U64_MAX = (1n << 64n) - 1n;
const INIT_SHARED = GuestMemfdFlag.INIT_SHARED;

const capValues = Object.values(Cap) as number[];

// ---- generation ---------------------------------------------------------------------------

interface PVm { id: string; live: boolean }
interface PGmem { id: string; vm: string; size: bigint; flags: bigint; live: boolean }
interface PMap { id: string; g: string; off: bigint; len: bigint; prot: number; live: boolean; access: bigint }
interface PVcpu { id: string; vm: string; live: boolean }
interface PSlot { vm: string; slot: number; flags: number; gpa: bigint; size: bigint; uaddr: UAddr; gm?: string; gmOff: bigint }

/**
 * What the generator knows of the host under test (from its profile, before any op runs): the
 * VM types it creates and its guest-physical address width, so that sequences exercise
 * private-memory VMs where there are some, and slots around the host's own address limit.
 */
export interface HostShape {
  vmTypes: number[];
  guestPhysAddrBits: number;
}

export const DEFAULT_SHAPE: HostShape = { vmTypes: [0], guestPhysAddrBits: 52 };

class Planner {
  vms: PVm[] = [];
  gmems: PGmem[] = [];
  maps: PMap[] = [];
  vcpus: PVcpu[] = [];
  slots: PSlot[] = [];
  #n = 0;
  constructor(
    readonly r: Rng,
    readonly host: HostShape = DEFAULT_SHAPE,
  ) {}

  name(prefix: string): string {
    return `${prefix}${this.#n++}`;
  }
  live<T extends { live: boolean }>(xs: T[]): T[] {
    return xs.filter((x) => x.live);
  }
  dead<T extends { live: boolean }>(xs: T[]): T[] {
    return xs.filter((x) => !x.live);
  }

  /** A reference to an object of `kind`: usually a live one, sometimes a closed one, another kind, or a stale number. */
  ref(kind: 'vm' | 'gmem' | 'vcpu'): HRef {
    const r = this.r;
    const pool = (k: string): { id: string; live: boolean }[] =>
      k === 'vm' ? this.vms : k === 'gmem' ? this.gmems : this.vcpus;
    const x = r.u32() / 2 ** 32;
    const live = this.live(pool(kind));
    if (x < 0.84 && live.length) return r.pick(live).id;
    if (x < 0.9) {
      const dead = this.dead(pool(kind));
      if (dead.length) return r.pick(dead).id;
    }
    if (x < 0.96) {
      const others = ['sys', ...this.live(this.vms).map((v) => v.id), ...this.live(this.gmems).map((g) => g.id), ...this.live(this.vcpus).map((c) => c.id)];
      return r.pick(others);
    }
    return r.chance(0.8) ? STALE : NEG;
  }

  gpa(): Val {
    const r = this.r;
    const x = r.u32() / 2 ** 32;
    if (x < 0.55) return BigInt(r.int(48)) * 64n * KiB; // a small grid: overlaps are common
    if (x < 0.7) return BigInt(r.int(8)) * 2n * MiB;
    if (x < 0.78 && this.slots.length) {
      const s = r.pick(this.slots);
      return r.pick([s.gpa + s.size, s.gpa - PAGE, s.gpa + PAGE, s.gpa]) & U64_MAX; // adjacent / overlapping
    }
    if (x < 0.86) {
      // Around the host's guest-physical limit, and the widths other hosts have.
      const top = 1n << BigInt(r.chance(0.6) ? this.host.guestPhysAddrBits : r.pick([36, 39, 40, 44, 46, 47, 48, 51, 52, 57]));
      return r.pick([top, top - PAGE, top - 2n * MiB, top - 16n * PAGE, top + PAGE]);
    }
    return r.pick<Val>([
      1n << 32n, 0xfffff000n, 1n << 52n, 1n << 63n, U64_MAX - PAGE + 1n, U64_MAX - 2n * PAGE + 1n, 4097n, 1n, 2n * MiB + 1n, 0n,
      (1n << 64n) - 2n * MiB, -1, 0.5,
    ]);
  }

  /** A memslot size; `fit` is a size that exactly fits the chosen gmem range, if any. */
  slotSize(fit?: bigint): Val {
    const r = this.r;
    const x = r.u32() / 2 ** 32;
    if (fit !== undefined && x < 0.35) return fit;
    if (x < 0.75) return r.pick([PAGE, 2n * PAGE, 16n * PAGE, 64n * KiB, 1n * MiB, 2n * MiB, 4n * MiB]);
    if (x < 0.85) return 0n; // delete
    return r.pick<Val>([4095n, 4097n, (fit ?? PAGE) + PAGE, 1n << 43n /* 2^31 pages */, U64_MAX - PAGE + 1n, 1n << 63n, 64n * MiB, -4096, 1.5]);
  }

  slotId(): number {
    const r = this.r;
    if (r.chance(0.84)) return r.int(6);
    // Address spaces 1 and 2 (SMM where the host has it), and the slot-id limits.
    if (r.chance(0.5)) return (r.pick([1, 1, 2, 3]) << 16) | r.int(4);
    return r.pick([32763, 32764, 32765, 32766, 32767, 65535, -1]);
  }

  uaddrFromMap(): UAddr {
    const r = this.r;
    const maps = this.maps;
    if (maps.length && r.chance(0.75)) {
      const m = r.pick(maps);
      return { map: m.id, plus: r.pick([0n, 0n, 0n, PAGE, 64n * KiB, 1n]) };
    }
    return { lit: r.pick([0n, 0n, 0x7ffffffff000n - PAGE, 0x7ffffffff000n, 0x800000000000n, 0xffff800000000000n, 4096n, 1n, U64_MAX - PAGE + 1n, 1n << 46n]) };
  }

  // ---- one op --------------------------------------------------------------------------

  next(): Op {
    const r = this.r;
    const liveVms = this.live(this.vms).length;
    const liveGmems = this.live(this.gmems).length;
    const liveMaps = this.live(this.maps).length;
    const liveVcpus = this.live(this.vcpus).length;
    const sharedMaps = this.live(this.maps).filter((m) => m.access > 0n).length;
    const kind = r.weighted<Exclude<Op['k'], 'close'> | 'closeVm' | 'closeGmem' | 'closeVcpu' | 'modify'>([
      ['createVm', liveVms === 0 ? 100 : liveVms < 3 ? 3 : 0],
      ['closeVm', liveVms > 0 ? 1.5 : 0],
      ['createGmem', liveGmems === 0 ? 30 : liveGmems < 6 ? 8 : 1],
      ['closeGmem', liveGmems > 0 ? 2.5 : 0],
      ['mmap', liveGmems > 0 ? (liveMaps < 5 ? 7 : 1) : 0],
      ['munmap', liveMaps > 0 ? 3 : 0.3],
      ['write', sharedMaps > 0 ? 10 : liveMaps > 0 ? 1 : 0],
      ['fallocate', 10],
      ['region2', 22],
      ['modify', this.slots.length ? 5 : 0],
      ['region', 5],
      ['attrs', 4],
      ['checkExt', 4],
      ['createVcpu', liveVcpus < 4 ? 2.5 : 0.3],
      ['closeVcpu', liveVcpus > 0 ? 1 : 0],
      ['preFault', liveVcpus > 0 ? 5 : 1],
      ['fstat', 3],
      ['apiVersion', 0.5],
      ['vcpuMmapSize', 0.5],
    ]);
    switch (kind) {
      case 'createVm': {
        const others = this.host.vmTypes.filter((t) => t !== 0);
        const type = r.chance(0.9) ? (others.length && r.chance(0.5) ? r.pick(others) : 0) : r.pick([1, 2, 5, 6, 31, 32, 2 ** 31, -1]);
        const id = this.name('v');
        this.vms.push({ id, live: this.host.vmTypes.includes(type) });
        return { k: 'createVm', id, type };
      }
      case 'closeVm':
      case 'closeGmem':
      case 'closeVcpu': {
        const pool: { id: string; live: boolean }[] = kind === 'closeVm' ? this.vms : kind === 'closeGmem' ? this.gmems : this.vcpus;
        const live = this.live(pool);
        const x = r.chance(0.9) && live.length ? r.pick(live) : r.pick(pool);
        x.live = false;
        if (kind === 'closeVm') {
          // A closed VM fd: its slots cannot be named any more (the VM lives on while its gmems do).
          this.slots = this.slots.filter((s) => s.vm !== x.id);
        }
        return { k: 'close', h: r.chance(0.97) ? x.id : STALE };
      }
      case 'createGmem': {
        const vm = this.ref('vm');
        const valid = r.chance(0.88);
        const size: Val = valid
          ? r.weighted<bigint>([[PAGE, 2], [2n * PAGE, 2], [3n * PAGE, 1], [16n * PAGE, 2], [64n * KiB, 2], [1n * MiB, 3], [2n * MiB, 4], [2n * MiB + PAGE, 1], [4n * MiB, 2], [8n * MiB, 1]])
          : r.pick<Val>([0n, 4095n, 4097n, 1n << 63n, U64_MAX - PAGE + 1n, -1, 4096.5, 2 ** 53]);
        const flags: Val = r.weighted<Val>([
          [0n, 2], [GuestMemfdFlag.MMAP, 2], [GuestMemfdFlag.MMAP | INIT_SHARED, 5], [INIT_SHARED, 1], [3, 1],
          [1n << BigInt(2 + r.int(62)), 0.5], [r.u64(), 0.3], [-1, 0.1],
        ]);
        const id = this.name('g');
        const ok = valid && typeof flags === 'bigint' ? (flags & ~3n) === 0n : flags === 3;
        const vmOk = this.vms.some((v) => v.id === vm && v.live);
        const fl = typeof flags === 'bigint' ? flags : 3n;
        this.gmems.push({ id, vm, size: typeof size === 'bigint' ? size : 0n, flags: fl, live: ok && vmOk });
        return { k: 'createGmem', id, vm, size, flags };
      }
      case 'mmap': {
        const g = this.ref('gmem');
        const pg = this.gmems.find((x) => x.id === g);
        const size = pg?.size ?? 2n * MiB;
        const off: Val = r.weighted<Val>([
          [0n, 8], [PAGE, 2], [size / 2n - (size / 2n) % PAGE, 2], [size - PAGE, 1], [size, 1], [size + PAGE, 0.5], [1n, 0.5],
          [1n << 63n, 0.3], [(1n << 63n) - PAGE, 0.3], [U64_MAX - PAGE + 1n, 0.3], [-4096, 0.1],
        ]);
        const o = typeof off === 'bigint' ? off : 0n;
        let len: Val = r.weighted<Val>([
          [size - (o < size ? o : 0n), 8], [size, 2], [PAGE, 2], [1n, 1], [PAGE + 1n, 1], [size + PAGE, 1], [0n, 0.5],
          [1n << 40n, 0.3], [U64_MAX - PAGE + 1n, 0.3], [1n << 63n, 0.2], [0x7ffffffff000n, 0.2],
        ]);
        const prot = r.weighted<number>([
          [Prot.READ | Prot.WRITE, 10], [Prot.READ, 2], [Prot.NONE, 0.7], [Prot.WRITE, 0.5], [Prot.READ | Prot.EXEC, 0.7], [Prot.READ | Prot.WRITE | Prot.EXEC, 0.5],
        ]);
        const flags = r.weighted<number>([
          [MapFlag.SHARED, 10], [MapFlag.SHARED_VALIDATE, 1], [MapFlag.PRIVATE, 1.5], [0, 0.5], [MapFlag.SHARED | 0x4000 /* NORESERVE */, 0.5],
          [MapFlag.SHARED | 0x8000 /* POPULATE */, 0.5], [MapFlag.SHARED_VALIDATE | 0x80000 /* SYNC */, 0.3], [MapFlag.SHARED | 0x80000 /* SYNC: ignored */, 0.3],
          [MapFlag.SHARED | 0x40000 /* HUGETLB */, 0.3],
        ]);
        const id = this.name('m');
        // A private writable mapping larger than RAM + swap is ENOMEM by the host's overcommit
        // policy (checked before the gmem's own mmap): not a kernel rule to compare.
        if ((flags & 3) === MapFlag.PRIVATE && prot & Prot.WRITE && typeof len === 'bigint' && len >= 1n << 32n) len = size;
        const l = typeof len === 'bigint' ? len : 0n;
        const okish = pg?.live && (pg.flags & GuestMemfdFlag.MMAP) !== 0n && (flags & 3) !== MapFlag.PRIVATE && (flags & 3) !== 0 && !(prot & Prot.EXEC) && l > 0n && l < 1n << 40n && o % PAGE === 0n && o < 1n << 62n;
        const access = okish && pg.flags & INIT_SHARED && prot & Prot.READ && o < pg.size ? (pg.size - o < l ? pg.size - o : l) : 0n;
        this.maps.push({ id, g, off: o, len: l, prot, live: !!okish, access: prot & Prot.WRITE ? access : 0n });
        return { k: 'mmap', id, g, len, off, prot, flags };
      }
      case 'munmap': {
        const live = this.live(this.maps);
        const m = live.length && r.chance(0.9) ? r.pick(live) : this.maps.length ? r.pick(this.maps) : undefined;
        if (m) m.live = false;
        return { k: 'munmap', m: m?.id ?? 'm-none' };
      }
      case 'write': {
        const cands = this.live(this.maps).filter((m) => m.access > 0n);
        const m = cands.length ? r.pick(cands) : r.pick(this.live(this.maps).length ? this.live(this.maps) : this.maps);
        const n = Number(m?.access ?? 0n);
        const len = r.pick([1, 8, 100, 4096, 4097, 8192, 12345]);
        const x = r.u32() / 2 ** 32;
        let at = x < 0.25 ? 0 : x < 0.45 ? Math.max(0, n - len) : x < 0.55 ? n - 1 : x < 0.6 ? n : r.int(Math.max(1, n));
        if (at < 0) at = 0;
        return { k: 'write', m: m?.id ?? 'm-none', at, len, data: r.u32() };
      }
      case 'fallocate': {
        const g = this.ref('gmem');
        const pg = this.gmems.find((x) => x.id === g);
        const size = pg?.size ?? 1n * MiB;
        const mode = r.weighted<number>([
          [Falloc.KEEP_SIZE | Falloc.PUNCH_HOLE, 10], [Falloc.KEEP_SIZE, 8], [0, 1], [Falloc.PUNCH_HOLE, 1], [Falloc.ZERO_RANGE, 0.5],
          [Falloc.ZERO_RANGE | Falloc.KEEP_SIZE, 0.5], [Falloc.COLLAPSE_RANGE, 0.5], [Falloc.INSERT_RANGE, 0.5], [Falloc.UNSHARE_RANGE | Falloc.KEEP_SIZE, 0.5],
          [0x80, 0.5], [0x81, 0.5], [0x100 | Falloc.KEEP_SIZE, 0.3], [r.u32() | 0, 0.3], [-1, 0.1],
        ]);
        const pages = size / PAGE;
        const off: Val = r.weighted<Val>([
          [0n, 5], [BigInt(r.int(Number(pages))) * PAGE, 6], [size - PAGE, 2], [size, 1], [size + PAGE, 1], [1n, 0.5], [4095n, 0.5],
          [(1n << 63n) - PAGE, 0.3], [1n << 63n, 0.3], [U64_MAX - PAGE + 1n, 0.3], [0x7ffffffffffff000n, 0.3], [-4096, 0.1],
        ]);
        const o = typeof off === 'bigint' ? off : 0n;
        const len: Val = r.weighted<Val>([
          [PAGE, 4], [BigInt(1 + r.int(Number(pages))) * PAGE, 5], [size > o ? size - o : PAGE, 3], [size, 1], [0n, 0.5], [1n, 0.5], [PAGE + 1n, 0.5],
          [100n * PAGE, 0.5], [2n * PAGE, 1], [1n << 63n, 0.3], [U64_MAX - PAGE + 1n, 0.3], [(1n << 63n) - o, 0.2],
        ]);
        return { k: 'fallocate', g, mode, off, len };
      }
      case 'region2':
        return this.region2();
      case 'modify':
        return this.modify();
      case 'region': {
        const vm = this.ref('vm');
        const flags = r.weighted<number>([[0, 6], [MemFlag.LOG_DIRTY_PAGES, 1], [MemFlag.READONLY, 1], [MemFlag.GUEST_MEMFD, 1], [8, 0.5], [3, 0.5]]);
        const slot = this.slotId();
        const gpa = this.gpa();
        const size = this.slotSize();
        const uaddr = this.uaddrFromMap();
        if (typeof gpa === 'bigint' && typeof size === 'bigint' && size > 0n) this.slots.push({ vm, slot, flags, gpa, size, uaddr, gmOff: 0n });
        return { k: 'region', vm, slot, flags, gpa, size, uaddr };
      }
      case 'attrs': {
        const vm = this.ref('vm');
        // Mostly over slots (private pages are what pre-fault and the data path then meet).
        const s = this.slots.length && r.chance(0.6) ? r.pick(this.slots) : undefined;
        const address: Val = s ? s.gpa + BigInt(r.int(Number(s.size / PAGE))) * PAGE : r.pick<Val>([0n, PAGE, 2n * MiB, 1n, U64_MAX - PAGE + 1n]);
        return {
          k: 'attrs', vm, address,
          size: attrSize(address, r.pick<Val>([PAGE, PAGE, 2n * PAGE, 2n * MiB, 0n, 4095n, U64_MAX - PAGE + 1n])),
          attributes: r.pick<Val>([0n, 8n, 8n, 1n, 1n << 63n]),
          flags: r.pick<Val>([0n, 0n, 0n, 1n]),
        };
      }
      case 'checkExt': {
        const x = r.u32() / 2 ** 32;
        const h = x < 0.45 ? 'sys' : x < 0.9 ? this.ref('vm') : r.chance(0.5) ? this.ref('gmem') : this.ref('vcpu');
        return { k: 'checkExt', h, cap: r.pick(capValues) };
      }
      case 'createVcpu': {
        const vm = this.ref('vm');
        const vcpuId = r.chance(0.92) ? r.int(3) : r.pick([4095, 4096, 16383, 16384, 2 ** 31, -1]);
        const id = this.name('c');
        this.vcpus.push({ id, vm, live: this.vms.some((v) => v.id === vm && v.live) });
        return { k: 'createVcpu', id, vm, vcpuId };
      }
      case 'preFault': {
        // Mostly inside and at the edges of slots: shared and private pages, gmem-only or not.
        const s = this.slots.length && r.chance(0.7) ? r.pick(this.slots) : undefined;
        const gpa: Val = s ? r.pick([s.gpa, s.gpa + s.size - PAGE, s.gpa + s.size, s.gpa - PAGE]) & U64_MAX : this.gpa();
        return {
          k: 'preFault', c: this.ref('vcpu'), gpa,
          size: r.pick<Val>([PAGE, PAGE, 2n * PAGE, 16n * PAGE, 2n * MiB, 0n, 4095n, U64_MAX - PAGE + 1n]),
          flags: r.pick<Val>([0n, 0n, 0n, 0n, 1n]),
        };
      }
      case 'fstat': {
        const x = r.u32() / 2 ** 32;
        return { k: 'fstat', h: x < 0.55 ? this.ref('gmem') : x < 0.75 ? this.ref('vm') : x < 0.85 ? 'sys' : this.ref('vcpu') };
      }
      case 'apiVersion':
      case 'vcpuMmapSize': {
        const x = r.u32() / 2 ** 32;
        return { k: kind, h: x < 0.5 ? 'sys' : x < 0.75 ? this.ref('vm') : x < 0.9 ? this.ref('vcpu') : this.ref('gmem') };
      }
    }
  }

  /** KVM_SET_USER_MEMORY_REGION2: a gmem slot (mostly), or a non-gmem slot over a mapping. */
  region2(): Op {
    const r = this.r;
    const vm = this.ref('vm');
    const slot = this.slotId();
    const gpa = this.gpa();
    if (r.chance(0.7)) {
      // A gmem slot: usually this VM's gmem, sometimes another VM's, a closed one, a non-gmem fd.
      const mine = this.live(this.gmems).filter((g) => g.vm === vm);
      const gm = mine.length && r.chance(0.75) ? r.pick(mine).id : this.ref('gmem');
      const pg = this.gmems.find((g) => g.id === gm);
      const gsize = pg?.size ?? 2n * MiB;
      const pages = gsize / PAGE;
      const bound = this.slots.filter((s) => s.gm === gm);
      const gmOff: Val = r.weighted<Val>([
        [0n, 6], [BigInt(r.int(Number(pages))) * PAGE, 5], [bound.length ? r.pick(bound).gmOff : 0n, 3], // the same file range twice
        [bound.length ? (() => { const b = r.pick(bound); return b.gmOff + b.size; })() : PAGE, 2], // adjacent file range
        [gsize, 0.5], [gsize - PAGE, 1], [100n, 0.4], [1n << 63n, 0.3], [U64_MAX - PAGE + 1n, 0.3], [-4096, 0.1],
      ]);
      const o = typeof gmOff === 'bigint' ? gmOff : 0n;
      const size = this.slotSize(o < gsize ? gsize - o : undefined);
      const flags = r.weighted<number>([
        [MemFlag.GUEST_MEMFD, 20], [MemFlag.GUEST_MEMFD | MemFlag.READONLY, 1], [MemFlag.GUEST_MEMFD | MemFlag.LOG_DIRTY_PAGES, 1], [MemFlag.GUEST_MEMFD | 8, 0.5],
        [0, 0.7], [1 << (3 + r.int(29)), 0.3],
      ]);
      const maps = this.maps.filter((m) => m.g === gm);
      const uaddr: UAddr = maps.length && r.chance(0.4) ? { map: r.pick(maps).id, plus: r.pick([0n, o < 64n * MiB ? o : 0n, 1n]) } : r.chance(0.85) ? { lit: 0n } : this.uaddrFromMap();
      const gmRef = r.chance(0.03) ? r.pick([STALE, 'sys']) : gm;
      if (typeof gpa === 'bigint' && typeof size === 'bigint' && size > 0n) this.slots.push({ vm, slot, flags, gpa, size, uaddr, gm: gmRef, gmOff: o });
      return { k: 'region2', vm, slot, flags, gpa, size, uaddr, gmOff, gm: gmRef };
    }
    // A non-gmem slot, backed by a gmem mapping's address (or a literal address).
    const flags = r.weighted<number>([[0, 8], [MemFlag.LOG_DIRTY_PAGES, 2], [MemFlag.READONLY, 2], [MemFlag.LOG_DIRTY_PAGES | MemFlag.READONLY, 1], [8, 0.5]]);
    const uaddr = this.uaddrFromMap();
    const size = this.slotSize();
    const gm = r.chance(0.2) ? this.ref('gmem') : undefined; // ignored without the flag
    const gmOff: Val = r.pick<Val>([0n, 0n, 1n, 1n << 63n]);
    if (typeof gpa === 'bigint' && typeof size === 'bigint' && size > 0n) this.slots.push({ vm, slot, flags, gpa, size, uaddr, gmOff: 0n });
    return { k: 'region2', vm, slot, flags, gpa, size, uaddr, gmOff, gm };
  }

  /** Re-sets a slot made earlier: move it, toggle LOG_DIRTY_PAGES/READONLY, resize, re-set it identically, or delete it. */
  modify(): Op {
    const r = this.r;
    const s = r.pick(this.slots);
    const x = r.u32() / 2 ** 32;
    let { gpa, size, flags, uaddr } = s as { gpa: Val; size: Val; flags: number; uaddr: UAddr };
    if (x < 0.3) gpa = r.chance(0.5) ? this.gpa() : s.gpa + r.pick([PAGE, 64n * KiB, 2n * MiB, s.size]);
    else if (x < 0.45) flags = s.flags ^ MemFlag.LOG_DIRTY_PAGES;
    else if (x < 0.5) flags = s.flags ^ MemFlag.READONLY;
    else if (x < 0.55) flags = s.flags ^ MemFlag.GUEST_MEMFD;
    else if (x < 0.6) size = s.size + PAGE;
    else if (x < 0.65) uaddr = 'map' in s.uaddr ? { map: s.uaddr.map, plus: s.uaddr.plus + PAGE } : { lit: s.uaddr.lit + PAGE };
    else if (x < 0.75) {
      /* identical */
    } else {
      size = 0n; // delete
      if (r.chance(0.3)) flags = r.pick([MemFlag.GUEST_MEMFD, MemFlag.GUEST_MEMFD | MemFlag.READONLY, 0]);
    }
    if (size === 0n && r.chance(0.7)) this.slots = this.slots.filter((y) => y !== s);
    if (s.gm === undefined && r.chance(0.2) && !(flags & MemFlag.GUEST_MEMFD)) {
      return { k: 'region', vm: s.vm, slot: s.slot, flags, gpa, size, uaddr };
    }
    return { k: 'region2', vm: s.vm, slot: s.slot, flags, gpa, size, uaddr, gmOff: s.gmOff, gm: s.gm ?? (r.chance(0.3) ? STALE : undefined) };
  }
}

/**
 * The size of an attributes op. The kernel reserves an xarray entry per page of a valid
 * range before it sets any (kvm_vm_set_mem_attributes), so a valid range of 2^52 pages takes
 * all the memory there is: the OOM killer ends the test. A huge size is kept only where
 * address + size wraps (EINVAL before any reservation).
 */
function attrSize(address: Val, size: Val): Val {
  if (typeof address !== 'bigint' || typeof size !== 'bigint' || size <= GiB) return size;
  return address + size > U64_MAX ? size : 2n * MiB;
}

/** The op list of a seed: generated once, from the seed (and the host's shape) alone. */
export function generateOps(seed: number, nOps: number, host: HostShape = DEFAULT_SHAPE): Op[] {
  const p = new Planner(new Rng(seed), host);
  const ops: Op[] = [];
  for (let i = 0; i < nOps; i++) ops.push(p.next());
  return ops;
}

// ---- execution ----------------------------------------------------------------------------

interface MapState {
  m: RawMapping;
  live: boolean;
  off: bigint;
  len: bigint;
  prot: number;
  /** The gmem's size and flags (decide where bytes may be touched). */
  gsize: bigint;
  gflags: bigint;
}

/** One backend's view of a sequence: symbolic names → its own handles and mappings. */
class Ctx {
  handles = new Map<string, Handle>();
  gmemInfo = new Map<string, { size: bigint; flags: bigint }>();
  maps = new Map<string, MapState>();
  /** A mapping's address, kept after munmap (a memslot may still name it). */
  addr = new Map<string, bigint>();
  constructor(readonly raw: RawBackend) {}

  fd(h: HRef | undefined): number {
    if (h === undefined) return 0;
    if (h === NEG) return -1;
    return this.handles.get(h) ?? STALE_FD;
  }
  /** Each memslot this side has (by VM name and slot number): where it is, and its userspace_addr. */
  slotInfo = new Map<string, { vm: HRef; as: number; gpa: bigint; size: bigint; uaddr: bigint }>();
  /** The VM each vCPU name was created in. */
  vcpuVm = new Map<string, HRef>();
  /**
   * Whether a memslot op names the userspace_addr its slot already has. The kernel reuses
   * the addresses of unmapped ranges (the simulator hands out fresh ones), so two mappings
   * may share an address on one side only; the kernel compares userspace_addr by value, and
   * where the two sides differ in this, the op is skipped on both (its answer would depend
   * on where each side placed its mappings, not on the rules).
   */
  sameAddr(op: Extract<Op, { k: 'region' | 'region2' }>): boolean | undefined {
    const have = this.slotInfo.get(`${op.vm}:${op.slot >>> 0}`);
    return have === undefined ? undefined : have.uaddr === this.uaddr(op.uaddr);
  }
  /** Books a memslot op that succeeded. */
  bookSlot(op: Extract<Op, { k: 'region' | 'region2' }>): void {
    const key = `${op.vm}:${op.slot >>> 0}`;
    if (BigInt(op.size) === 0n) this.slotInfo.delete(key);
    else if (!this.slotInfo.has(key)) {
      this.slotInfo.set(key, { vm: op.vm, as: op.slot >>> 16, gpa: BigInt(op.gpa), size: BigInt(op.size), uaddr: this.uaddr(op.uaddr) });
    } else this.slotInfo.get(key)!.gpa = BigInt(op.gpa); // a move (its userspace_addr cannot change)
  }
  /**
   * Whether a pre-fault may read host memory this side never mapped: a page of [gpa, gpa +
   * size) in a memslot whose userspace range there lies outside every live mapping. What is
   * at such an address depends on the process (the kernel's side is node's own address
   * space, where freed ranges are reused), not on the rules; such a pre-fault is skipped on
   * both sides. (Pages served by a guest_memfd are counted too: conservative.)
   */
  preFaultReadsUnknownMemory(op: Extract<Op, { k: 'preFault' }>): boolean {
    const vm = this.vcpuVm.get(op.c);
    if (vm === undefined || typeof op.gpa !== 'bigint' || typeof op.size !== 'bigint') return false;
    const end = op.gpa + op.size;
    for (const s of this.slotInfo.values()) {
      if (s.vm !== vm || s.as !== 0) continue;
      const lo = s.gpa > op.gpa ? s.gpa : op.gpa;
      const hi = s.gpa + s.size < end ? s.gpa + s.size : end;
      if (lo >= hi) continue;
      const hva = s.uaddr + (lo - s.gpa);
      const hvaEnd = hva + (hi - lo);
      const inside = [...this.maps].some(([name, m]) => {
        const at = this.addr.get(name);
        return m.live && at !== undefined && hva >= at && hvaEnd <= at + m.len;
      });
      if (!inside) return true;
    }
    return false;
  }
  uaddr(u: UAddr): bigint {
    if ('lit' in u) return u.lit;
    return ((this.addr.get(u.map) ?? 0n) + u.plus) & U64_MAX;
  }
}

/** Node cannot make an ArrayBuffer over more than 4 GiB: larger mappings are never read. */
const MAX_BUFFER = 1n << 32n;

/** Bytes of a mapping the kernel faults in without a signal: 0 when none. */
function accessible(s: MapState): number {
  // (The raw layer gives views only of mappings both readable and writable: views are writable.)
  if (!s.live || !(s.gflags & INIT_SHARED) || (s.prot & (Prot.READ | Prot.WRITE)) !== (Prot.READ | Prot.WRITE)) return 0;
  if (s.len > MAX_BUFFER) return 0;
  if (s.off >= s.gsize) return 0;
  const rest = s.gsize - s.off;
  return Number(s.len < rest ? s.len : rest);
}

function view(s: MapState, n: number): Uint8Array {
  return s.m.view(0, n);
}

function bytesOf(seed: number, n: number): Uint8Array {
  const next = mulberry32(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i += 4) {
    const v = next();
    for (let j = 0; j < 4 && i + j < n; j++) out[i + j] = (v >>> (8 * j)) & 0xff;
  }
  return out;
}

function fnv(b: Uint8Array): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < b.length; i++) h = Math.imul(h ^ b[i]!, 0x01000193);
  return (h >>> 0).toString(16).padStart(8, '0');
}

/** A thrown value as a normalized result. */
export function normalizeError(e: unknown): string {
  const err = e as { name?: string; code?: unknown };
  if (e instanceof TypeError) return 'type';
  if (e instanceof RangeError) return 'range';
  if (err && err.name === 'KvmError' && typeof err.code === 'string') return `err:${err.code}`;
  return `throw:${err?.name ?? typeof e}:${(e as Error)?.message ?? String(e)}`;
}

const MEMORY_OPS = new Set<Op['k']>(['write', 'fallocate', 'mmap', 'munmap', 'close']);

/** Runs one op on one backend and returns its normalized result. */
function execOp(c: Ctx, op: Op): string {
  const raw = c.raw;
  try {
    switch (op.k) {
      case 'createVm':
        c.handles.set(op.id, raw.createVm(c.fd('sys'), op.type));
        return 'ok';
      case 'close': {
        raw.close(c.fd(op.h));
        c.handles.delete(op.h);
        return 'ok';
      }
      case 'createGmem': {
        const h = raw.createGuestMemfd(c.fd(op.vm), op.size, op.flags);
        c.handles.set(op.id, h);
        c.gmemInfo.set(op.id, { size: BigInt(op.size), flags: BigInt(op.flags) });
        return 'ok';
      }
      case 'mmap': {
        const m = raw.mmap(c.fd(op.g), op.len, op.off, op.prot, op.flags);
        const g = c.gmemInfo.get(op.g);
        c.addr.set(op.id, m.address);
        const s: MapState = {
          m, live: true, off: BigInt(op.off), len: BigInt(op.len), prot: op.prot,
          // A gmem only: a mapping of another kind of fd (a vCPU's run area) is never touched.
          gsize: g && c.handles.has(op.g) ? g.size : 0n, gflags: g && c.handles.has(op.g) ? g.flags : 0n,
        };
        c.maps.set(op.id, s);
        // Take the buffer now, while the address is surely this mapping's (a native buffer is
        // made on first use, from the address).
        if (accessible(s) > 0) s.m.view(0, accessible(s));
        return 'ok';
      }
      case 'munmap': {
        const s = c.maps.get(op.m);
        if (!s) return 'skip:no-mapping';
        raw.munmap(s.m); // idempotent: a second munmap is a no-op
        const was = s.live;
        s.live = false;
        return was ? 'ok' : 'ok:again';
      }
      case 'write': {
        const s = c.maps.get(op.m);
        if (!s) return 'skip:no-mapping';
        const n = accessible(s);
        if (n === 0 || op.at + op.len > n) return `skip:outside(${n})`;
        const data = bytesOf(op.data, op.len);
        const v = view(s, n);
        v.set(data, op.at);
        const back = view(s, n).subarray(op.at, op.at + op.len);
        return `ok:${fnv(back)}${fnv(back) === fnv(data) ? '' : '!readback-differs'}`;
      }
      case 'fallocate':
        raw.fallocate(c.fd(op.g), op.mode, op.off, op.len);
        return 'ok';
      case 'region2':
        raw.setUserMemoryRegion2(c.fd(op.vm), {
          slot: op.slot, flags: op.flags, guestPhysAddr: op.gpa, memorySize: op.size, userspaceAddr: c.uaddr(op.uaddr),
          guestMemfdOffset: op.gmOff, guestMemfd: op.gm === undefined ? 0 : c.fd(op.gm),
        });
        c.bookSlot(op);
        return 'ok';
      case 'region':
        raw.setUserMemoryRegion(c.fd(op.vm), { slot: op.slot, flags: op.flags, guestPhysAddr: op.gpa, memorySize: op.size, userspaceAddr: c.uaddr(op.uaddr) });
        c.bookSlot(op);
        return 'ok';
      case 'attrs':
        raw.setMemoryAttributes(c.fd(op.vm), { address: op.address, size: op.size, attributes: op.attributes, flags: op.flags });
        return 'ok';
      case 'checkExt':
        return `ok:${raw.checkExtension(c.fd(op.h), op.cap)}`;
      case 'createVcpu':
        c.handles.set(op.id, raw.createVcpu(c.fd(op.vm), op.vcpuId));
        c.vcpuVm.set(op.id, op.vm);
        return 'ok';
      case 'preFault': {
        const left = raw.preFaultMemory(c.fd(op.c), { gpa: op.gpa, size: op.size, flags: op.flags });
        return `ok:gpa=${hex(left.gpa)},size=${hex(left.size)}`;
      }
      case 'fstat': {
        const st = raw.fstat(c.fd(op.h));
        return `ok:size=${hex(st.size)},mode=0o${st.mode.toString(8)},blksize=${st.blksize},blocks=${st.blocks}`;
      }
      case 'apiVersion':
        return `ok:${raw.getApiVersion(c.fd(op.h))}`;
      case 'vcpuMmapSize':
        return `ok:${raw.getVcpuMmapSize(c.fd(op.h))}`;
    }
  } catch (e) {
    return normalizeError(e);
  }
}

/** Compares the bytes of every mapping between the two sides; a description of the first difference, or undefined. */
function compareMemory(a: Ctx, b: Ctx): string | undefined {
  const names = new Set([...a.maps.keys(), ...b.maps.keys()]);
  for (const name of names) {
    const sa = a.maps.get(name);
    const sb = b.maps.get(name);
    if (!!sa?.live !== !!sb?.live) return `${name}: mapped on ${sa?.live ? 'A' : 'B'} only`;
    if (!sa || !sb || !sa.live) continue;
    const n = accessible(sa);
    if (n !== accessible(sb)) return `${name}: accessible ${n} (A) vs ${accessible(sb)} (B) bytes`;
    if (n === 0) continue;
    let va: Uint8Array;
    let vb: Uint8Array;
    try {
      va = view(sa, n);
    } catch (e) {
      return `${name}: A's view of ${n} bytes: ${(e as Error).message}`;
    }
    try {
      vb = view(sb, n);
    } catch (e) {
      return `${name}: B's view of ${n} bytes: ${(e as Error).message}`;
    }
    if (Buffer.compare(va, vb) !== 0) {
      let i = 0;
      while (i < n && va[i] === vb[i]) i++;
      return `${name}: byte ${hex(BigInt(i))} of the mapping (file offset ${hex(sa.off + BigInt(i))}): A=0x${va[i]!.toString(16)} B=0x${vb[i]!.toString(16)}`;
    }
  }
  return undefined;
}

/** Unmaps and closes everything one side still holds; returns what failed. */
function cleanup(c: Ctx): string[] {
  const errors: string[] = [];
  for (const [name, s] of c.maps) {
    try {
      c.raw.munmap(s.m);
    } catch (e) {
      errors.push(`munmap ${name}: ${normalizeError(e)}`);
    }
    s.live = false;
  }
  // vCPUs, then gmems, then VMs, then /dev/kvm (any order works; this one reads naturally).
  const order = (n: string) => (n.startsWith('c') ? 0 : n.startsWith('g') ? 1 : n.startsWith('v') ? 2 : 3);
  for (const [name, h] of [...c.handles].sort((x, y) => order(x[0]) - order(y[0]))) {
    try {
      c.raw.close(h);
    } catch (e) {
      errors.push(`close ${name}: ${normalizeError(e)}`);
    }
  }
  c.handles.clear();
  return errors;
}

export interface OpRecord {
  index: number;
  op: Op;
  a: string;
  b: string;
  /** A memory difference after this op. */
  mem?: string;
}

export interface Execution {
  records: OpRecord[];
  /** Indexes of the divergent ops (in continue mode there may be several). */
  divergent: number[];
  /** True when execution stopped at a divergence that left the two sides in different states. */
  stopped: boolean;
  cleanupErrors: string[];
}

/** A backend, or a function that makes a fresh one (for re-runs while shrinking). */
export type BackendSource = RawBackend | (() => RawBackend);
const make = (s: BackendSource): RawBackend => (typeof s === 'function' ? s() : s);

/** Ops whose success changes nothing that later ops see (their answers may still differ). */
const QUERY_OPS = new Set<Op['k']>(['checkExt', 'fstat', 'apiVersion', 'vcpuMmapSize', 'preFault', 'attrs']);
const failed = (r: string) => !r.startsWith('ok');

/**
 * Whether both sides are still in the same state after a divergent op: both refused it (an
 * errno that differs changes nothing), or it was a query. Then the run can go on and find
 * further divergences; otherwise (one side created, closed, mapped or wrote something, or the
 * memory differs) it stops.
 */
function sameStateAfter(r: OpRecord): boolean {
  if (r.mem) return false;
  return QUERY_OPS.has(r.op.k) || (failed(r.a) && failed(r.b));
}

export interface ExecuteOptions {
  /** Go on past divergences that leave both sides in the same state (default true). */
  continueOnSameState?: boolean;
  devicePath?: string;
}

/** Runs `ops` on both backends in lockstep, comparing every result. */
export function executeOps(ops: readonly Op[], sourceA: BackendSource, sourceB: BackendSource, options: ExecuteOptions = {}): Execution {
  const goOn = options.continueOnSameState ?? true;
  const devicePath = options.devicePath ?? '/dev/kvm';
  const a = new Ctx(make(sourceA));
  const b = new Ctx(make(sourceB));
  const records: OpRecord[] = [];
  const divergent: number[] = [];
  let stopped = false;
  a.handles.set('sys', a.raw.open(devicePath));
  try {
    b.handles.set('sys', b.raw.open(devicePath));
  } catch (e) {
    cleanup(a);
    throw e;
  }
  let cleanupErrors: string[] = [];
  try {
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i]!;
      const skip =
        (op.k === 'region' || op.k === 'region2') && a.sameAddr(op) !== b.sameAddr(op) ? 'skip:address-reused'
        : op.k === 'preFault' && (a.preFaultReadsUnknownMemory(op) || b.preFaultReadsUnknownMemory(op)) ? 'skip:unknown-host-memory'
        : undefined;
      const ra = skip ?? execOp(a, op);
      const rb = skip ?? execOp(b, op);
      const rec: OpRecord = { index: i, op, a: ra, b: rb };
      if (MEMORY_OPS.has(op.k)) {
        const mem = compareMemory(a, b);
        if (mem) rec.mem = mem;
      }
      records.push(rec);
      if (ra !== rb || rec.mem) {
        divergent.push(i);
        if (!goOn || !sameStateAfter(rec)) {
          stopped = true;
          break;
        }
      }
    }
  } finally {
    cleanupErrors = [...cleanup(a).map((e) => `A: ${e}`), ...cleanup(b).map((e) => `B: ${e}`)];
  }
  return { records, divergent, stopped, cleanupErrors };
}

/** What a divergence is, for grouping: the op kind and both answers (memory: the op kind). */
export function divergenceClass(r: OpRecord): string {
  return r.a === r.b && r.mem ? `${r.op.k}: memory differs` : `${r.op.k}: kernel=${r.a} sim=${r.b}`;
}

function signature(r: OpRecord): string {
  return r.a === r.b && r.mem ? `mem|${r.op.k}` : `${r.op.k}|${r.a}|${r.b}`;
}

/** Whether `ops` diverges at its last op with the signature `sig`. */
function reproduces(ops: readonly Op[], sig: string, a: BackendSource, b: BackendSource): boolean {
  const x = executeOps(ops, a, b);
  const last = x.records[ops.length - 1];
  return last !== undefined && x.divergent.includes(ops.length - 1) && signature(last) === sig;
}

/**
 * Shrinks a failing prefix: removes chunks of ops (halving the chunk size down to single
 * ops) while the last op still diverges the same way. Every attempt runs on fresh backends.
 */
export function shrink(prefix: readonly Op[], sig: string, a: BackendSource, b: BackendSource, budgetMs = 30_000): Op[] {
  const deadline = Date.now() + budgetMs;
  let cur = [...prefix];
  for (let chunk = Math.max(1, (cur.length - 1) >> 1); chunk >= 1; chunk = chunk === 1 ? 0 : Math.max(1, chunk >> 1)) {
    let progress = true;
    while (progress && Date.now() < deadline) {
      progress = false;
      for (let start = cur.length - 1 - chunk; start >= 0 && Date.now() < deadline; start -= chunk) {
        const cand = [...cur.slice(0, start), ...cur.slice(start + chunk)];
        if (reproduces(cand, sig, a, b)) {
          cur = cand;
          progress = true;
        }
      }
    }
  }
  return cur;
}

export interface Divergence {
  seed: number;
  /** Index of the divergent op in the seed's op list. */
  index: number;
  op: Op;
  a: string;
  b: string;
  mem?: string;
  /** divergenceClass() of the op. */
  cls: string;
  /** The shortest failing prefix of the seed's op list (ends with the divergent op). */
  prefix: Op[];
  /** Results of the prefix, as readable lines. */
  prefixLines: string[];
  /** The prefix with every op removed that the divergence does not need (after minimize()). */
  minimal?: Op[];
  minimalLines?: string[];
}

export interface SequenceResult {
  seed: number;
  /** Ops executed (all of them, unless a divergence left the two sides in different states). */
  executed: number;
  records: OpRecord[];
  /** Every divergent op, in order. */
  divergences: Divergence[];
  stopped: boolean;
  cleanupErrors: string[];
}

/**
 * The shortest prefix of `ops` that still ends in this divergence. Each op is compared as it
 * runs, so the prefix ending at the divergent op is the shortest; it is re-run on fresh
 * backends to make sure it does not depend on anything before it, and if it does not
 * reproduce, the shortest reproducing prefix is searched for (binary search).
 */
export function shortestPrefix(ops: readonly Op[], index: number, sig: string, a: BackendSource, b: BackendSource): Op[] {
  const prefix = ops.slice(0, index + 1);
  if (reproduces(prefix, sig, a, b)) return prefix;
  let lo = 1;
  let hi = ops.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (executeOps(ops.slice(0, mid), a, b).divergent.length > 0) hi = mid;
    else lo = mid + 1;
  }
  return ops.slice(0, lo);
}

/** Fills in d.minimal: the prefix shrunk op by op (fresh backends for every attempt). */
export function minimize(d: Divergence, a: BackendSource, b: BackendSource, budgetMs = 20_000): Divergence {
  const last = { index: d.index, op: d.op, a: d.a, b: d.b, ...(d.mem ? { mem: d.mem } : {}) };
  const minimal = shrink(d.prefix, signature(last), a, b, budgetMs);
  d.minimal = minimal;
  d.minimalLines = executeOps(minimal, a, b).records.map(formatRecord);
  return d;
}

/**
 * Generates the seed's op list and runs it on both backends. Each divergence comes with its
 * shortest failing prefix; with `minimize`, the first divergence of each class is also shrunk
 * to a minimal sequence. Pass factories (not instances) so that re-runs get fresh backends.
 */
export function runSequence(
  seed: number,
  nOps: number,
  backendA: BackendSource,
  backendB: BackendSource,
  options: { minimize?: boolean; minimizeBudgetMs?: number; continueOnSameState?: boolean; host?: HostShape } = {},
): SequenceResult {
  const ops = generateOps(seed, nOps, options.host);
  const x = executeOps(ops, backendA, backendB, { continueOnSameState: options.continueOnSameState ?? true });
  const divergences: Divergence[] = [];
  const seen = new Set<string>();
  for (const i of x.divergent) {
    const rec = x.records[i]!;
    const cls = divergenceClass(rec);
    // Re-check (fresh backends) only the first of each class: the rest are reported as is.
    const prefix = seen.has(cls) ? ops.slice(0, i + 1) : shortestPrefix(ops, i, signature(rec), backendA, backendB);
    const d: Divergence = {
      seed, index: i, op: rec.op, a: rec.a, b: rec.b, ...(rec.mem ? { mem: rec.mem } : {}), cls,
      prefix, prefixLines: x.records.slice(0, prefix.length).map(formatRecord),
    };
    if (options.minimize && !seen.has(cls)) minimize(d, backendA, backendB, options.minimizeBudgetMs);
    seen.add(cls);
    divergences.push(d);
  }
  return { seed, executed: x.records.length, records: x.records, divergences, stopped: x.stopped, cleanupErrors: x.cleanupErrors };
}

// ---- formatting ---------------------------------------------------------------------------

export function hex(v: bigint): string {
  return v < 0n ? `-0x${(-v).toString(16)}` : `0x${v.toString(16)}`;
}

function val(v: Val): string {
  if (typeof v === 'number') return `${v} (number)`;
  if (v < 65536n) return `${v}`;
  return hex(v);
}

function ua(u: UAddr): string {
  return 'lit' in u ? hex(u.lit) : `addr(${u.map})${u.plus ? `+${hex(u.plus)}` : ''}`;
}

const ref = (h: HRef | undefined): string => (h === undefined ? '-' : h === STALE ? `stale(${STALE_FD})` : h === NEG ? '-1' : h);

function memFlags(f: number): string {
  const names: string[] = [];
  if (f & MemFlag.LOG_DIRTY_PAGES) names.push('LOG');
  if (f & MemFlag.READONLY) names.push('RO');
  if (f & MemFlag.GUEST_MEMFD) names.push('GMEM');
  const rest = f & ~7;
  if (rest) names.push(`0x${(rest >>> 0).toString(16)}`);
  return names.join('|') || '0';
}

function slotName(s: number): string {
  return s >>> 16 ? `${s & 0xffff}@as${s >>> 16}` : `${s}`;
}

/** One op as a readable line (what a C reproducer would pass). */
export function formatOp(op: Op): string {
  switch (op.k) {
    case 'createVm':
      return `${op.id} = KVM_CREATE_VM(sys, type=${op.type})`;
    case 'close':
      return `close(${ref(op.h)})`;
    case 'createGmem':
      return `${op.id} = KVM_CREATE_GUEST_MEMFD(${ref(op.vm)}, size=${val(op.size)}, flags=${val(op.flags)})`;
    case 'mmap':
      return `${op.id} = mmap(${ref(op.g)}, len=${val(op.len)}, off=${val(op.off)}, prot=${op.prot}, flags=0x${op.flags.toString(16)})`;
    case 'munmap':
      return `munmap(${op.m})`;
    case 'write':
      return `write ${op.len} bytes (seed ${op.data}) at ${op.m}[${op.at}]`;
    case 'fallocate':
      return `fallocate(${ref(op.g)}, mode=0x${(op.mode >>> 0).toString(16)}, off=${val(op.off)}, len=${val(op.len)})`;
    case 'region2':
      return `SET_USER_MEMORY_REGION2(${ref(op.vm)}, slot=${slotName(op.slot)}, flags=${memFlags(op.flags)}, gpa=${val(op.gpa)}, size=${val(op.size)}, uaddr=${ua(op.uaddr)}, gmem=${ref(op.gm)}, gmem_off=${val(op.gmOff)})`;
    case 'region':
      return `SET_USER_MEMORY_REGION(${ref(op.vm)}, slot=${slotName(op.slot)}, flags=${memFlags(op.flags)}, gpa=${val(op.gpa)}, size=${val(op.size)}, uaddr=${ua(op.uaddr)})`;
    case 'attrs':
      return `SET_MEMORY_ATTRIBUTES(${ref(op.vm)}, address=${val(op.address)}, size=${val(op.size)}, attributes=${val(op.attributes)}, flags=${val(op.flags)})`;
    case 'checkExt':
      return `CHECK_EXTENSION(${ref(op.h)}, ${(Object.keys(Cap) as (keyof typeof Cap)[]).find((k) => Cap[k] === op.cap) ?? op.cap})`;
    case 'createVcpu':
      return `${op.id} = KVM_CREATE_VCPU(${ref(op.vm)}, id=${op.vcpuId})`;
    case 'preFault':
      return `PRE_FAULT_MEMORY(${ref(op.c)}, gpa=${val(op.gpa)}, size=${val(op.size)}, flags=${val(op.flags)})`;
    case 'fstat':
      return `fstat(${ref(op.h)})`;
    case 'apiVersion':
      return `GET_API_VERSION(${ref(op.h)})`;
    case 'vcpuMmapSize':
      return `GET_VCPU_MMAP_SIZE(${ref(op.h)})`;
  }
}

export function formatRecord(r: OpRecord): string {
  const same = r.a === r.b && !r.mem;
  const res = r.a === r.b ? r.a : `kernel=${r.a}  sim=${r.b}`;
  return `#${String(r.index).padStart(3)} ${same ? ' ' : '!'} ${formatOp(r.op)}  -> ${res}${r.mem ? `  MEMORY: ${r.mem}` : ''}`;
}

/** The divergence as lines for a report. */
export function formatDivergence(d: Divergence): string[] {
  const seq = d.minimalLines ?? d.prefixLines;
  return [
    `seed ${d.seed}: divergence at op #${d.index}: ${formatOp(d.op)}`,
    `  kernel: ${d.a}`,
    `  sim:    ${d.b}`,
    ...(d.mem ? [`  memory: ${d.mem}`] : []),
    `  shortest failing prefix: ${d.prefix.length} ops` + (d.minimal ? `; minimal sequence (${d.minimal.length} ops):` : ':'),
    ...seq.map((l) => `    ${l}`),
  ];
}
