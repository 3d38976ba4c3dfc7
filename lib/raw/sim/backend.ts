/**
 * The simulated backend: a model of a Linux 6.18 x86-64 KVM host in TypeScript, answering
 * every RawBackend call as the kernel would (same errno for the same input), with state
 * sparse in memory. Validation is the shared rule table (lib/rules/), the same rules the
 * typed layer runs before its calls; this file holds only the state and its changes.
 *
 * Handles are numbers from 1,000,000,000 up, far above real fds, so a mix-up is evident.
 */
import { fstatSync } from 'node:fs';
import { kvmError, type ErrnoCode } from '../../errors.js';
import { IntervalIndex } from '../../interval.js';
import { RangeMap } from '../../rangemap.js';
import { checkMemslot, isViolation, type GmemLookup, type MemslotContext, type RegionInput, type SlotView } from '../../rules/memslot.js';
import { checkCreateGuestMemfd, checkFallocate, checkMmapCall } from '../../rules/gmem.js';
import { checkPreFault, checkSetMemoryAttributes } from '../../rules/attributes.js';
import { violationError, type Violation } from '../../rules/types.js';
import { toInt, toU64, typeName } from '../../u64.js';
import { Cap, Falloc, GuestMemfdFlag, KVM_API_VERSION, KVM_USER_MEM_SLOTS, Map as MapFlag, MemoryAttribute } from '../constants.js';
import type { Handle, RawBackend, RawMapping, RawMemoryAttributes, RawPreFault, RawRegion, RawRegion2, RawStat } from '../types.js';
import { FileMemory, SimMapping } from './memory.js';
import { defaultProfile, PRIVATE_MEM_TYPES, PROTECTED_STATE_TYPES, type SimProfile } from './profile.js';

export const SIM_HANDLE_BASE = 1_000_000_000;
/** vm.mmap_min_addr: the lowest address mmap hands out. */
const MMAP_MIN_ADDR = 0x10000n;
const PAGE = 4096n;
const KVM_MAX_VCPU_IDS = 4096;

interface SimSlot extends SlotView {
  /** The bound gmem file; cleared when the file is released (the slot stays). */
  file: SimFile | undefined;
  pgoff: bigint;
}

class SimVm {
  slots = new Map<number, SimSlot>();
  byGfn = new Map<number, IntervalIndex<SimSlot>>();
  attributes = new RangeMap<bigint>(0n);
  /** vCPU ids ever created: an id stays taken after its fd closes (vCPUs go with the VM). */
  vcpuIds = new Set<number>();
  /** Whether a memslot was ever created (this host's pre-fault answers ENOSPC until then). */
  everHadSlot = false;
  /** References: the VM fd, each gmem file, each vCPU (kvm_get_kvm). */
  refs = 1;
  constructor(readonly type: number) {}
}

class SimFile {
  bindings = new IntervalIndex<SimSlot>();
  memory: FileMemory;
  /** Open fds and live mappings (a VMA holds a file reference). */
  refs = 1;
  constructor(readonly vm: SimVm, readonly size: bigint, readonly flags: bigint, readonly ino: bigint) {
    this.memory = new FileMemory(Number(size));
  }
}

type SimObject =
  | { kind: 'system' }
  | { kind: 'vm'; vm: SimVm }
  | { kind: 'gmem'; file: SimFile }
  | { kind: 'vcpu'; vm: SimVm; id: number };

const ioctl = (request: string) => ({ syscall: 'ioctl', request });

function fail(code: ErrnoCode, where: { syscall: string; request?: string }, message: string): never {
  throw kvmError(code, where, message);
}

export class SimBackend implements RawBackend {
  readonly kind = 'simulated' as const;
  readonly pageSize = 4096;
  readonly profile: SimProfile;
  #handles = new Map<number, SimObject>();
  #next = SIM_HANDLE_BASE;
  #nextAddress = 0x100000000000n;
  #nextIno = 1n;

  constructor(profile: SimProfile = defaultProfile) {
    this.profile = profile;
  }

  // ---- handles ------------------------------------------------------------------------

  #add(obj: SimObject): Handle {
    const h = this.#next++;
    this.#handles.set(h, obj);
    return h;
  }

  #get(fd: unknown, where: { syscall: string; request?: string }): SimObject {
    const h = toInt(fd, 'fd', -(2 ** 31), 2 ** 31 - 1);
    const o = this.#handles.get(h);
    if (!o) fail('EBADF', where, `fd ${h} is not open`);
    return o;
  }

  /** The VM of a VM-fd ioctl; other fds answer as the kernel's ioctl dispatch would. */
  #vm(fd: unknown, request: string): SimVm {
    const o = this.#get(fd, ioctl(request));
    if (o.kind === 'vm') return o.vm;
    return fail(o.kind === 'gmem' ? 'ENOTTY' : 'EINVAL', ioctl(request), `fd ${String(fd)} is not a VM`);
  }

  #hasPrivate(vm: SimVm): boolean {
    return (PRIVATE_MEM_TYPES & (1 << vm.type)) !== 0;
  }

  /** KVM_CAP_GUEST_MEMFD_FLAGS for a VM (or the system when vm is undefined). */
  #gmemFlags(vm: SimVm | undefined): bigint {
    const f = this.profile.guestMemfdFlags;
    return vm && this.#hasPrivate(vm) ? f & GuestMemfdFlag.MMAP : f;
  }

  #attributesSupported(vm: SimVm | undefined): bigint {
    if (!this.profile.memoryAttributes) return 0n;
    return !vm || this.#hasPrivate(vm) ? MemoryAttribute.PRIVATE : 0n;
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
    else if (o.kind === 'gmem') this.#putFile(o.file);
    else if (o.kind === 'vcpu') this.#putVm(o.vm);
  }

  getApiVersion(fd: Handle): number {
    const o = this.#get(fd, ioctl('KVM_GET_API_VERSION'));
    if (o.kind !== 'system') fail(o.kind === 'vm' || o.kind === 'gmem' ? 'ENOTTY' : 'EINVAL', ioctl('KVM_GET_API_VERSION'), 'not /dev/kvm');
    return KVM_API_VERSION;
  }

  checkExtension(fd: Handle, cap: number): number {
    const where = ioctl('KVM_CHECK_EXTENSION');
    const o = this.#get(fd, where);
    const c = toInt(cap, 'cap', -(2 ** 31), 2 ** 31 - 1);
    if (o.kind === 'gmem') fail('ENOTTY', where, 'not a KVM fd');
    if (o.kind === 'vcpu') fail('EINVAL', where, 'not /dev/kvm or a VM');
    const vm = o.kind === 'vm' ? o.vm : undefined;
    const p = this.profile;
    switch (c) {
      case Cap.USER_MEMORY:
      case Cap.USER_MEMORY2:
      case Cap.GUEST_MEMFD:
        return 1;
      case Cap.NR_MEMSLOTS:
        return KVM_USER_MEM_SLOTS;
      case Cap.READONLY_MEM:
        return vm && PROTECTED_STATE_TYPES & (1 << vm.type) ? 0 : 1;
      case Cap.MULTI_ADDRESS_SPACE:
        return p.addressSpaces > 1 ? p.addressSpaces : 0;
      case Cap.MEMORY_FAULT_INFO:
        return p.memoryFaultInfo ? 1 : 0;
      case Cap.MEMORY_ATTRIBUTES:
        return Number(this.#attributesSupported(vm));
      case Cap.VM_TYPES:
        return p.vmTypes;
      case Cap.PRE_FAULT_MEMORY:
        return p.preFaultMemory ? 1 : 0;
      case Cap.GUEST_MEMFD_FLAGS:
        return Number(this.#gmemFlags(vm));
      default:
        return 0; // capabilities the simulator does not model read as absent
    }
  }

  createVm(fd: Handle, type: number): Handle {
    const where = ioctl('KVM_CREATE_VM');
    const o = this.#get(fd, where);
    const t = toInt(type, 'type', 0, 2 ** 32 - 1);
    if (o.kind !== 'system') fail(o.kind === 'gmem' || o.kind === 'vm' ? 'ENOTTY' : 'EINVAL', where, 'not /dev/kvm');
    if (t >= 32 || !(this.profile.vmTypes & (1 << t))) fail('EINVAL', where, `VM type ${t} is not supported by this host`);
    return this.#add({ kind: 'vm', vm: new SimVm(t) });
  }

  getVcpuMmapSize(fd: Handle): number {
    const o = this.#get(fd, ioctl('KVM_GET_VCPU_MMAP_SIZE'));
    if (o.kind !== 'system') fail(o.kind === 'vcpu' ? 'EINVAL' : 'ENOTTY', ioctl('KVM_GET_VCPU_MMAP_SIZE'), 'not /dev/kvm');
    return this.profile.vcpuMmapSize;
  }

  createVcpu(vmFd: Handle, id: number): Handle {
    this.#get(vmFd, ioctl('KVM_CREATE_VCPU')); // EBADF before argument errors, as the addon
    const n = toInt(id, 'vcpuId', 0, 2 ** 32 - 1);
    const vm = this.#vm(vmFd, 'KVM_CREATE_VCPU');
    if (n >= KVM_MAX_VCPU_IDS) fail('EINVAL', ioctl('KVM_CREATE_VCPU'), `vCPU id ${n} is not below KVM_MAX_VCPU_IDS (${KVM_MAX_VCPU_IDS})`);
    if (vm.vcpuIds.has(n)) fail('EEXIST', ioctl('KVM_CREATE_VCPU'), `vCPU ${n} exists`);
    vm.vcpuIds.add(n);
    vm.refs++;
    return this.#add({ kind: 'vcpu', vm, id: n });
  }

  #putVm(vm: SimVm): void {
    if (--vm.refs > 0) return;
    // kvm_destroy_vm -> kvm_free_memslots: every slot unbinds from its gmem.
    for (const s of vm.slots.values()) s.file?.bindings.remove(s);
    vm.slots.clear();
    vm.byGfn.clear();
  }

  // ---- guest_memfd --------------------------------------------------------------------

  createGuestMemfd(vmFd: Handle, size: bigint | number, flags: bigint | number): Handle {
    const where = ioctl('KVM_CREATE_GUEST_MEMFD');
    const o = this.#get(vmFd, where);
    const sz = toU64(size, 'size');
    const fl = toU64(flags, 'flags');
    if (o.kind !== 'vm') fail(o.kind === 'gmem' ? 'ENOTTY' : 'EINVAL', where, 'guest_memfd is created on a VM fd');
    const v = checkCreateGuestMemfd(sz, fl, this.#gmemFlags(o.vm), PAGE);
    if (v) throw violationError(v, where);
    o.vm.refs++;
    const file = new SimFile(o.vm, sz, fl, this.#nextIno++);
    this.#fileOf.set(file.memory, file);
    return this.#add({ kind: 'gmem', file });
  }

  /** Drops a file reference; the last one releases it (kvm_gmem_release). */
  #putFile(f: SimFile): void {
    if (--f.refs > 0) return;
    // Slots stay (still GUEST_MEMFD) but lose the file; a later fault there is EFAULT.
    for (const s of [...f.bindings.items()]) {
      s.file = undefined;
      f.bindings.remove(s);
    }
    this.#putVm(f.vm);
  }

  fallocate(fd: Handle, mode: number, offset: bigint | number, length: bigint | number): void {
    const o = this.#get(fd, { syscall: 'fallocate' });
    const m = toInt(mode, 'mode', -(2 ** 31), 2 ** 31 - 1);
    const off = toU64(offset, 'offset');
    const len = toU64(length, 'length');
    const f = o.kind === 'gmem' ? o.file : undefined;
    const v = checkFallocate(m, off, len, f ? { kind: 'gmem', size: f.size } : { kind: 'not-regular' }, PAGE);
    if (v) throw violationError(v, { syscall: 'fallocate' });
    if (f && m & Falloc.PUNCH_HOLE && off < f.size) f.memory.zero(Number(off), Number(len > f.size ? f.size : len));
  }

  fstat(fd: Handle): RawStat {
    const o = this.#get(fd, { syscall: 'fstat' });
    if (o.kind === 'gmem') return { size: o.file.size, mode: 0o100600, blksize: this.pageSize, blocks: 0n, ino: o.file.ino };
    return { size: 0n, mode: o.kind === 'system' ? 0o20600 : 0o600, blksize: this.pageSize, blocks: 0n, ino: 0n };
  }

  mmap(fd: Handle, length: bigint | number, offset: bigint | number, prot: number, flags: number): RawMapping {
    const where = { syscall: 'mmap' };
    const o = this.#get(fd, where);
    const len = toU64(length, 'length');
    const off = toU64(offset, 'offset');
    const p = toInt(prot, 'prot', -(2 ** 31), 2 ** 31 - 1);
    const fl = toInt(flags, 'flags', -(2 ** 31), 2 ** 31 - 1);
    if (fl & (MapFlag.FIXED | 0x100000)) throw new RangeError('mmap: MAP_FIXED and MAP_FIXED_NOREPLACE are not supported');
    const target = o.kind === 'gmem' ? { kind: 'gmem' as const, flags: o.file.flags } : o.kind === 'vcpu' ? { kind: 'vcpu' as const } : { kind: 'no-mmap' as const, noexec: o.kind === 'vm' };
    const v = checkMmapCall(len, off, p, fl, target, PAGE, this.profile.userAddressMax - MMAP_MIN_ADDR);
    if (v) throw violationError(v, where);
    const span = ((len + PAGE - 1n) / PAGE) * PAGE;
    if (o.kind === 'vcpu') {
      // the kvm_run area (and the pages after it): only the area itself has bytes here
      const buffer = new ArrayBuffer(Number(len < BigInt(this.profile.vcpuMmapSize) ? len : BigInt(this.profile.vcpuMmapSize)));
      return { address: this.#reserve(span), buffer, view: (at, n) => new Uint8Array(buffer, at, n) };
    }
    if (o.kind !== 'gmem') fail('ENODEV', where, `fd ${fd} cannot be mapped`);
    const f = o.file;
    const accessible = (f.flags & GuestMemfdFlag.INIT_SHARED) !== 0n && off < f.size;
    let m: SimMapping;
    try {
      m = f.memory.map(this.#reserve(span), Number(off), len, accessible);
    } catch (e) {
      fail('ENOMEM', where, (e as Error).message);
    }
    f.refs++;
    return m;
  }

  #reserve(span: bigint): bigint {
    const a = this.#nextAddress;
    this.#nextAddress += span + PAGE; // a guard page between mappings
    if (this.#nextAddress > this.profile.userAddressMax) this.#nextAddress = 0x100000000000n;
    return a;
  }

  munmap(mapping: RawMapping): void {
    if (!(mapping instanceof SimMapping)) {
      if (mapping && typeof mapping === 'object' && typeof mapping.address === 'bigint') return; // a vCPU run area
      throw new TypeError('expected a mapping returned by mmap()');
    }
    if (mapping.unmapped) return;
    mapping.memory.unmap(mapping);
    const file = this.#fileOf.get(mapping.memory);
    if (file) this.#putFile(file);
  }

  /** The file behind a mapping's memory (its fds may all be closed: the VMA holds it). */
  #fileOf = new WeakMap<FileMemory, SimFile>();

  // ---- memslots -----------------------------------------------------------------------

  setUserMemoryRegion(vmFd: Handle, region: RawRegion): void {
    this.#setRegion(vmFd, region, false);
  }

  setUserMemoryRegion2(vmFd: Handle, region: RawRegion2): void {
    this.#setRegion(vmFd, region, true);
  }

  #setRegion(vmFd: Handle, region: RawRegion2, v2: boolean): void {
    const request = v2 ? 'KVM_SET_USER_MEMORY_REGION2' : 'KVM_SET_USER_MEMORY_REGION';
    const fd = toInt(vmFd, 'vmFd', -(2 ** 31), 2 ** 31 - 1);
    this.#get(fd, ioctl(request));
    if (typeof region !== 'object' || region === null) throw new TypeError('region must be an object');
    const r: RegionInput = {
      v2,
      slot: toInt(region.slot, 'slot', 0, 2 ** 32 - 1),
      flags: region.flags === undefined ? 0 : toInt(region.flags, 'flags', 0, 2 ** 32 - 1),
      guestPhysAddr: toU64(region.guestPhysAddr, 'guestPhysAddr'),
      memorySize: toU64(region.memorySize, 'memorySize'),
      userspaceAddr: region.userspaceAddr === undefined ? 0n : toU64(region.userspaceAddr, 'userspaceAddr'),
      guestMemfdOffset: !v2 || region.guestMemfdOffset === undefined ? 0n : toU64(region.guestMemfdOffset, 'guestMemfdOffset'),
      guestMemfd: !v2 || region.guestMemfd === undefined ? 0 : toInt(region.guestMemfd, 'guestMemfd', 0, 2 ** 32 - 1),
    };
    const vm = this.#vm(fd, request);
    const d = checkMemslot(r, this.#memslotContext(vm));
    if (isViolation(d)) throw violationError(d, ioctl(request));
    const key = (d.asId << 16) | d.id;
    let idx = vm.byGfn.get(d.asId);
    if (!idx) vm.byGfn.set(d.asId, (idx = new IntervalIndex()));
    const slot = vm.slots.get(key);
    switch (d.op) {
      case 'delete':
        idx.remove(slot!);
        slot!.file?.bindings.remove(slot!);
        vm.slots.delete(key);
        return;
      case 'move':
        idx.remove(slot!);
        slot!.baseGfn = d.baseGfn;
        idx.insert(Number(d.baseGfn), Number(d.baseGfn + d.npages), slot!);
        return;
      case 'flags':
        slot!.flags = r.flags;
        return;
      case 'noop':
        return;
      case 'create': {
        const gmem = r.flags & 4 ? this.#handles.get(r.guestMemfd) : undefined;
        const file = gmem?.kind === 'gmem' ? gmem.file : undefined;
        const s: SimSlot = {
          asId: d.asId, id: d.id, baseGfn: d.baseGfn, npages: d.npages, flags: r.flags,
          userspaceAddr: r.userspaceAddr, file, pgoff: r.guestMemfdOffset / PAGE,
        };
        vm.slots.set(key, s);
        vm.everHadSlot = true;
        idx.insert(Number(d.baseGfn), Number(d.baseGfn + d.npages), s);
        if (file) file.bindings.insert(Number(s.pgoff), Number(s.pgoff + s.npages), s);
      }
    }
  }

  #memslotContext(vm: SimVm): MemslotContext {
    const view = (s: SimSlot): SlotView => s; // a SimSlot is a SlotView (the rules only read it)
    return {
      pageSize: PAGE,
      readonlyMem: !(PROTECTED_STATE_TYPES & (1 << vm.type)),
      guestMemfd: true,
      addressSpaces: this.profile.addressSpaces,
      userAddressMax: this.profile.userAddressMax,
      maxGfn: this.profile.maxGfn,
      slot: (asId, id) => {
        const s = vm.slots.get((asId << 16) | id);
        return s && view(s);
      },
      overlapping: (asId, id, start, end) => {
        const s = vm.byGfn.get(asId)?.firstOverlap(Number(start), Number(end), (x) => x.id !== id);
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
            const s = f.bindings.firstOverlap(Number(a), Number(b));
            return s && view(s);
          },
        };
      },
    };
  }

  // ---- vCPU state (registers are kept; guest code cannot run) ---------------------------

  #vcpu(fd: Handle, request: string): Extract<SimObject, { kind: 'vcpu' }> {
    const o = this.#get(fd, ioctl(request));
    if (o.kind !== 'vcpu') fail(o.kind === 'gmem' ? 'ENOTTY' : 'EINVAL', ioctl(request), 'not a vCPU fd');
    return o;
  }

  #regs = new Map<SimObject, { regs: Uint8Array; sregs: Uint8Array }>();
  #state(o: SimObject): { regs: Uint8Array; sregs: Uint8Array } {
    let s = this.#regs.get(o);
    if (!s) this.#regs.set(o, (s = { regs: resetRegs(), sregs: resetSregs() }));
    return s;
  }

  getRegs(vcpuFd: Handle): Uint8Array {
    return this.#state(this.#vcpu(vcpuFd, 'KVM_GET_REGS')).regs.slice();
  }
  setRegs(vcpuFd: Handle, regs: Uint8Array): void {
    this.#get(vcpuFd, ioctl('KVM_SET_REGS'));
    const bytes = structBytes(regs, 144, 'regs');
    this.#state(this.#vcpu(vcpuFd, 'KVM_SET_REGS')).regs = bytes;
  }
  getSregs(vcpuFd: Handle): Uint8Array {
    return this.#state(this.#vcpu(vcpuFd, 'KVM_GET_SREGS')).sregs.slice();
  }
  setSregs(vcpuFd: Handle, sregs: Uint8Array): void {
    this.#get(vcpuFd, ioctl('KVM_SET_SREGS'));
    const bytes = structBytes(sregs, 312, 'sregs');
    this.#state(this.#vcpu(vcpuFd, 'KVM_SET_SREGS')).sregs = bytes;
  }

  run(vcpuFd: Handle, _runArea: RawMapping): never {
    this.#vcpu(vcpuFd, 'KVM_RUN');
    return fail('EOPNOTSUPP', ioctl('KVM_RUN'), 'the simulator cannot execute guest code: running a vCPU needs /dev/kvm');
  }

  // ---- attributes and pre-fault -------------------------------------------------------

  setMemoryAttributes(vmFd: Handle, attributes: RawMemoryAttributes): void {
    const where = ioctl('KVM_SET_MEMORY_ATTRIBUTES');
    const fd = toInt(vmFd, 'vmFd', -(2 ** 31), 2 ** 31 - 1);
    this.#get(fd, where);
    if (typeof attributes !== 'object' || attributes === null) throw new TypeError('attributes must be an object');
    const a = {
      address: toU64(attributes.address, 'address'),
      size: toU64(attributes.size, 'size'),
      attributes: toU64(attributes.attributes, 'attributes'),
      flags: attributes.flags === undefined ? 0n : toU64(attributes.flags, 'flags'),
    };
    const vm = this.#vm(fd, where.request);
    if (!this.profile.memoryAttributes) fail('ENOTTY', where, 'this host has no KVM_SET_MEMORY_ATTRIBUTES');
    const v = checkSetMemoryAttributes(a, this.#attributesSupported(vm), PAGE);
    if (v) throw violationError(v, where);
    vm.attributes.set(Number(a.address / PAGE), Number((a.address + a.size) / PAGE), a.attributes);
  }

  preFaultMemory(vcpuFd: Handle, range: RawPreFault): { gpa: bigint; size: bigint } {
    const where = ioctl('KVM_PRE_FAULT_MEMORY');
    const fd = toInt(vcpuFd, 'vcpuFd', -(2 ** 31), 2 ** 31 - 1);
    const o = this.#get(fd, where);
    if (typeof range !== 'object' || range === null) throw new TypeError('range must be an object');
    const r = { gpa: toU64(range.gpa, 'gpa'), size: toU64(range.size, 'size'), flags: range.flags === undefined ? 0n : toU64(range.flags, 'flags') };
    if (o.kind !== 'vcpu') fail(o.kind === 'system' ? 'EINVAL' : 'ENOTTY', where, 'not a vCPU fd');
    const v: Violation | undefined = checkPreFault(r, PAGE);
    if (v) throw violationError(v, where);
    const vm = o.vm;
    if (!this.profile.preFaultMemory) {
      // Observed on the project's 6.18 PVM host: with no memslot yet, ENOSPC comes first.
      fail(vm.everHadSlot ? 'EOPNOTSUPP' : 'ENOSPC', where, 'this host cannot pre-fault (no TDP MMU)');
    }
    let gpa = r.gpa;
    let size = r.size;
    while (size > 0n) {
      const gfn = gpa / PAGE;
      const slot = vm.byGfn.get(0)?.containing(Number(gfn));
      const isPrivate = this.#hasPrivate(vm) && (vm.attributes.get(Number(gfn)) & MemoryAttribute.PRIVATE) !== 0n;
      let err: ErrnoCode | undefined;
      if (!slot) err = 'ENOENT';
      else if (isPrivate && !(slot.flags & 4 && slot.file)) err = 'EFAULT';
      if (err) {
        if (size === r.size) fail(err, where, err === 'ENOENT' ? `no memslot at ${gpa}` : 'private memory without a guest_memfd');
        break;
      }
      gpa += PAGE;
      size -= PAGE;
    }
    return { gpa, size };
  }
}

function structBytes(v: unknown, size: number, name: string): Uint8Array {
  if (!ArrayBuffer.isView(v)) throw new TypeError(`${name} must be a typed array`);
  if (v.byteLength !== size) throw new RangeError(`${name} must be ${size} bytes`);
  return new Uint8Array(v.buffer, v.byteOffset, size).slice();
}

/** Registers after vCPU creation (x86 reset state: rflags bit 1, rip 0xfff0). */
function resetRegs(): Uint8Array {
  const b = new Uint8Array(144);
  const v = new DataView(b.buffer);
  v.setBigUint64(128, 0xfff0n, true); // rip
  v.setBigUint64(136, 2n, true); // rflags
  return b;
}

/** Segment registers after reset: cs selector 0xf000 base 0xffff0000, the rest 0, real mode. */
function resetSregs(): Uint8Array {
  const b = new Uint8Array(312);
  const v = new DataView(b.buffer);
  for (let i = 0; i < 8; i++) {
    const o = i * 24;
    v.setUint32(o + 8, 0xffff, true); // limit
    b[o + 13] = 1; // present
    b[o + 16] = i < 6 ? 1 : 0; // s (code/data) for cs..ss
    b[o + 12] = i === 0 ? 0xb : i < 6 ? 3 : i === 6 ? 0xb : 2; // type
  }
  v.setBigUint64(0, 0xffff0000n, true); // cs.base
  v.setUint16(12 - 2, 0xf000, true); // cs.selector
  v.setUint16(192 + 8, 0xffff, true); // gdt.limit
  v.setUint16(208 + 8, 0xffff, true); // idt.limit
  v.setBigUint64(224, 0x60000010n, true); // cr0
  v.setBigUint64(272, 0xfee00900n, true); // apic_base
  return b;
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
