/**
 * The simulated backend: a model of a Linux 6.18+ x86-64 KVM host in TypeScript, answering
 * every RawBackend call as the kernel would (same errno for the same input), as the kernel of
 * its profile would where kernels differ, with state sparse in memory (see memory.ts for
 * where file contents live). Validation is the shared rule table (lib/rules/), the same rules the
 * typed layer runs before its calls; this file holds only the state and its changes.
 *
 * Handles are numbers from 1,000,000,000 up, far above real fds, so a mix-up is evident.
 */
import { fstatSync } from 'node:fs';
import { toInt, toU64, typeName } from '../../base/args.js';
import { KvmError, kvmError, type ErrnoCode } from '../../base/errors.js';
import { IntervalIndex } from '../../base/interval.js';
import { RangeMap } from '../../base/rangemap.js';
import { encodeSregs, RESET_SREGS, resetRegs, REGS_SIZE, SREGS_SIZE } from '../../base/structs.js';
import { Cap, Falloc, GuestMemfdFlag, KVM_API_VERSION, Madv, MapFlag, MemFlag, MemoryAttribute, Prot } from '../../base/uapi.js';
import { checkMemslot, isViolation, type GmemLookup, type MemslotContext, type RegionInput, type SlotView } from '../../rules/memslot.js';
import { checkSetMemoryAttributes } from '../../rules/attributes.js';
import { checkFallocate, type FallocateTarget } from '../../rules/fallocate.js';
import { checkCreateGuestMemfd } from '../../rules/guest-memfd.js';
import { checkMmapCall, type MmapTarget } from '../../rules/mmap.js';
import { checkPreFault } from '../../rules/prefault.js';
import { violationError, type Violation } from '../../rules/types.js';
import type { Handle, RawBackend, RawMapping, RawMemoryAttributes, RawPreFault, RawRegion, RawRegion2, RawStat } from '../types.js';
import { nativeBackend } from '../native.js';
import { AddressSpace, BufferStore, MemfdStore, type FileStore, type MemfdOps, type SimMapping } from './memory.js';
import { capOf, defaultProfile, PRIVATE_MEM_TYPES, type SimProfile } from './profile.js';

export const SIM_HANDLE_BASE = 1_000_000_000;
/** vm.mmap_min_addr: the lowest address mmap hands out. */
const MMAP_MIN_ADDR = 0x10000n;
const PAGE = 4096n;
/** MSR_IA32_APICBASE_BSP */
const APIC_BASE_BSP = 0x100n;
/** DEFAULT_MAP_WINDOW on x86-64: the top of what mmap hands out without a hint. */
const DEFAULT_MAP_WINDOW = (1n << 47n) - PAGE;

interface SimSlot extends SlotView {
  /** The bound gmem file; cleared when the file is released (the slot stays). */
  file: SimFile | undefined;
  pgoff: number;
  /** KVM_MEMSLOT_GMEM_ONLY: bound to a gmem with MMAP, whose shared pages come from the gmem. */
  gmemOnly: boolean;
}

class SimVm {
  slots = new Map<number, SimSlot>();
  byGfn = new Map<number, IntervalIndex<SimSlot>>();
  attributes = new RangeMap<bigint>(0n);
  /** vCPU ids ever created: an id stays taken after its fd closes (vCPUs go with the VM). */
  vcpuIds = new Set<number>();
  /** Whether a memslot was ever created (a host that cannot pre-fault may answer differently before). */
  everHadSlot = false;
  /** KVM_CAP_EXIT_HYPERCALL: the hypercalls that exit to userspace. */
  hypercallExits = 0n;
  /** Memslot deletions so far: each makes the MMU roots the vCPUs hold obsolete. */
  rootGeneration = 0;
  /** References: the VM fd, each gmem file, each vCPU (kvm_get_kvm). */
  refs = 1;
  constructor(readonly type: number) {}
}

/** A file with contents: a guest_memfd or a memfd. */
class SimFile {
  bindings = new IntervalIndex<SimSlot>();
  /** Open fds and live mappings (a VMA holds a file reference). */
  refs = 1;
  #store: FileStore | undefined;
  constructor(
    /** The VM of a guest_memfd; undefined for a memfd. */
    readonly vm: SimVm | undefined,
    public size: bigint,
    readonly flags: bigint,
    readonly ino: bigint,
    readonly newStore: (size: number) => FileStore,
  ) {}
  /** The contents, made on first use (a file never mapped holds none). */
  get store(): FileStore {
    return (this.#store ??= this.newStore(Number(this.size)));
  }
  get hasStore(): boolean {
    return this.#store !== undefined;
  }
}

class SimVcpu {
  regs = resetRegs();
  sregs: Uint8Array;
  /** The kvm_run area's contents, shared by the vCPU's mappings. */
  run: FileStore | undefined;
  /** References: the fd and each mapping of the run area (a VMA holds the file). */
  refs = 1;
  /** The VM's rootGeneration when this vCPU's MMU root was loaded (its first pre-fault). */
  rootGeneration: number | undefined;
  constructor(readonly vm: SimVm, readonly id: number) {
    // The APIC's BSP bit is set for vCPU 0 only (KVM's default bsp_vcpu_id).
    this.sregs = encodeSregs(id === 0 ? RESET_SREGS : { ...RESET_SREGS, apicBase: RESET_SREGS.apicBase & ~APIC_BASE_BSP });
  }
}

type SimObject =
  | { kind: 'system' }
  | { kind: 'vm'; vm: SimVm }
  | { kind: 'gmem'; file: SimFile }
  | { kind: 'memfd'; file: SimFile }
  | { kind: 'vcpu'; vcpu: SimVcpu };

/** A live host mapping: its memory, the file it holds a reference on, where it is. */
interface SimVma {
  mapping: SimMapping;
  store: FileStore;
  file: SimFile | undefined;
  /** Anonymous memory: its store goes with the mapping. */
  anonymous: boolean;
  /** The vCPU whose run area this is (the mapping holds it). */
  vcpu?: SimVcpu;
}

const ioctl = (request: string) => ({ syscall: 'ioctl', request });

function fail(code: ErrnoCode, where: { syscall: string; request?: string }, message: string): never {
  throw kvmError(code, where, message);
}

export interface SimOptions {
  /**
   * Where file contents live: 'memfd' (OS shared memory through the native addon: costs what
   * was written), 'buffer' (ArrayBuffers, no addon needed; see memory.ts for the limits), or
   * 'auto' (default: memfd where the addon loads).
   */
  memory?: 'auto' | 'memfd' | 'buffer';
  /** The native calls the memfd store makes (default: the addon's). */
  memfdOps?: MemfdOps;
}

export class SimBackend implements RawBackend {
  readonly kind = 'simulated' as const;
  readonly pageSize = 4096;
  readonly profile: SimProfile;
  /** Where file contents live. */
  readonly memory: 'memfd' | 'buffer';
  #handles = new Map<number, SimObject>();
  #next = SIM_HANDLE_BASE;
  #nextIno = 1n;
  #ops: MemfdOps | undefined;
  #addresses: AddressSpace;
  /** Live mappings (what munmap and madvise act on, and what a memslot's host addresses reach). */
  #vmas = new Map<SimMapping, SimVma>();
  #vmaByAddress = new IntervalIndex<SimVma>();

  constructor(profile: SimProfile = defaultProfile, options: SimOptions = {}) {
    this.profile = profile;
    const want = options.memory ?? 'auto';
    this.#ops = want === 'buffer' ? undefined : (options.memfdOps ?? nativeMemfdOps(want === 'memfd'));
    this.memory = this.#ops ? 'memfd' : 'buffer';
    this.#addresses = new AddressSpace(0x100000000000n, profile.userAddressMax);
  }

  #newStore(size: number, name: string): FileStore {
    return this.#ops ? new MemfdStore(size, this.#ops, name) : new BufferStore(size, this.#addresses);
  }

  // ---- handles ------------------------------------------------------------------------

  #add(obj: SimObject): Handle {
    const h = this.#next++;
    this.#handles.set(h, obj);
    return h;
  }

  /**
   * The object behind an fd. Called, as the addon checks its fds, after every argument was
   * converted: a bad value is a TypeError/RangeError before a stale fd is EBADF.
   */
  #get(fd: unknown, where: { syscall: string; request?: string }): SimObject {
    const h = fdArg(fd);
    const o = this.#handles.get(h);
    if (!o) fail('EBADF', where, `fd ${h} is not open`);
    return o;
  }

  /** A file that is not a KVM fd (its ioctls are ENOTTY). */
  #isFile(o: SimObject): boolean {
    return o.kind === 'gmem' || o.kind === 'memfd';
  }

  /** The VM of a VM-fd ioctl; other fds answer as the kernel's ioctl dispatch would. */
  #vm(fd: unknown, request: string): SimVm {
    const o = this.#get(fd, ioctl(request));
    if (o.kind === 'vm') return o.vm;
    return fail(this.#isFile(o) ? 'ENOTTY' : 'EINVAL', ioctl(request), `fd ${String(fd)} is not a VM`);
  }

  #hasPrivate(vm: SimVm): boolean {
    return (PRIVATE_MEM_TYPES & (1 << vm.type)) !== 0;
  }

  /** The profile's KVM_CHECK_EXTENSION answer for `cap` on `vm` (on /dev/kvm when undefined). */
  #cap(vm: SimVm | undefined, cap: number): number {
    return capOf(this.profile, vm ? vm.type : 'system', cap);
  }

  /** KVM_CAP_GUEST_MEMFD_FLAGS for a VM (or the system when vm is undefined). */
  #gmemFlags(vm: SimVm | undefined): bigint {
    return BigInt(this.#cap(vm, Cap.GUEST_MEMFD_FLAGS));
  }

  /** kvm_supported_mem_attributes(kvm) */
  #attributesSupported(vm: SimVm | undefined): bigint {
    return BigInt(this.#cap(vm, Cap.MEMORY_ATTRIBUTES));
  }

  // ---- system -------------------------------------------------------------------------

  open(path: string): Handle {
    if (typeof path !== 'string') throw new TypeError(`path must be a string, got ${typeName(path)}`);
    return this.#add({ kind: 'system' });
  }

  close(fd: Handle): void {
    const o = this.#get(fd, { syscall: 'close' });
    this.#handles.delete(fd);
    if (o.kind === 'vm') this.#putVm(o.vm);
    else if (o.kind === 'gmem' || o.kind === 'memfd') this.#putFile(o.file);
    else if (o.kind === 'vcpu') this.#putVcpu(o.vcpu);
  }

  /** Drops a vCPU reference; the last one frees its run area and drops its VM reference. */
  #putVcpu(v: SimVcpu): void {
    if (--v.refs > 0) return;
    v.run?.release();
    v.run = undefined;
    this.#putVm(v.vm);
  }

  getApiVersion(fd: Handle): number {
    const o = this.#get(fd, ioctl('KVM_GET_API_VERSION'));
    if (o.kind !== 'system') fail(o.kind === 'vm' || this.#isFile(o) ? 'ENOTTY' : 'EINVAL', ioctl('KVM_GET_API_VERSION'), 'not /dev/kvm');
    return KVM_API_VERSION;
  }

  checkExtension(fd: Handle, cap: number): number {
    const where = ioctl('KVM_CHECK_EXTENSION');
    fdArg(fd);
    const c = toInt(cap, 'cap', -(2 ** 31), 2 ** 31 - 1);
    const o = this.#get(fd, where);
    if (this.#isFile(o)) fail('ENOTTY', where, 'not a KVM fd');
    if (o.kind === 'vcpu') fail('EINVAL', where, 'not /dev/kvm or a VM');
    return this.#cap(o.kind === 'vm' ? o.vm : undefined, c);
  }

  createVm(fd: Handle, type: number): Handle {
    const where = ioctl('KVM_CREATE_VM');
    fdArg(fd);
    const t = toInt(type, 'type', 0, 2 ** 32 - 1);
    const o = this.#get(fd, where);
    if (o.kind !== 'system') fail(o.kind === 'vm' || this.#isFile(o) ? 'ENOTTY' : 'EINVAL', where, 'not /dev/kvm');
    if (t >= 32 || !((this.#cap(undefined, Cap.VM_TYPES) || 1) & (1 << t))) fail('EINVAL', where, `VM type ${t} is not supported by this host`);
    return this.#add({ kind: 'vm', vm: new SimVm(t) });
  }

  getVcpuMmapSize(fd: Handle): number {
    const o = this.#get(fd, ioctl('KVM_GET_VCPU_MMAP_SIZE'));
    if (o.kind !== 'system') fail(o.kind === 'vcpu' ? 'EINVAL' : 'ENOTTY', ioctl('KVM_GET_VCPU_MMAP_SIZE'), 'not /dev/kvm');
    return this.profile.vcpuMmapSize;
  }

  createVcpu(vmFd: Handle, id: number): Handle {
    fdArg(vmFd);
    const n = toInt(id, 'vcpuId', 0, 2 ** 32 - 1);
    const vm = this.#vm(vmFd, 'KVM_CREATE_VCPU');
    const maxIds = this.#cap(vm, Cap.MAX_VCPU_ID) || this.#cap(vm, Cap.MAX_VCPUS);
    if (n >= maxIds) fail('EINVAL', ioctl('KVM_CREATE_VCPU'), `vCPU id ${n} is not below KVM_MAX_VCPU_IDS (${maxIds})`);
    if (vm.vcpuIds.has(n)) fail('EEXIST', ioctl('KVM_CREATE_VCPU'), `vCPU ${n} exists`);
    vm.vcpuIds.add(n);
    vm.refs++;
    return this.#add({ kind: 'vcpu', vcpu: new SimVcpu(vm, n) });
  }

  #putVm(vm: SimVm): void {
    if (--vm.refs > 0) return;
    // kvm_destroy_vm -> kvm_free_memslots: every slot unbinds from its gmem.
    for (const s of vm.slots.values()) s.file?.bindings.remove(s.pgoff, s);
    vm.slots.clear();
    vm.byGfn.clear();
  }

  // ---- guest_memfd and memfd ------------------------------------------------------------

  createGuestMemfd(vmFd: Handle, size: bigint | number, flags: bigint | number): Handle {
    const where = ioctl('KVM_CREATE_GUEST_MEMFD');
    fdArg(vmFd);
    const sz = toU64(size, 'size');
    const fl = toU64(flags, 'flags');
    const o = this.#get(vmFd, where);
    if (o.kind !== 'vm') fail(this.#isFile(o) ? 'ENOTTY' : 'EINVAL', where, 'guest_memfd is created on a VM fd');
    const v = checkCreateGuestMemfd(sz, fl, this.#gmemFlags(o.vm), PAGE);
    if (v) throw violationError(v, where);
    o.vm.refs++;
    const file = new SimFile(o.vm, sz, fl, this.#nextIno++, (n) => this.#newStore(n, 'kvm-gmem sim guest_memfd'));
    return this.#add({ kind: 'gmem', file });
  }

  memfdCreate(name: string): Handle {
    if (typeof name !== 'string') throw new TypeError(`name must be a string, got ${typeName(name)}`);
    const file = new SimFile(undefined, 0n, 0n, this.#nextIno++, (n) => this.#newStore(n, name.slice(0, 63)));
    return this.#add({ kind: 'memfd', file });
  }

  ftruncate(fd: Handle, length: bigint | number): void {
    const where = { syscall: 'ftruncate' };
    fdArg(fd);
    const len = toU64(length, 'length');
    const o = this.#get(fd, where);
    // A guest_memfd cannot change size (kvm_gmem_setattr); other KVM fds are not regular files.
    if (o.kind !== 'memfd') fail('EINVAL', where, o.kind === 'gmem' ? 'a guest_memfd cannot be resized' : 'not a regular file');
    const f = o.file;
    if (len >= 1n << 63n) fail('EINVAL', where, 'length is negative as an off_t');
    if (len < f.size && [...this.#vmas.values()].some((v) => v.file === f)) {
      // (As the native addon: shrinking a mapped memfd would make its views fault.)
      fail('EBUSY', where, 'the memfd is mapped: unmap it before shrinking it');
    }
    if (f.hasStore) f.store.resize(Number(len));
    f.size = len;
  }

  /** Drops a file reference; the last one releases it (kvm_gmem_release for a gmem). */
  #putFile(f: SimFile): void {
    if (--f.refs > 0) return;
    // Slots stay (still GUEST_MEMFD) but lose the file; a later fault there is EFAULT.
    for (const s of [...f.bindings.items()]) {
      s.file = undefined;
      f.bindings.remove(s.pgoff, s);
    }
    if (f.hasStore) f.store.release();
    if (f.vm) this.#putVm(f.vm);
  }

  fallocate(fd: Handle, mode: number, offset: bigint | number, length: bigint | number): void {
    fdArg(fd);
    const m = toInt(mode, 'mode', -(2 ** 31), 2 ** 31 - 1);
    const off = toU64(offset, 'offset');
    const len = toU64(length, 'length');
    const o = this.#get(fd, { syscall: 'fallocate' });
    const target: FallocateTarget = o.kind === 'gmem' ? { kind: 'gmem', size: o.file.size } : o.kind === 'memfd' ? { kind: 'shmem', size: o.file.size } : { kind: 'not-regular' };
    const v = checkFallocate(m, off, len, target, PAGE, { writeZeroes: this.profile.fallocateWriteZeroes });
    if (v) throw violationError(v, { syscall: 'fallocate' });
    if (o.kind === 'memfd' && !(m & Falloc.KEEP_SIZE) && off + len > o.file.size) {
      if (o.file.hasStore) o.file.store.resize(Number(off + len));
      o.file.size = off + len;
    }
    const f = o.kind === 'gmem' || o.kind === 'memfd' ? o.file : undefined;
    if (f?.hasStore && m & Falloc.PUNCH_HOLE && off < f.size) f.store.zero(Number(off), Number(len > f.size ? f.size : len));
  }

  fstat(fd: Handle): RawStat {
    const o = this.#get(fd, { syscall: 'fstat' });
    if (o.kind === 'gmem' || o.kind === 'memfd') return { size: o.file.size, mode: o.kind === 'gmem' ? 0o100600 : 0o100777, blksize: this.pageSize, blocks: 0n, ino: o.file.ino };
    return { size: 0n, mode: o.kind === 'system' ? 0o20600 : 0o600, blksize: this.pageSize, blocks: 0n, ino: 0n };
  }

  mmap(fd: Handle, length: bigint | number, offset: bigint | number, prot: number, flags: number): RawMapping {
    const where = { syscall: 'mmap' };
    const fl = toInt(flags, 'flags', -(2 ** 31), 2 ** 31 - 1);
    const anonymous = (fl & MapFlag.ANONYMOUS) !== 0 && fd === -1;
    if (!anonymous) fdArg(fd);
    const len = toU64(length, 'length');
    const off = toU64(offset, 'offset');
    const p = toInt(prot, 'prot', -(2 ** 31), 2 ** 31 - 1);
    if (fl & (MapFlag.FIXED | MapFlag.FIXED_NOREPLACE)) throw new RangeError('mmap: MAP_FIXED and MAP_FIXED_NOREPLACE are not supported');
    const o = anonymous ? undefined : this.#get(fd, where);
    const target: MmapTarget =
      o === undefined ? { kind: 'anonymous' }
      : o.kind === 'gmem' ? { kind: 'gmem', flags: o.file.flags }
      : o.kind === 'memfd' ? { kind: 'shmem' }
      : o.kind === 'vcpu' ? { kind: 'vcpu' }
      : { kind: 'no-mmap', noexec: o.kind === 'vm' };
    // An mmap without an address hint is placed below DEFAULT_MAP_WINDOW (47 bits) even where
    // 5-level paging lets memslots name addresses up to 56 bits.
    const window = this.profile.userAddressMax < DEFAULT_MAP_WINDOW ? this.profile.userAddressMax : DEFAULT_MAP_WINDOW;
    const v = checkMmapCall(len, off, p, fl, target, PAGE, window - MMAP_MIN_ADDR, { anonInodeExec: this.profile.anonInodeExec });
    if (v) throw violationError(v, where);
    if ((fl & 0x03) === MapFlag.PRIVATE && (o === undefined || o.kind === 'memfd')) {
      throw kvmError('EOPNOTSUPP', where, 'the simulator maps memory MAP_SHARED only (MAP_PRIVATE copy-on-write is not modelled)');
    }
    const rw = (p & (Prot.READ | Prot.WRITE)) === (Prot.READ | Prot.WRITE);
    let vma: SimVma;
    if (o === undefined) {
      const store = this.#newStore(Number(len), 'kvm-gmem sim anonymous');
      let mapping: SimMapping;
      try {
        mapping = this.#mapStore(store, 0, len, true, rw);
      } catch (e) {
        store.release(); // (its memfd, on the memfd store)
        throw e;
      }
      vma = { mapping, store, file: undefined, anonymous: true };
    } else if (o.kind === 'vcpu') {
      // The kvm_run area (and the pages after it): its bytes, shared by the vCPU's mappings.
      const store = (o.vcpu.run ??= this.#newStore(this.profile.vcpuMmapSize, 'kvm-gmem sim kvm_run'));
      vma = { mapping: this.#mapStore(store, Number(off), len, true, rw), store, file: undefined, anonymous: false, vcpu: o.vcpu };
      o.vcpu.refs++;
    } else if (o.kind === 'gmem' || o.kind === 'memfd') {
      const f = o.file;
      const accessible = o.kind === 'memfd' || ((f.flags & GuestMemfdFlag.INIT_SHARED) !== 0n && off < f.size);
      vma = { mapping: this.#mapStore(f.store, Number(off), len, accessible, rw), store: f.store, file: f, anonymous: false };
      f.refs++;
    } else {
      return fail('ENODEV', where, `fd ${fd} cannot be mapped`);
    }
    this.#vmas.set(vma.mapping, vma);
    const a = Number(vma.mapping.address);
    this.#vmaByAddress.insert(a, a + Number(len), vma);
    return vma.mapping;
  }

  #mapStore(store: FileStore, offset: number, length: bigint, accessible: boolean, rw: boolean): SimMapping {
    try {
      return store.map(offset, length, accessible, rw);
    } catch (e) {
      if ((e as { code?: string }).code === 'ENOMEM') throw e;
      return fail('ENOMEM', { syscall: 'mmap' }, (e as Error).message);
    }
  }

  #vma(mapping: unknown): SimVma | undefined {
    const vma = this.#vmas.get(mapping as SimMapping);
    if (vma) return vma;
    if ((mapping as SimMapping | undefined)?.unmapped === true) return undefined; // unmapped already
    throw new TypeError('expected a mapping returned by mmap()');
  }

  munmap(mapping: RawMapping): void {
    const vma = this.#vma(mapping);
    if (!vma) return; // idempotent
    vma.store.unmap(vma.mapping);
    this.#vmas.delete(vma.mapping);
    this.#vmaByAddress.remove(Number(vma.mapping.address), vma);
    if (vma.anonymous) vma.store.release();
    if (vma.file) this.#putFile(vma.file);
    if (vma.vcpu) this.#putVcpu(vma.vcpu);
  }

  madvise(mapping: RawMapping, offset: bigint | number, length: bigint | number, advice: number): void {
    const where = { syscall: 'madvise' };
    const vma = this.#vma(mapping);
    const off = toU64(offset, 'offset');
    const len = toU64(length, 'length');
    const adv = toInt(advice, 'advice', -(2 ** 31), 2 ** 31 - 1);
    if (!vma) return fail('EBADF', where, 'this mapping is unmapped');
    if (!(Object.values(Madv) as number[]).includes(adv)) throw new RangeError('advice must be MADV_NORMAL, MADV_WILLNEED, MADV_DONTNEED, MADV_FREE or MADV_REMOVE');
    if ((vma.mapping.address + off) % PAGE !== 0n) fail('EINVAL', where, 'the address is not page-aligned');
    if (adv !== Madv.REMOVE) return; // shared memory keeps its contents under the other advice
    // MADV_REMOVE punches the file's pages (vfs_fallocate): zeros in every mapping.
    const fileOff = BigInt(vma.mapping.offset) + off;
    const span = ((len + PAGE - 1n) / PAGE) * PAGE;
    vma.store.zero(Number(fileOff), Number(span));
  }

  // ---- memslots -----------------------------------------------------------------------

  setUserMemoryRegion(vmFd: Handle, region: RawRegion): void {
    this.#setRegion(vmFd, region, false);
  }

  setUserMemoryRegion2(vmFd: Handle, region: RawRegion2): void {
    this.#setRegion(vmFd, region, true);
  }

  setUserMemoryRegions2(vmFd: Handle, regions: readonly RawRegion2[]): void {
    const fd = fdArg(vmFd);
    if (!Array.isArray(regions)) throw new TypeError(`regions must be an array, got ${typeName(regions)}`);
    // Every region read before the first call, as the addon does.
    const rs = regions.map((r, i) => this.#region(r, true, `regions[${i}]`));
    this.#vm(fd, 'KVM_SET_USER_MEMORY_REGION2');
    for (let i = 0; i < rs.length; i++) {
      try {
        this.#applyRegion(fd, rs[i]!, 'KVM_SET_USER_MEMORY_REGION2');
      } catch (e) {
        if (e instanceof KvmError) Object.assign(e, { index: i });
        throw e;
      }
    }
  }

  #setRegion(vmFd: Handle, region: RawRegion2, v2: boolean): void {
    const fd = fdArg(vmFd);
    this.#applyRegion(fd, this.#region(region, v2, 'region'), v2 ? 'KVM_SET_USER_MEMORY_REGION2' : 'KVM_SET_USER_MEMORY_REGION');
  }

  #region(region: RawRegion2, v2: boolean, name: string): RegionInput {
    if (typeof region !== 'object' || region === null) throw new TypeError(`${name} must be an object, got ${typeName(region)}`);
    return {
      v2,
      slot: toInt(region.slot, 'slot', 0, 2 ** 32 - 1),
      flags: region.flags === undefined ? 0 : toInt(region.flags, 'flags', 0, 2 ** 32 - 1),
      guestPhysAddr: toU64(region.guestPhysAddr, 'guestPhysAddr'),
      memorySize: toU64(region.memorySize, 'memorySize'),
      userspaceAddr: region.userspaceAddr === undefined ? 0n : toU64(region.userspaceAddr, 'userspaceAddr'),
      guestMemfdOffset: !v2 || region.guestMemfdOffset === undefined ? 0n : toU64(region.guestMemfdOffset, 'guestMemfdOffset'),
      guestMemfd: !v2 || region.guestMemfd === undefined ? 0 : toInt(region.guestMemfd, 'guestMemfd', 0, 2 ** 32 - 1),
    };
  }

  #applyRegion(fd: number, r: RegionInput, request: string): void {
    const vm = this.#vm(fd, request);
    const d = checkMemslot(r, this.#memslotContext(vm));
    if (isViolation(d)) throw violationError(d, ioctl(request));
    const key = (d.asId << 16) | d.id;
    let idx = vm.byGfn.get(d.asId);
    if (!idx) vm.byGfn.set(d.asId, (idx = new IntervalIndex()));
    const slot = vm.slots.get(key);
    switch (d.op) {
      case 'delete':
        idx.remove(slot!.baseGfn, slot!);
        slot!.file?.bindings.remove(slot!.pgoff, slot!);
        vm.slots.delete(key);
        vm.rootGeneration++;
        return;
      case 'move':
        idx.remove(slot!.baseGfn, slot!);
        slot!.baseGfn = d.baseGfn;
        idx.insert(d.baseGfn, d.baseGfn + d.npages, slot!);
        return;
      case 'flags':
        slot!.flags = r.flags;
        return;
      case 'noop':
        return;
      case 'create': {
        const gmem = r.flags & MemFlag.GUEST_MEMFD ? this.#handles.get(r.guestMemfd) : undefined;
        const file = gmem?.kind === 'gmem' ? gmem.file : undefined;
        const s: SimSlot = {
          asId: d.asId, id: d.id, baseGfn: d.baseGfn, npages: d.npages, flags: r.flags,
          userspaceAddr: r.userspaceAddr, file, pgoff: Number(r.guestMemfdOffset / PAGE),
          gmemOnly: file !== undefined && (file.flags & GuestMemfdFlag.MMAP) !== 0n,
        };
        vm.slots.set(key, s);
        vm.everHadSlot = true;
        idx.insert(d.baseGfn, d.baseGfn + d.npages, s);
        if (file) file.bindings.insert(s.pgoff, s.pgoff + s.npages, s);
      }
    }
  }

  #memslotContext(vm: SimVm): MemslotContext {
    const view = (s: SimSlot): SlotView => s; // a SimSlot is a SlotView (the rules only read it)
    return {
      pageSize: PAGE,
      readonlyMem: this.#cap(vm, Cap.READONLY_MEM) > 0,
      guestMemfd: this.#cap(vm, Cap.GUEST_MEMFD) > 0,
      addressSpaces: Math.max(1, this.#cap(vm, Cap.MULTI_ADDRESS_SPACE)),
      userAddressMax: this.profile.userAddressMax,
      maxGfn: (1n << BigInt(this.profile.guestPhysAddrBits - 12)) - 1n,
      gmemBoundCode: this.profile.gmemBoundErrno ?? 'EINVAL',
      maxGfnCheck: this.profile.maxGfnCheck,
      slot: (asId, id) => {
        const s = vm.slots.get((asId << 16) | id);
        return s && view(s);
      },
      overlapping: (asId, id, start, end) => {
        const s = vm.byGfn.get(asId)?.firstOverlap(start, end, vm.slots.get((asId << 16) | id));
        return s && view(s);
      },
      gmem: (fd): GmemLookup => {
        const o = this.#handles.get(fd);
        if (!o) return isProcessFd(fd) ? { kind: 'not-gmem', what: 'a file of this process' } : { kind: 'ebadf' };
        if (o.kind !== 'gmem') return { kind: 'not-gmem', what: `a ${o.kind === 'system' ? '/dev/kvm' : o.kind} fd` };
        if (o.file.vm !== vm) return { kind: 'foreign' };
        const f = o.file;
        return {
          kind: 'ok',
          size: f.size,
          boundSlot: (a, b) => {
            const s = f.bindings.firstOverlap(a, b);
            return s && view(s);
          },
        };
      },
    };
  }

  // ---- vCPU state (registers are kept; guest code cannot run) ---------------------------

  #vcpu(fd: Handle, request: string): SimVcpu {
    const o = this.#get(fd, ioctl(request));
    if (o.kind !== 'vcpu') fail(this.#isFile(o) ? 'ENOTTY' : 'EINVAL', ioctl(request), 'not a vCPU fd');
    return o.vcpu;
  }

  getRegs(vcpuFd: Handle): Uint8Array {
    return this.#vcpu(vcpuFd, 'KVM_GET_REGS').regs.slice();
  }
  setRegs(vcpuFd: Handle, regs: Uint8Array): void {
    this.#get(vcpuFd, ioctl('KVM_SET_REGS'));
    const bytes = structBytes(regs, REGS_SIZE, 'regs');
    this.#vcpu(vcpuFd, 'KVM_SET_REGS').regs = bytes;
  }
  getSregs(vcpuFd: Handle): Uint8Array {
    return this.#vcpu(vcpuFd, 'KVM_GET_SREGS').sregs.slice();
  }
  setSregs(vcpuFd: Handle, sregs: Uint8Array): void {
    this.#get(vcpuFd, ioctl('KVM_SET_SREGS'));
    const bytes = structBytes(sregs, SREGS_SIZE, 'sregs');
    this.#vcpu(vcpuFd, 'KVM_SET_SREGS').sregs = bytes;
  }

  run(vcpuFd: Handle, _runArea: RawMapping): never {
    this.#vcpu(vcpuFd, 'KVM_RUN');
    return fail('EOPNOTSUPP', ioctl('KVM_RUN'), 'the simulator cannot execute guest code: running a vCPU needs /dev/kvm (or the lab: kvm-gmem lab run)');
  }

  enableCap(fd: Handle, cap: number, args?: readonly (bigint | number)[]): void {
    const where = ioctl('KVM_ENABLE_CAP');
    fdArg(fd);
    const c = toInt(cap, 'cap', 0, 2 ** 32 - 1);
    if (args !== undefined && (!Array.isArray(args) || args.length > 4)) throw new TypeError('args must be an array of at most 4 u64s');
    const a = (args ?? []).map((x, i) => toU64(x, `args[${i}]`));
    const o = this.#get(fd, where);
    if (this.#isFile(o)) fail('ENOTTY', where, 'not a KVM fd');
    if (o.kind !== 'vm') fail('EINVAL', where, o.kind === 'vcpu' ? 'not a vCPU capability' : 'KVM_ENABLE_CAP is a VM or vCPU ioctl');
    if (c !== Cap.EXIT_HYPERCALL) fail('EINVAL', where, `capability ${c} cannot be enabled here (the simulator models KVM_CAP_EXIT_HYPERCALL)`);
    const valid = BigInt(this.#cap(o.vm, Cap.EXIT_HYPERCALL));
    const mask = a[0] ?? 0n;
    if (mask & ~valid) fail('EINVAL', where, `hypercalls ${mask} include some this host cannot exit on (valid: ${valid})`);
    o.vm.hypercallExits = mask;
  }

  // ---- attributes and pre-fault -------------------------------------------------------

  setMemoryAttributes(vmFd: Handle, attributes: RawMemoryAttributes): void {
    const where = ioctl('KVM_SET_MEMORY_ATTRIBUTES');
    const fd = fdArg(vmFd);
    if (typeof attributes !== 'object' || attributes === null) throw new TypeError('attributes must be an object');
    const a = {
      address: toU64(attributes.address, 'address'),
      size: toU64(attributes.size, 'size'),
      attributes: toU64(attributes.attributes, 'attributes'),
      flags: attributes.flags === undefined ? 0n : toU64(attributes.flags, 'flags'),
    };
    const vm = this.#vm(fd, where.request);
    if (!this.profile.memoryAttributesIoctl) fail('ENOTTY', where, 'this host has no KVM_SET_MEMORY_ATTRIBUTES');
    const v = checkSetMemoryAttributes(a, this.#attributesSupported(vm), PAGE);
    if (v) throw violationError(v, where);
    vm.attributes.set(Number(a.address / PAGE), Number((a.address + a.size) / PAGE), a.attributes);
  }

  /**
   * KVM_PRE_FAULT_MEMORY, page by page as kvm_arch_vcpu_pre_fault_memory -> kvm_tdp_map_page:
   * no slot is ENOENT; a private page needs a bound guest_memfd; a shared page comes from the
   * guest_memfd when the slot is gmem-only (its gmem has MMAP), else from the slot's host
   * memory, which must be mapped memory the host can fault in (EFAULT otherwise).
   */
  preFaultMemory(vcpuFd: Handle, range: RawPreFault): { gpa: bigint; size: bigint } {
    const where = ioctl('KVM_PRE_FAULT_MEMORY');
    const fd = fdArg(vcpuFd);
    if (typeof range !== 'object' || range === null) throw new TypeError('range must be an object');
    const r = { gpa: toU64(range.gpa, 'gpa'), size: toU64(range.size, 'size'), flags: range.flags === undefined ? 0n : toU64(range.flags, 'flags') };
    const o = this.#get(fd, where);
    if (o.kind !== 'vcpu') fail(o.kind === 'system' ? 'EINVAL' : 'ENOTTY', where, 'not a vCPU fd');
    const v: Violation | undefined = checkPreFault(r, PAGE);
    if (v) throw violationError(v, where);
    const vm = o.vcpu.vm;
    if (!this.#cap(vm, Cap.PRE_FAULT_MEMORY)) {
      // (The 6.18 PVM host answered ENOSPC until the VM's first memslot.)
      fail(vm.everHadSlot ? 'EOPNOTSUPP' : (this.profile.preFaultWithoutSlots ?? 'EOPNOTSUPP'), where, 'this host cannot pre-fault (no TDP MMU)');
    }
    // Here the kernel loads the vCPU's MMU root if it has none. A host whose pre-fault loops on
    // a root made obsolete by a memslot deletion (6.12) never maps a page until the vCPU runs:
    // the raw layer's watchdog interrupts it (EINTR). The simulator's vCPUs never run.
    const cpu = o.vcpu;
    if (this.profile.preFaultStaleRoot === 'loops') {
      if (cpu.rootGeneration !== undefined && cpu.rootGeneration !== vm.rootGeneration) {
        fail('EINTR', where, 'no page mapped before the watchdog: this kernel retries a fault on an MMU root made obsolete by a memslot deletion until the vCPU runs (KVM_RUN loads a new root)');
      }
      cpu.rootGeneration ??= vm.rootGeneration;
    }
    let gpa = r.gpa;
    let size = r.size;
    while (size > 0n) {
      const err = this.#faultIn(vm, gpa / PAGE);
      if (err) {
        if (size === r.size) fail(err, where, err === 'ENOENT' ? `no memslot at ${gpa}` : `guest page ${gpa} has no memory the kernel can fault in`);
        break;
      }
      gpa += PAGE;
      size -= PAGE;
    }
    return { gpa, size };
  }

  /** Why the page `gfn` cannot be mapped into the guest (undefined when it can). */
  #faultIn(vm: SimVm, gfn: bigint): ErrnoCode | undefined {
    const slot = vm.byGfn.get(0)?.containing(Number(gfn));
    if (!slot) return 'ENOENT';
    const gmem = (slot.flags & MemFlag.GUEST_MEMFD) !== 0;
    const isPrivate = this.#hasPrivate(vm) && (vm.attributes.get(Number(gfn)) & MemoryAttribute.PRIVATE) !== 0n;
    if (isPrivate || (gmem && slot.gmemOnly)) return gmem && slot.file ? undefined : 'EFAULT';
    const hva = slot.userspaceAddr + (gfn - BigInt(slot.baseGfn)) * PAGE;
    const vma = this.#vmaByAddress.containing(Number(hva));
    return vma && hva - vma.mapping.address < BigInt(vma.mapping.viewLength) ? undefined : 'EFAULT';
  }
}

/** An fd argument: an int32 (TypeError/RangeError otherwise), looked up only after the rest. */
function fdArg(fd: unknown): number {
  return toInt(fd, 'fd', -(2 ** 31), 2 ** 31 - 1);
}

function structBytes(v: unknown, size: number, name: string): Uint8Array {
  if (!ArrayBuffer.isView(v)) throw new TypeError(`${name} must be a typed array`);
  if (v.byteLength !== size) throw new RangeError(`${name} must be ${size} bytes`);
  return new Uint8Array(v.buffer, v.byteOffset, size).slice();
}

/** The addon's calls for the memfd store; undefined where the addon does not load (unless required). */
function nativeMemfdOps(required: boolean): MemfdOps | undefined {
  let b: RawBackend;
  try {
    b = nativeBackend();
  } catch (e) {
    if (required) throw e;
    return undefined;
  }
  return {
    memfdCreate: b.memfdCreate, ftruncate: b.ftruncate, fallocate: b.fallocate, close: b.close,
    mmap: (fd, length, offset, prot, flags) => b.mmap(fd, length, offset, prot, flags | (fd === -1 ? MapFlag.ANONYMOUS : 0)),
    munmap: b.munmap,
  };
}

function isProcessFd(fd: number): boolean {
  if (fd < 0 || fd >= SIM_HANDLE_BASE) return false;
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}
