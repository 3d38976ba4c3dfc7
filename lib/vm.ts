import { EventEmitter } from 'node:events';
import { hex, toBool, toInt, toOptions, toU64, typeName, type U64 } from './base/args.js';
import { isKvmError, kvmError, type KvmError } from './base/errors.js';
import { Cap, GuestMemfdFlag, Hypercall, MapFlag, MemoryAttribute, Prot, vmTypeName, type VmTypeName } from './base/uapi.js';
import { AttributeBook, setAttributes, type ChangedRange } from './attributes.js';
import { readCapabilities, type Capabilities } from './capabilities.js';
import { checkToken, CREATE, type VmContext } from './context.js';
import { GuestMemfd, releaseGuestMemfd } from './gmem.js';
import type { Kvm } from './kvm.js';
import { onVmCollect, Resources, unregister, type SystemHandle } from './lifetime.js';
import { Mapping, releaseMapping, type MappingOwner } from './mapping.js';
import { MemslotBooks, MemslotTable, type GuestRange, type Memslot } from './memslots.js';
import type { Handle, RawBackend, RawMapping } from './raw/types.js';
import { checkCreateGuestMemfd } from './rules/guest-memfd.js';
import { checkSetMemoryAttributes } from './rules/attributes.js';
import { explainRefusal } from './rules/types.js';
import { isVcpu, Vcpu, type VcpuExit } from './vcpu.js';

/** %TypedArray%.prototype's getters: what a Uint8Array is, whatever its class says. */
const typedArrayProto = Object.getPrototypeOf(Uint8Array.prototype) as object;
const intrinsic = (key: 'buffer' | 'byteOffset' | 'length') => Object.getOwnPropertyDescriptor(typedArrayProto, key)!.get!;
const taBuffer = intrinsic('buffer') as (this: Uint8Array) => ArrayBufferLike;
const taByteOffset = intrinsic('byteOffset') as (this: Uint8Array) => number;
const taLength = intrinsic('length') as (this: Uint8Array) => number;

/** Options of Vm.createGuestMemfd(). */
export interface GuestMemfdOptions {
  /** Size in bytes: a positive multiple of the page size (else the kernel's EINVAL). */
  size: U64;
  /** GUEST_MEMFD_FLAG_MMAP: the host may mmap the file. */
  mmap?: boolean;
  /** GUEST_MEMFD_FLAG_INIT_SHARED: pages start shared (host-accessible). */
  initShared?: boolean;
  /** Raw flags, OR-ed with the booleans (for flags this library does not name). */
  flags?: U64;
}

/** Options of Vm.createSharedMemory(). */
export interface SharedMemoryOptions {
  /** Bytes, a multiple of the page size. */
  size: U64;
  /** Back it with a memfd (its fd on the Mapping, to hand to another process) rather than
   * anonymous shared memory. */
  memfd?: boolean;
}

export type { AttributeRange } from './attributes.js';

/**
 * What to convert: a vCPU's MAP_GPA_RANGE hypercall exit or memory-fault exit (as run()
 * returned it), or a range given directly.
 */
export type ConversionRequest = HypercallConversion | MemoryFaultConversion | RangeConversion;

/** A MAP_GPA_RANGE hypercall exit, as Vcpu.run() returned it. */
export type HypercallConversion = Extract<VcpuExit, { reason: 'hypercall'; nr: 'map-gpa-range' }>;
/** A memory-fault exit, as Vcpu.run() returned it (converted to what the fault asked for). */
export type MemoryFaultConversion = Extract<VcpuExit, { reason: 'memory-fault' }>;

/** A range to convert. */
export interface RangeConversion {
  /** First guest-physical address, in bytes (page-aligned). */
  gpa: U64;
  /** Size in bytes (a multiple of the page size). */
  size: U64;
  /** true: make the range private; false: shared. */
  toPrivate: boolean;
}

/** How vm.convert() applies a conversion. */
export interface ConvertOptions {
  /** The vCPU whose hypercall this answers (its return value is written for the guest). */
  vcpu?: Vcpu;
  /**
   * Free the side the range leaves (default true, as QEMU does): going private, the slots'
   * shared memory there (Mapping.discard); going shared, the guest_memfd pages (punchHole,
   * which the guest then reads as zeros).
   */
  discard?: boolean;
}

/** What vm.convert() did. */
export interface Conversion {
  /** First guest-physical address of the range, in bytes. */
  gpa: bigint;
  /** Size of the range in bytes. */
  size: bigint;
  /** Whether the range was to become private (else shared). */
  toPrivate: boolean;
  /** Ranges whose attributes changed (empty when the range already was so). */
  changed: ChangedRange[];
  /** Bytes of memory freed on the side the range left. */
  discarded: bigint;
  /** The hypercall's return value written for the guest (0, or a negative errno). */
  ret?: bigint;
  /** Why the conversion was refused (a hypercall's failure is the guest's answer, not a throw). */
  error?: KvmError;
}

/** Payload of the Vm's 'invalidate' event (a punch-hole zapped these guest ranges). */
export interface InvalidateEvent {
  /** The guest_memfd punched. */
  guestMemfd: GuestMemfd;
  /** File offset of the punched range, in bytes. */
  offset: bigint;
  /** Length of the punched range, in bytes. */
  length: bigint;
  /** The guest frame ranges it backed, one per memslot (what punchHole() returns). */
  ranges: GuestRange[];
}

/** Payload of the Vm's 'convert' event: the ranges whose attributes changed, with old values. */
export interface ConvertEvent {
  /** The attributes the ranges now have (KVM_MEMORY_ATTRIBUTE_PRIVATE = 8n, or 0n: shared). */
  attributes: bigint;
  /** The ranges whose attributes changed, in guest-physical bytes, each with its old value. */
  changed: ChangedRange[];
}

/** The events a Vm emits. */
export interface VmEvents {
  /** A punch-hole invalidated these guest ranges. */
  invalidate: [InvalidateEvent];
  /** Memory attributes changed (private/shared conversions). */
  convert: [ConvertEvent];
}

/** Host access to guest memory through the slots' host mappings. */
export interface GuestMemory {
  /** Reads [gpa, gpa + length) into a new Uint8Array (length in bytes, at most 2^32); EFAULT
   * (reading nothing) where a page has no slot, no host memory, or is private. */
  read(gpa: U64, length: number): Uint8Array;
  /** Writes `bytes` (a Uint8Array, else a TypeError) at gpa: all of them, or (EFAULT,
   * writing nothing) none. */
  write(gpa: U64, bytes: Uint8Array): void;
}

/**
 * A KVM virtual machine: owns its guest_memfds, vCPUs, shared memory and memslot/attribute
 * books. Emits 'invalidate' (InvalidateEvent) after a punch-hole that zapped guest ranges, and
 * 'convert' (ConvertEvent) after memory attributes changed. Listeners run after the change; one
 * that throws cannot undo it, nor keep the other listeners from being called (its error is
 * rethrown asynchronously, as an uncaught exception).
 */
export class Vm extends EventEmitter<VmEvents> {
  /** The Kvm that created this VM. */
  readonly kvm: Kvm;
  /** The VM type as created (its name when known). */
  readonly type: VmTypeName | number;
  /** The VM's memslots (KVM_SET_USER_MEMORY_REGION2) and the books kept about them. */
  readonly memslots: MemslotTable;
  /** The VM's memory attributes as set through this object (setMemoryAttributes(), convert()),
   * read from the books without an ioctl. */
  readonly attributes: AttributeBook;
  /** Host access to guest memory through the slots' host mappings. */
  readonly memory: GuestMemory;
  /** Whether the books' conflict checks run before the kernel is asked. */
  readonly precheck: boolean;
  #ctx: VmContext;
  #closed = false;
  #gmems = new Set<GuestMemfd>();
  #vcpus = new Set<Vcpu>();
  #shared = new Set<Mapping>();
  #caps: Capabilities | undefined;

  /** @hidden made by Kvm.createVm() */
  constructor(token: symbol, kvm: Kvm, raw: RawBackend, system: SystemHandle, fd: Handle, type: number, precheck: boolean) {
    super();
    checkToken(token, 'Vm', 'Kvm.createVm()');
    this.kvm = kvm;
    this.type = vmTypeName(type) ?? type;
    this.precheck = precheck;
    const resources = new Resources();
    const books = new MemslotBooks(raw.pageSize);
    this.#ctx = {
      vm: this, kvm, raw, fd, system, precheck, pageSize: raw.pageSize, books,
      checkOpen: (syscall) => {
        if (this.#closed) throw kvmError('EBADF', { syscall }, 'VM is closed');
      },
      caps: () => (this.#caps ??= this.capabilities()),
      adopt: (r) => resources.add(r),
      forget: (child, key) => {
        resources.delete(key);
        this.#gmems.delete(child as GuestMemfd);
        this.#vcpus.delete(child as Vcpu);
        this.#shared.delete(child as Mapping);
      },
      emit: (event: string, payload: unknown) => {
        // Each listener on its own: one that throws neither undoes the change nor keeps the
        // listeners after it from learning of it (EventEmitter.emit stops at the first throw).
        for (const listener of this.rawListeners(event as keyof VmEvents)) {
          try {
            Reflect.apply(listener, this, [payload]);
          } catch (e) {
            queueMicrotask(() => {
              throw e;
            });
          }
        }
      },
    };
    this.memslots = new MemslotTable(CREATE, this.#ctx);
    this.attributes = new AttributeBook(CREATE, raw.pageSize);
    this.memory = {
      read: (gpa, length) => this.#read(gpa, length),
      write: (gpa, bytes) => this.#write(gpa, bytes),
    };
    onVmCollect(this, raw, fd, resources, system);
  }

  /** The VM fd (or simulated handle). A KvmError (EBADF) once the VM is closed. */
  get fd(): Handle {
    this.#ctx.checkOpen('ioctl');
    return this.#ctx.fd;
  }
  /** Whether close() was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** KVM_CHECK_EXTENSION on the VM fd: the kernel's raw answer for this VM. `cap` must be an
   * integer in the int32 range (TypeError, RangeError); EBADF once closed. */
  checkExtension(cap: number): number {
    this.#ctx.checkOpen('ioctl');
    return this.#ctx.raw.checkExtension(this.#ctx.fd, toInt(cap, 'cap', -(2 ** 31), 2 ** 31 - 1));
  }

  /** Capabilities as they apply to this VM (its type): VM-dependent ones read on the VM fd,
   * system-wide ones on /dev/kvm. EBADF once closed. */
  capabilities(): Capabilities {
    this.#ctx.checkOpen('ioctl');
    return readCapabilities(this.#ctx.raw, this.#ctx.system.fd, this.#ctx.fd, this.type);
  }

  /**
   * KVM_CREATE_GUEST_MEMFD: a guest_memfd of `size` bytes, its flags from `mmap`, `initShared`
   * and `flags`. The kernel refuses (EINVAL, explained by the rule broken) flags this VM does
   * not support, and a size that is 0 or not a multiple of the page size. Options of the wrong
   * type are a TypeError, a value that does not fit in a u64 a RangeError; EBADF once closed.
   */
  createGuestMemfd(options: GuestMemfdOptions): GuestMemfd {
    const ctx = this.#ctx;
    ctx.checkOpen('ioctl');
    const o = { ...toOptions(options, 'guest_memfd options') };
    const size = toU64(o.size, 'size');
    let flags = o.flags === undefined ? 0n : toU64(o.flags, 'flags');
    if (toBool(o.mmap, 'mmap')) flags |= GuestMemfdFlag.MMAP;
    if (toBool(o.initShared, 'initShared')) flags |= GuestMemfdFlag.INIT_SHARED;
    let fd: Handle;
    try {
      fd = ctx.raw.createGuestMemfd(ctx.fd, size, flags);
    } catch (e) {
      const where = { syscall: 'ioctl', request: 'KVM_CREATE_GUEST_MEMFD' };
      throw explainRefusal(e, () => checkCreateGuestMemfd(size, flags, ctx.caps().guestMemfdFlags.raw, BigInt(ctx.pageSize)), where);
    }
    const g = new GuestMemfd(CREATE, ctx, fd, size, flags);
    this.#gmems.add(g);
    return g;
  }

  /**
   * Shared memory that is not gmem: the host half of a private VM's memory (a slot's
   * `userspace`, shared pages read and written through vm.memory), as QEMU gives each RAM block
   * ordinary memory beside its guest_memfd. Anonymous shared memory, or a memfd. Unmapped with
   * the VM, or by its close() once no memslot uses it. A size that is 0 or not a multiple of
   * the page size is a RangeError.
   */
  createSharedMemory(options: SharedMemoryOptions): Mapping {
    const ctx = this.#ctx;
    ctx.checkOpen('mmap');
    const o = { ...toOptions(options, 'shared memory options') };
    const size = toU64(o.size, 'size');
    const memfd = toBool(o.memfd, 'memfd');
    const page = BigInt(ctx.pageSize);
    if (size === 0n || size % page !== 0n) throw new RangeError(`size must be a positive multiple of the page size, got ${hex(size)}`);
    const raw = ctx.raw;
    let fd: Handle | undefined;
    let mapping: RawMapping;
    if (memfd) {
      fd = raw.memfdCreate('kvm-gmem shared memory');
      try {
        raw.ftruncate(fd, size);
        mapping = raw.mmap(fd, size, 0, Prot.READ | Prot.WRITE, MapFlag.SHARED);
      } catch (e) {
        raw.close(fd);
        throw e;
      }
    } else {
      mapping = raw.mmap(-1, size, 0, Prot.READ | Prot.WRITE, MapFlag.SHARED | MapFlag.ANONYMOUS);
    }
    let key = 0;
    const owner: MappingOwner = { forget: (m) => ctx.forget(m, key) };
    const m = new Mapping(CREATE, { owner, raw, mapping, source: memfd ? 'memfd' : 'anonymous', offset: 0n, length: size, ...(fd !== undefined ? { memfd: fd } : {}) });
    key = ctx.adopt({ ...(fd !== undefined ? { fd } : {}), mappings: new Set([mapping]) });
    this.#shared.add(m);
    return m;
  }

  /**
   * KVM_SET_MEMORY_ATTRIBUTES over [gpa, gpa + size) (bytes); the books change only on
   * success, and a 'convert' event follows when a range changed. The kernel refuses (EINVAL)
   * attributes this VM does not support and a range that is empty, wraps or is not
   * page-aligned; a host without the ioctl answers ENOTTY. EBADF once closed.
   */
  setMemoryAttributes(gpa: U64, size: U64, attributes: U64): void {
    this.#ctx.checkOpen('ioctl');
    this.#setAttributes(toU64(gpa, 'gpa'), toU64(size, 'size'), toU64(attributes, 'attributes'));
  }

  /** The ioctl, then the books and the 'convert' event: the ranges that changed. */
  #setAttributes(address: bigint, len: bigint, attrs: bigint): ChangedRange[] {
    const ctx = this.#ctx;
    const a = { address, size: len, attributes: attrs, flags: 0n };
    try {
      ctx.raw.setMemoryAttributes(ctx.fd, a);
    } catch (e) {
      const where = { syscall: 'ioctl', request: 'KVM_SET_MEMORY_ATTRIBUTES' };
      throw explainRefusal(e, () => checkSetMemoryAttributes(a, ctx.caps().memoryAttributes, BigInt(ctx.pageSize)), where);
    }
    const changed = setAttributes(this.attributes, address, len, attrs);
    if (changed.length) ctx.emit('convert', { attributes: attrs, changed });
    return changed;
  }

  /**
   * KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL): the guest's KVM_HC_MAP_GPA_RANGE hypercalls (its
   * requests to convert memory) exit to the VMM as { reason: 'hypercall', nr: 'map-gpa-range' },
   * for vm.convert() to apply. An empty array clears the mask (no hypercall exits); anything
   * but an array of 'map-gpa-range' is a TypeError.
   */
  enableHypercallExits(hypercalls: readonly 'map-gpa-range'[] = ['map-gpa-range']): void {
    const ctx = this.#ctx;
    ctx.checkOpen('ioctl');
    if (!Array.isArray(hypercalls) || hypercalls.some((h) => h !== 'map-gpa-range')) throw new TypeError("hypercalls must be an array of 'map-gpa-range'");
    const mask = hypercalls.length ? 1n << BigInt(Hypercall.MAP_GPA_RANGE) : 0n;
    ctx.raw.enableCap(ctx.fd, Cap.EXIT_HYPERCALL, [mask]);
  }

  /**
   * Applies a conversion the guest asked for, as a VMM does (QEMU's kvm_convert_memory): the
   * range's memory attributes set private or shared ('convert' event), the side it leaves
   * freed unless `discard: false` ('invalidate' for guest_memfd pages), and, for a hypercall
   * exit, its return value written for the guest (0, or -errno when refused: the guest gets
   * the refusal, convert() does not throw). Run the vCPU again after.
   *
   * A MAP_GPA_RANGE request covers `pages` * 4096 bytes. A hypercall without `vcpu`, or a
   * request of another kind, is a TypeError. A refusal of a memory-fault exit or of a range
   * throws the KvmError.
   */
  convert(request: ConversionRequest, options?: ConvertOptions): Conversion {
    const ctx = this.#ctx;
    ctx.checkOpen('ioctl');
    const o = { ...toOptions(options, 'convert options') };
    const vcpu = o.vcpu;
    if (vcpu !== undefined && !isVcpu(vcpu)) throw new TypeError(`vcpu must be a Vcpu, got ${typeName(vcpu)}`);
    const discard = toBool(o.discard, 'discard', true);
    const r = { ...toOptions(request as object, 'conversion request') } as Record<string, unknown>;
    let gpa: bigint;
    let size: bigint;
    let toPrivate: boolean;
    const hypercall = r.reason === 'hypercall';
    if (hypercall) {
      if (r.nr !== 'map-gpa-range') throw new TypeError(`convert() applies MAP_GPA_RANGE hypercalls, not hypercall ${String(r.nr)}`);
      if (!vcpu) throw new TypeError('a hypercall is answered on its vCPU: pass { vcpu }');
      gpa = toU64(r.gpa, 'gpa');
      size = toU64(r.pages, 'pages') * 4096n;
      toPrivate = toBool(r.toPrivate, 'toPrivate');
    } else if (r.reason === 'memory-fault') {
      gpa = toU64(r.gpa, 'gpa');
      size = toU64(r.size, 'size');
      toPrivate = toBool(r.private, 'private');
    } else if (r.reason === undefined) {
      gpa = toU64(r.gpa, 'gpa');
      size = toU64(r.size, 'size');
      toPrivate = toBool(r.toPrivate, 'toPrivate');
    } else throw new TypeError(`convert() applies a map-gpa-range hypercall or a memory-fault exit, not a '${String(r.reason)}' exit`);
    let changed: ChangedRange[];
    try {
      changed = this.#setAttributes(gpa, size, toPrivate ? MemoryAttribute.PRIVATE : 0n);
    } catch (e) {
      if (!hypercall || !isKvmError(e)) throw e;
      const ret = -BigInt(e.errno || 22);
      vcpu!.completeHypercall(BigInt.asUintN(64, ret));
      return { gpa, size, toPrivate, changed: [], discarded: 0n, ret, error: e };
    }
    const discarded = discard && changed.length ? this.#discard(changed, toPrivate) : 0n;
    if (hypercall) vcpu!.completeHypercall(0n);
    return { gpa, size, toPrivate, changed, discarded, ...(hypercall ? { ret: 0n } : {}) };
  }

  /** Frees the side `ranges` left: shared memory going private, guest_memfd pages going shared. */
  #discard(ranges: readonly ChangedRange[], toPrivate: boolean): bigint {
    let freed = 0n;
    for (const { start, end } of ranges) {
      let at = start;
      while (at < end) {
        const slot = this.memslots.find(at);
        if (!slot) {
          // No slot here: up to the next one (or the end).
          const next = this.memslots.list().find((s) => s.asId === 0 && s.guestPhysAddr > at);
          at = next && next.guestPhysAddr < end ? next.guestPhysAddr : end;
          continue;
        }
        const stop = slot.end < end ? slot.end : end;
        const n = stop - at;
        const inSlot = at - slot.guestPhysAddr;
        if (toPrivate && slot.userspace && slot.userspace.source !== 'guest_memfd' && !slot.userspace.closed) {
          slot.userspace.discard(slot.userspaceOffset + inSlot, n);
          freed += n;
        } else if (!toPrivate && slot.guestMemfd && !slot.guestMemfd.closed) {
          slot.guestMemfd.punchHole(slot.guestMemfdOffset + inSlot, n);
          freed += n;
        }
        at = stop;
      }
    }
    return freed;
  }

  /** setMemoryAttributes(gpa, size, KVM_MEMORY_ATTRIBUTE_PRIVATE): the range becomes private.
   * Frees nothing (convert() does). */
  setPrivate(gpa: U64, size: U64): void {
    this.setMemoryAttributes(gpa, size, MemoryAttribute.PRIVATE);
  }

  /** setMemoryAttributes(gpa, size, 0n): the range becomes shared (every attribute cleared).
   * Frees nothing (convert() does). */
  setShared(gpa: U64, size: U64): void {
    this.setMemoryAttributes(gpa, size, 0n);
  }

  /**
   * KVM_CREATE_VCPU with vCPU id `id`, an integer in [0, 2^32 - 1] (else a TypeError or
   * RangeError). The kernel refuses an id in use (EEXIST) or above its limit (EINVAL). EBADF
   * once closed.
   */
  createVcpu(id: number): Vcpu {
    const ctx = this.#ctx;
    ctx.checkOpen('ioctl');
    const vcpuId = toInt(id, 'id', 0, 2 ** 32 - 1);
    const fd = ctx.raw.createVcpu(ctx.fd, vcpuId);
    const v = new Vcpu(CREATE, ctx, fd, vcpuId);
    this.#vcpus.add(v);
    return v;
  }

  /**
   * The pieces of [gpa, gpa + length), each inside one slot and one run of equal attributes,
   * all checked before any byte moves: a host view of each, or EFAULT naming the first page
   * the host cannot reach.
   */
  #pieces(gpa: U64, length: number, op: 'read' | 'write'): { view: () => Uint8Array; done: number }[] {
    this.#ctx.checkOpen(op);
    let at = toU64(gpa, 'gpa');
    let done = 0;
    const out: { view: () => Uint8Array; done: number }[] = [];
    while (done < length) {
      const slot: Memslot | undefined = this.memslots.find(at);
      if (!slot) throw kvmError('EFAULT', { syscall: op }, `no memslot backs guest address ${hex(at)}`);
      const mem = slot.userspace;
      if (!mem || mem.closed) throw kvmError('EFAULT', { syscall: op }, `${slot} has no host mapping (its guest_memfd is not host-accessible)`);
      if (this.attributes.isPrivate(at)) throw kvmError('EFAULT', { syscall: op }, `guest address ${hex(at)} is private: the host cannot access it`);
      const runEnd = this.attributes.runEnd(at);
      const stop = runEnd !== undefined && runEnd < slot.end ? runEnd : slot.end;
      const n = Number(stop - at < BigInt(length - done) ? stop - at : BigInt(length - done));
      const offset = slot.userspaceOffset + (at - slot.guestPhysAddr);
      out.push({ view: () => mem.view(offset, n), done });
      done += n;
      at += BigInt(n);
    }
    return out;
  }

  #read(gpa: U64, length: number): Uint8Array {
    const len = toInt(length, 'length', 0, 2 ** 32);
    const pieces = this.#pieces(gpa, len, 'read');
    const out = new Uint8Array(len);
    for (const p of pieces) out.set(p.view(), p.done);
    return out;
  }

  #write(gpa: U64, bytes: Uint8Array): void {
    if (!(bytes instanceof Uint8Array)) throw new TypeError(`bytes must be a Uint8Array, got ${typeName(bytes)}`);
    // Read through the intrinsics, not through `bytes`: a subclass's length or subarray (or
    // its species constructor) would otherwise run caller code after a piece was written.
    const length = taLength.call(bytes);
    const pieces = this.#pieces(gpa, length, 'write');
    if (pieces.length === 0) return;
    const buffer = taBuffer.call(bytes);
    const offset = taByteOffset.call(bytes);
    for (const p of pieces) {
      const v = p.view();
      v.set(new Uint8Array(buffer, offset + p.done, v.length));
    }
  }

  /**
   * Closes the VM and everything it owns (idempotent, never refused): vCPUs, the memslot books,
   * the gmems and their mappings, the shared memory, then the VM fd. The kernel then destroys
   * the VM and its memslots. Memory that memslots of another VM still use stays mapped until
   * they are deleted. Every step runs even when one fails (an fd closed behind the library's
   * back: EBADF); the first such error is thrown after the VM is closed.
   */
  close(): void {
    if (this.#closed) return;
    const ctx = this.#ctx;
    let failed: { error: unknown } | undefined;
    const step = (release: () => void) => {
      try {
        release();
      } catch (error) {
        failed ??= { error };
      }
    };
    for (const v of [...this.#vcpus]) step(() => v.close());
    ctx.books.clear();
    for (const g of [...this.#gmems]) step(() => releaseGuestMemfd(g));
    for (const m of [...this.#shared]) step(() => releaseMapping(m));
    this.#closed = true;
    unregister(this);
    step(() => ctx.raw.close(ctx.fd));
    step(() => ctx.system.release());
    if (failed) throw failed.error;
  }

  /** close(), for `using vm = kvm.createVm()`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
