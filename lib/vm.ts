import { EventEmitter } from 'node:events';
import { readCapabilities, type Capabilities } from './capabilities.js';
import { kvmError } from './errors.js';
import { GuestMemfd } from './gmem.js';
import type { Kvm } from './kvm.js';
import { Children, trackWithChildren, untrack, type ChildHandles } from './lifetime.js';
import { MemslotTable, type GuestRange } from './memslots.js';
import { RangeMap } from './rangemap.js';
import { GuestMemfdFlag, MemoryAttribute, vmTypeName, type VmTypeName } from './raw/constants.js';
import type { Handle, RawBackend, RawMapping } from './raw/types.js';
import { checkCreateGuestMemfd } from './rules/gmem.js';
import { violationError } from './rules/types.js';
import { hex, toBool, toInt, toU64, typeName, type U64 } from './u64.js';
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

/** A range of equal memory attributes, in guest-physical bytes (end exclusive). */
export interface AttributeRange {
  start: bigint;
  end: bigint;
  attributes: bigint;
}

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
  changed: { start: bigint; end: bigint; from: bigint }[];
}

/** The VM's memory attributes per gfn, merged into ranges; updated after the backend agreed. */
export class AttributeBook {
  readonly #map = new RangeMap<bigint>(0n);
  readonly #page: bigint;
  /** @internal */
  constructor(pageSize: number) {
    this.#page = BigInt(pageSize);
  }
  /** Attributes of the page containing `gpa`. */
  get(gpa: U64): bigint {
    return this.#map.get(Number(toU64(gpa, 'gpa') / this.#page));
  }
  isPrivate(gpa: U64): boolean {
    return (this.get(gpa) & MemoryAttribute.PRIVATE) !== 0n;
  }
  /** Merged ranges with non-zero attributes, in address order (optionally within [start, end)). */
  ranges(start?: U64, end?: U64): AttributeRange[] {
    const p = this.#page;
    const lo = start === undefined ? -Infinity : Number(toU64(start, 'start') / p);
    const hi = end === undefined ? Infinity : Number((toU64(end, 'end') + p - 1n) / p);
    return [...this.#map.entries(lo, hi)].map((e) => ({ start: BigInt(e.start) * p, end: BigInt(e.end) * p, attributes: e.value }));
  }
  /** Number of stored ranges (one per run of equal attributes). */
  get count(): number {
    return this.#map.count;
  }
  /** @internal */
  _set(gpa: bigint, size: bigint, attributes: bigint): ConvertEvent['changed'] {
    const p = this.#page;
    return this.#map
      .set(Number(gpa / p), Number((gpa + size) / p), attributes)
      .map((c) => ({ start: BigInt(c.start) * p, end: BigInt(c.end) * p, from: c.value }));
  }
}

/**
 * A KVM virtual machine: owns its guest_memfds, vCPUs and memslot/attribute books. Emits
 * 'invalidate' (InvalidateEvent) after a punch-hole that zapped guest ranges, and 'convert'
 * (ConvertEvent) after memory attributes changed.
 */
export class Vm extends EventEmitter {
  readonly kvm: Kvm;
  /** The VM type as created (name when known). */
  readonly type: VmTypeName | number;
  readonly memslots: MemslotTable;
  readonly attributes: AttributeBook;
  /** Host access to guest memory through the slots' shared mappings. */
  readonly memory: { read(gpa: U64, length: number): Uint8Array; write(gpa: U64, bytes: Uint8Array): void };
  /** Whether the books' conflict checks run before the kernel is asked. */
  readonly precheck: boolean;
  #raw: RawBackend;
  #fd: Handle;
  #closed = false;
  #gmems = new Children<GuestMemfd>();
  #vcpus = new Children<Vcpu>();
  /** The fds and mappings of #gmems and #vcpus, for the finalizer (which must not reach them). */
  #handles: ChildHandles = new Map();
  #caps: Capabilities | undefined;

  /** @internal use Kvm.createVm() */
  constructor(kvm: Kvm, raw: RawBackend, fd: Handle, type: number, precheck: boolean) {
    super();
    this.kvm = kvm;
    this.#raw = raw;
    this.#fd = fd;
    this.type = vmTypeName(type) ?? type;
    this.precheck = precheck;
    this.memslots = new MemslotTable(this, raw.pageSize);
    this.attributes = new AttributeBook(raw.pageSize);
    this.memory = {
      read: (gpa, length) => this.#read(gpa, length),
      write: (gpa, bytes) => this.#write(gpa, bytes),
    };
    trackWithChildren(this, raw, fd, this.#handles);
  }

  get fd(): Handle {
    this._checkOpen('ioctl');
    return this.#fd;
  }
  get closed(): boolean {
    return this.#closed;
  }

  /** @internal */
  get _raw(): RawBackend {
    return this.#raw;
  }
  /** @internal the VM-scoped capabilities, read once */
  get _caps(): Capabilities {
    return (this.#caps ??= this.capabilities());
  }
  /** @internal */
  _checkOpen(syscall: string): void {
    if (this.#closed) throw kvmError('EBADF', { syscall }, 'VM is closed');
  }

  /** KVM_CHECK_EXTENSION on the VM fd: the kernel's raw answer for this VM. */
  checkExtension(cap: number): number {
    this._checkOpen('ioctl');
    return this.#raw.checkExtension(this.#fd, toInt(cap, 'cap', -(2 ** 31), 2 ** 31 - 1));
  }

  /** Capabilities as they apply to this VM (its type). */
  capabilities(): Capabilities {
    this._checkOpen('ioctl');
    return readCapabilities(this.#raw, this.kvm.fd, this.#fd, this.type);
  }

  /** KVM_CREATE_GUEST_MEMFD. */
  createGuestMemfd(options: GuestMemfdOptions): GuestMemfd {
    this._checkOpen('ioctl');
    if (typeof options !== 'object' || options === null) throw new TypeError(`guest_memfd options must be an object, got ${typeName(options)}`);
    const size = toU64(options.size, 'size');
    let flags = options.flags === undefined ? 0n : toU64(options.flags, 'flags');
    if (toBool(options.mmap, 'mmap')) flags |= GuestMemfdFlag.MMAP;
    if (toBool(options.initShared, 'initShared')) flags |= GuestMemfdFlag.INIT_SHARED;
    let fd: Handle;
    try {
      fd = this.#raw.createGuestMemfd(this.#fd, size, flags);
    } catch (e) {
      const v = checkCreateGuestMemfd(size, flags, this._caps.guestMemfdFlags.raw, BigInt(this.#raw.pageSize));
      if (v && (e as { code?: string }).code === v.code) throw violationError(v, { syscall: 'ioctl', request: 'KVM_CREATE_GUEST_MEMFD' });
      throw e;
    }
    const g = new GuestMemfd(this, this.#raw, fd, size, flags);
    this.#gmems.add(g);
    return g;
  }

  /** KVM_SET_MEMORY_ATTRIBUTES over [gpa, gpa + size); the books change only on success. */
  setMemoryAttributes(gpa: U64, size: U64, attributes: U64): void {
    this._checkOpen('ioctl');
    const address = toU64(gpa, 'gpa');
    const len = toU64(size, 'size');
    const attrs = toU64(attributes, 'attributes');
    this.#raw.setMemoryAttributes(this.#fd, { address, size: len, attributes: attrs, flags: 0n });
    const changed = this.attributes._set(address, len, attrs);
    if (changed.length) this.emit('convert', { attributes: attrs, changed } satisfies ConvertEvent);
  }

  setPrivate(gpa: U64, size: U64): void {
    this.setMemoryAttributes(gpa, size, MemoryAttribute.PRIVATE);
  }

  setShared(gpa: U64, size: U64): void {
    this.setMemoryAttributes(gpa, size, 0n);
  }

  /** KVM_CREATE_VCPU. */
  createVcpu(id: number): Vcpu {
    this._checkOpen('ioctl');
    const vcpuId = toInt(id, 'id', 0, 2 ** 32 - 1);
    const fd = this.#raw.createVcpu(this.#fd, vcpuId);
    const v = new Vcpu(this, this.#raw, fd, vcpuId);
    this.#vcpus.add(v);
    return v;
  }

  /** @internal */
  _adopt(fd: Handle, mappings: Set<RawMapping>): void {
    this.#handles.set(fd, mappings);
  }

  /** @internal */
  _forgetGmem(g: GuestMemfd, fd: Handle): void {
    this.#handles.delete(fd);
    this.#gmems.delete(g);
  }
  /** @internal */
  _forgetVcpu(v: Vcpu, fd: Handle): void {
    this.#handles.delete(fd);
    this.#vcpus.delete(v);
  }

  /** Walks [gpa, gpa + length) slot by slot through each slot's host mapping. */
  #access(gpa: U64, length: number, op: 'read' | 'write', fn: (view: Uint8Array, done: number) => void): void {
    this._checkOpen(op);
    let at = toU64(gpa, 'gpa');
    let done = 0;
    const page = BigInt(this.#raw.pageSize);
    while (done < length) {
      const slot = this.memslots.find(at);
      if (!slot) throw kvmError('EFAULT', { syscall: op }, `no memslot backs guest address ${hex(at)}`);
      if (!slot.userspace || slot.userspace.closed) {
        throw kvmError('EFAULT', { syscall: op }, `${slot} has no host mapping (its guest_memfd is not host-accessible)`);
      }
      if (this.attributes.isPrivate(at)) throw kvmError('EFAULT', { syscall: op }, `guest address ${hex(at)} is private: the host cannot access it`);
      // Stop at the slot's end and at the next attribute change (page granular).
      const slotLeft = slot.end - at;
      const pageLeft = page - (at % page);
      const attrRun = this.attributes.count === 0 ? slotLeft : pageLeft;
      const n = Number([slotLeft, attrRun, BigInt(length - done)].reduce((a, b) => (a < b ? a : b)));
      fn(slot.userspace.view(slot.userspaceOffset + (at - slot.guestPhysAddr), n), done);
      done += n;
      at += BigInt(n);
    }
  }

  #read(gpa: U64, length: number): Uint8Array {
    const len = toInt(length, 'length', 0, 2 ** 32);
    const out = new Uint8Array(len);
    this.#access(gpa, len, 'read', (v, done) => out.set(v, done));
    return out;
  }

  #write(gpa: U64, bytes: Uint8Array): void {
    if (!(bytes instanceof Uint8Array)) throw new TypeError(`bytes must be a Uint8Array, got ${typeName(bytes)}`);
    this.#access(gpa, bytes.length, 'write', (v, done) => v.set(bytes.subarray(done, done + v.length)));
  }

  /**
   * Closes the VM and everything it owns (idempotent): vCPUs, the gmems' mappings, the gmems,
   * then the VM fd. The kernel then destroys the VM and its memslots.
   */
  close(): void {
    if (this.#closed) return;
    for (const v of this.#vcpus.live()) v.close();
    this.memslots._clear();
    for (const g of this.#gmems.live()) g.close();
    untrack(this);
    this.#closed = true;
    this.#raw.close(this.#fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

