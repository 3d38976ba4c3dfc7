import { EventEmitter } from 'node:events';
import { hex, toBool, toInt, toOptions, toU64, typeName, type U64 } from './base/args.js';
import { kvmError } from './base/errors.js';
import { GuestMemfdFlag, MapFlag, MemoryAttribute, Prot, vmTypeName, type VmTypeName } from './base/uapi.js';
import { AttributeBook, setAttributes, type ChangedRange } from './attributes.js';
import { readCapabilities, type Capabilities } from './capabilities.js';
import { checkToken, CREATE, type VmContext } from './context.js';
import { GuestMemfd, releaseGuestMemfd } from './gmem.js';
import type { Kvm } from './kvm.js';
import { onCollect, Resources, unregister, type SystemHandle } from './lifetime.js';
import { Mapping, releaseMapping, type MappingOwner } from './mapping.js';
import { MemslotBooks, MemslotTable, type GuestRange, type Memslot } from './memslots.js';
import type { Handle, RawBackend, RawMapping } from './raw/types.js';
import { checkCreateGuestMemfd } from './rules/guest-memfd.js';
import { checkSetMemoryAttributes } from './rules/attributes.js';
import { explainRefusal } from './rules/types.js';
import { Vcpu } from './vcpu.js';

export interface GuestMemfdOptions {
  size: U64;
  /** GUEST_MEMFD_FLAG_MMAP: the host may mmap the file. */
  mmap?: boolean;
  /** GUEST_MEMFD_FLAG_INIT_SHARED: pages start shared (host-accessible). */
  initShared?: boolean;
  /** Raw flags, OR-ed with the booleans (for flags this library does not name). */
  flags?: U64;
}

export interface SharedMemoryOptions {
  /** Bytes, a multiple of the page size. */
  size: U64;
  /** Back it with a memfd (its fd on the Mapping, to hand to another process) rather than
   * anonymous shared memory. */
  memfd?: boolean;
}

export type { AttributeRange } from './attributes.js';

/** Payload of the Vm's 'invalidate' event (a punch-hole zapped these guest ranges). */
export interface InvalidateEvent {
  guestMemfd: GuestMemfd;
  offset: bigint;
  length: bigint;
  ranges: GuestRange[];
}

/** Payload of the Vm's 'convert' event: the ranges whose attributes changed, with old values. */
export interface ConvertEvent {
  attributes: bigint;
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
  /** Reads [gpa, gpa + length); EFAULT (reading nothing) where a page has no slot, no host
   * memory, or is private. */
  read(gpa: U64, length: number): Uint8Array;
  /** Writes `bytes` at gpa: all of them, or (EFAULT, writing nothing) none. */
  write(gpa: U64, bytes: Uint8Array): void;
}

/**
 * A KVM virtual machine: owns its guest_memfds, vCPUs, shared memory and memslot/attribute
 * books. Emits 'invalidate' (InvalidateEvent) after a punch-hole that zapped guest ranges, and
 * 'convert' (ConvertEvent) after memory attributes changed. Listeners run after the change; one
 * that throws cannot undo it (its error is rethrown asynchronously, as an uncaught exception).
 */
export class Vm extends EventEmitter<VmEvents> {
  readonly kvm: Kvm;
  /** The VM type as created (its name when known). */
  readonly type: VmTypeName | number;
  readonly memslots: MemslotTable;
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
      adopt: (child, r) => resources.add(child, r),
      forget: (child) => {
        resources.delete(child);
        this.#gmems.delete(child as GuestMemfd);
        this.#vcpus.delete(child as Vcpu);
        this.#shared.delete(child as Mapping);
      },
      emit: (event: string, payload: unknown) => {
        try {
          (this.emit as (e: string, p: unknown) => boolean)(event, payload);
        } catch (e) {
          queueMicrotask(() => {
            throw e;
          });
        }
      },
    };
    this.memslots = new MemslotTable(CREATE, this.#ctx);
    this.attributes = new AttributeBook(CREATE, raw.pageSize);
    this.memory = {
      read: (gpa, length) => this.#read(gpa, length),
      write: (gpa, bytes) => this.#write(gpa, bytes),
    };
    // Collected unclosed: everything the VM owns is released, then the VM fd.
    onCollect(this, () => {
      resources.releaseAll(raw);
      raw.close(fd);
      system.release();
    });
  }

  get fd(): Handle {
    this.#ctx.checkOpen('ioctl');
    return this.#ctx.fd;
  }
  get closed(): boolean {
    return this.#closed;
  }

  /** KVM_CHECK_EXTENSION on the VM fd: the kernel's raw answer for this VM. */
  checkExtension(cap: number): number {
    this.#ctx.checkOpen('ioctl');
    return this.#ctx.raw.checkExtension(this.#ctx.fd, toInt(cap, 'cap', -(2 ** 31), 2 ** 31 - 1));
  }

  /** Capabilities as they apply to this VM (its type). */
  capabilities(): Capabilities {
    this.#ctx.checkOpen('ioctl');
    return readCapabilities(this.#ctx.raw, this.#ctx.system.fd, this.#ctx.fd, this.type);
  }

  /** KVM_CREATE_GUEST_MEMFD. */
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
   * the VM, or by its close() once no memslot uses it.
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
    const owner: MappingOwner = { forget: (m) => ctx.forget(m) };
    const m = new Mapping(CREATE, { owner, raw, mapping, source: memfd ? 'memfd' : 'anonymous', offset: 0n, length: size, ...(fd !== undefined ? { memfd: fd } : {}) });
    ctx.adopt(m, { ...(fd !== undefined ? { fd } : {}), mappings: new Set([mapping]) });
    this.#shared.add(m);
    return m;
  }

  /** KVM_SET_MEMORY_ATTRIBUTES over [gpa, gpa + size); the books change only on success. */
  setMemoryAttributes(gpa: U64, size: U64, attributes: U64): void {
    const ctx = this.#ctx;
    ctx.checkOpen('ioctl');
    const address = toU64(gpa, 'gpa');
    const len = toU64(size, 'size');
    const attrs = toU64(attributes, 'attributes');
    const a = { address, size: len, attributes: attrs, flags: 0n };
    try {
      ctx.raw.setMemoryAttributes(ctx.fd, a);
    } catch (e) {
      const where = { syscall: 'ioctl', request: 'KVM_SET_MEMORY_ATTRIBUTES' };
      throw explainRefusal(e, () => checkSetMemoryAttributes(a, ctx.caps().memoryAttributes, BigInt(ctx.pageSize)), where);
    }
    const changed = setAttributes(this.attributes, address, len, attrs);
    if (changed.length) ctx.emit('convert', { attributes: attrs, changed });
  }

  setPrivate(gpa: U64, size: U64): void {
    this.setMemoryAttributes(gpa, size, MemoryAttribute.PRIVATE);
  }

  setShared(gpa: U64, size: U64): void {
    this.setMemoryAttributes(gpa, size, 0n);
  }

  /** KVM_CREATE_VCPU. */
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
    const pieces = this.#pieces(gpa, bytes.length, 'write');
    for (const p of pieces) {
      const v = p.view();
      v.set(bytes.subarray(p.done, p.done + v.length));
    }
  }

  /**
   * Closes the VM and everything it owns (idempotent, never refused): vCPUs, the memslot books,
   * the gmems and their mappings, the shared memory, then the VM fd. The kernel then destroys
   * the VM and its memslots. Memory that memslots of another VM still use stays mapped until
   * they are deleted.
   */
  close(): void {
    if (this.#closed) return;
    const ctx = this.#ctx;
    for (const v of [...this.#vcpus]) v.close();
    ctx.books.clear();
    for (const g of [...this.#gmems]) releaseGuestMemfd(g);
    for (const m of [...this.#shared]) releaseMapping(m);
    this.#closed = true;
    unregister(this);
    ctx.raw.close(ctx.fd);
    ctx.system.release();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
