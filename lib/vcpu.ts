import { toOptions, typeName, type U64, toU64 } from './base/args.js';
import { codeOf, KvmError, kvmError, LINUX_ERRNO } from './base/errors.js';
import { decodeRegs, decodeSregs, updateRegs, updateSregs, type Regs, type Sregs, type SregsUpdate } from './base/structs.js';
import { ExitReason, MapFlag, MEMORY_EXIT_FLAG_PRIVATE, Prot } from './base/uapi.js';
import { checkToken, type VmContext } from './context.js';
import type { ChildResources } from './lifetime.js';
import type { Handle, RawMapping, RawRun } from './raw/types.js';
import type { Vm } from './vm.js';

export type { Regs, Sregs, SregsUpdate, Segment, DescriptorTable } from './base/structs.js';

/** A decoded KVM_RUN exit. */
export type VcpuExit =
  /** KVM_EXIT_HLT: the guest halted. */
  | { reason: 'hlt' }
  /**
   * KVM_EXIT_IO: port I/O. `direction`: 'out' (the guest wrote) or 'in'; `port`; `size`: bytes
   * per access (1, 2 or 4); `count`: accesses (a rep string instruction makes several); `data`:
   * a copy of the size * count bytes in kvm_run (for 'out', what the guest wrote).
   */
  | { reason: 'io'; direction: 'in' | 'out'; port: number; size: number; count: number; data: Uint8Array }
  /**
   * KVM_EXIT_MMIO: an access KVM does not serve from a memslot (no slot there, or a write to a
   * read-only one). `gpa` of the access; `isWrite`; `length` in bytes; `data`: a copy of the
   * first min(length, 8) data bytes (for a write, what the guest wrote).
   */
  | { reason: 'mmio'; gpa: bigint; isWrite: boolean; length: number; data: Uint8Array }
  /**
   * KVM_EXIT_MEMORY_FAULT (KVM_RUN failed with EFAULT): KVM cannot map [gpa, gpa + size)
   * (bytes) for the access as it is, e.g. a private access to a shared page; `private` says
   * whether the access was private. Vm.convert() applies it.
   */
  | { reason: 'memory-fault'; gpa: bigint; size: bigint; private: boolean }
  /** KVM_EXIT_HYPERCALL (see HypercallExit). */
  | HypercallExit
  /** KVM_EXIT_SHUTDOWN: the guest shut down (e.g. a triple fault). */
  | { reason: 'shutdown' }
  /** KVM_EXIT_INTERNAL_ERROR: `suberror` (KVM_INTERNAL_ERROR_*) and its `data` words (at most 16). */
  | { reason: 'internal-error'; suberror: number; data: bigint[] }
  /** KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest; `hardwareEntryFailureReason`
   * as KVM reports it, and the host `cpu`. */
  | { reason: 'fail-entry'; hardwareEntryFailureReason: bigint; cpu: number }
  /** run()'s `timeoutMs` passed: the vCPU was kicked out. */
  | { reason: 'timeout' }
  /** Kicked out by cancel(), close() or run()'s `signal`. */
  | { reason: 'canceled' }
  /** KVM_RUN returned EINTR (or exited with KVM_EXIT_INTR) without a kick from the library. */
  | { reason: 'interrupted' }
  /** An exit the library does not decode: `exitReason` is kvm_run.exit_reason (KVM_EXIT_*). */
  | { reason: 'other'; exitReason: number };

/**
 * KVM_EXIT_HYPERCALL (enabled per hypercall with Vm.enableHypercallExits()). KVM_HC_MAP_GPA_RANGE
 * is decoded: the guest asks for [gpa, gpa + pages * 4096) to become private or shared
 * (`pages` counts 4 KiB pages whatever the page size it prefers: Documentation/virt/kvm/x86/hypercalls.rst).
 * Answer it before running again (Vm.convert() does, or Vcpu.completeHypercall()).
 */
export type HypercallExit =
  /**
   * KVM_HC_MAP_GPA_RANGE (12), decoded: `gpa` (args[0]); `pages` (args[1], 4 KiB pages);
   * `pageSize`, the page size the guest prefers for the range, named by args[2] bits 3:0
   * (4096n, 2 MiB or 1 GiB; 4096n when unknown: a hint, not a unit of `pages`); `toPrivate`:
   * KVM_MAP_GPA_RANGE_ENCRYPTED in args[2] (else shared); and the six `args` as given.
   */
  | { reason: 'hypercall'; nr: 'map-gpa-range'; gpa: bigint; pages: bigint; pageSize: bigint; toPrivate: boolean; args: bigint[] }
  /** Any other hypercall: its number `nr` and its six `args`. */
  | { reason: 'hypercall'; nr: number; args: bigint[] };

/** Options of Vcpu.run(). */
export interface RunOptions {
  /** Kick the vCPU out after this many milliseconds (exit 'timeout'). */
  timeoutMs?: number;
  /** Kick the vCPU out when aborted (exit 'canceled'). */
  signal?: AbortSignal;
}

/** The longest timer Node keeps (setTimeout turns a longer one into 1 ms). */
const MAX_TIMEOUT = 2 ** 31 - 1;

/** KVM_HC_MAP_GPA_RANGE and its attribute bits (include/uapi/linux/kvm_para.h). */
const KVM_HC_MAP_GPA_RANGE = 12n;
const MAP_GPA_RANGE_ENCRYPTED = 1n << 4n;
const MAP_GPA_RANGE_PAGE_SIZES = [4096n, 2n << 20n, 1n << 30n];

/** Whether `x` is a Vcpu the library made. */
export let isVcpu: (x: unknown) => x is Vcpu;

/** A virtual CPU (KVM_CREATE_VCPU): registers, and KVM_RUN off the event loop. */
export class Vcpu {
  /** The VM it belongs to. */
  readonly vm: Vm;
  /** Its vCPU id (KVM_CREATE_VCPU's argument). */
  readonly id: number;
  #ctx: VmContext;
  #fd: Handle;
  #closed = false;
  #runArea: RawMapping | undefined;
  /** The fd and the run area's mapping, for the VM's finalizer. */
  #resources: ChildResources;
  #key: number;
  #running: RawRun | undefined;
  /** Kicks the run in flight, recording why. */
  #stop: ((why: 'timeout' | 'canceled') => void) | undefined;
  /** The last exit was a hypercall still to be answered: its number. */
  #hypercallPending: bigint | undefined;
  /** The last exit was a read (io 'in', mmio read) the VMM may answer: where its bytes go in kvm_run. */
  #readPending: { what: string; offset: number; length: number } | undefined;

  /** @hidden made by Vm.createVcpu() */
  constructor(token: symbol, ctx: VmContext, fd: Handle, id: number) {
    checkToken(token, 'Vcpu', 'Vm.createVcpu()');
    this.vm = ctx.vm;
    this.#ctx = ctx;
    this.#fd = fd;
    this.id = id;
    this.#resources = { fd, mappings: new Set() };
    this.#key = ctx.adopt(this.#resources);
  }

  static {
    isVcpu = (x: unknown): x is Vcpu => typeof x === 'object' && x !== null && #fd in x;
  }

  /** The vCPU fd (or simulated handle). A KvmError (EBADF) once closed. */
  get fd(): Handle {
    if (this.#closed) throw kvmError('EBADF', { syscall: 'ioctl' }, `vCPU ${this.id} is closed`);
    return this.#fd;
  }
  /** Whether close() was called (the fd itself closes once a run in flight has returned). */
  get closed(): boolean {
    return this.#closed;
  }
  /** Whether a run() is in flight. */
  get running(): boolean {
    return this.#running !== undefined;
  }

  /** KVM_GET_REGS: the general-purpose registers, rip and rflags. EBADF once closed. */
  getRegs(): Regs {
    return decodeRegs(this.#ctx.raw.getRegs(this.fd));
  }

  /**
   * KVM_SET_REGS of the given registers (the others keep their values: read first with
   * KVM_GET_REGS). An unknown register name or a value of the wrong type is a TypeError, a
   * value that does not fit in a u64 a RangeError; EBADF once closed.
   */
  setRegs(regs: Partial<Record<keyof Regs, U64>>): void {
    if (typeof regs !== 'object' || regs === null) throw new TypeError(`regs must be an object, got ${typeName(regs)}`);
    const bytes = this.#ctx.raw.getRegs(this.fd);
    updateRegs(bytes, regs);
    this.#ctx.raw.setRegs(this.#fd, bytes);
  }

  /** KVM_GET_SREGS: segments, descriptor tables and control registers. EBADF once closed. */
  getSregs(): Sregs {
    return decodeSregs(this.#ctx.raw.getSregs(this.fd));
  }

  /**
   * KVM_SET_SREGS of the given fields (segments may be partial; the rest keep their values:
   * read first with KVM_GET_SREGS). An unknown field or a value of the wrong type is a
   * TypeError, a value out of its field's range a RangeError; EBADF once closed.
   */
  setSregs(update: SregsUpdate): void {
    if (typeof update !== 'object' || update === null) throw new TypeError(`sregs must be an object, got ${typeName(update)}`);
    const bytes = this.#ctx.raw.getSregs(this.fd);
    updateSregs(bytes, update);
    this.#ctx.raw.setSregs(this.#fd, bytes);
  }

  /** The kvm_run area, mapped on first use. */
  #area(fd: Handle): RawMapping {
    if (!this.#runArea) {
      const raw = this.#ctx.raw;
      this.#runArea = raw.mmap(fd, raw.getVcpuMmapSize(this.#ctx.system.fd), 0, Prot.READ | Prot.WRITE, MapFlag.SHARED);
      this.#resources.mappings.add(this.#runArea);
    }
    return this.#runArea;
  }

  /**
   * KVM_RUN on a thread of its own; resolves with the decoded exit. A timeout or an abort
   * kicks the vCPU out (exit 'timeout' / 'canceled'), after which it can run again.
   * A memory fault (KVM_RUN failing with EFAULT and exit reason KVM_EXIT_MEMORY_FAULT) is an
   * exit, not an error; other failures reject with a KvmError. A second run() while one is in
   * flight rejects with EBUSY; a `timeoutMs` outside [0, 2^31 - 1] with a RangeError, options
   * of the wrong type with a TypeError. A hypercall exit must be answered first (Vm.convert(),
   * completeHypercall()): running again unanswered would hand the guest the kernel's default
   * return value (0: done), so run() refuses with EINVAL instead. A read exit (io 'in', mmio
   * read) may be answered with completeRead(); unanswered, the guest reads what kvm_run holds.
   */
  async run(options?: RunOptions): Promise<VcpuExit> {
    const fd = this.fd;
    const { timeoutMs, signal } = toOptions(options, 'run options');
    if (timeoutMs !== undefined && typeof timeoutMs !== 'number') throw new TypeError(`timeoutMs must be a number, got ${typeName(timeoutMs)}`);
    if (timeoutMs !== undefined && !(timeoutMs >= 0 && timeoutMs <= MAX_TIMEOUT)) {
      throw new RangeError(`timeoutMs must be within [0, ${MAX_TIMEOUT}] (a timer's range), got ${timeoutMs}`);
    }
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw new TypeError('signal must be an AbortSignal');
    if (this.#running) throw kvmError('EBUSY', { syscall: 'ioctl', request: 'KVM_RUN' }, `vCPU ${this.id} is already running`);
    if (this.#hypercallPending !== undefined) {
      throw kvmError('EINVAL', { syscall: 'ioctl', request: 'KVM_RUN' }, `vCPU ${this.id}'s hypercall ${this.#hypercallPending} is unanswered: answer it with vm.convert() or completeHypercall() before running again`);
    }
    const area = this.#area(fd);
    const run = area.view(0, 4096);
    run[1] = 0; // immediate_exit: a previous kick must not stop this run
    let why: 'timeout' | 'canceled' | undefined;
    const r = this.#ctx.raw.run(fd, area);
    this.#running = r;
    this.#readPending = undefined;
    const stop = (this.#stop = (reason: 'timeout' | 'canceled') => {
      why ??= reason;
      r.kick();
    });
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => stop('timeout'), timeoutMs);
    const onAbort = () => stop('canceled');
    if (signal?.aborted) onAbort();
    signal?.addEventListener('abort', onAbort);
    let errno: number;
    try {
      errno = await r.done;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      this.#running = undefined;
      this.#stop = undefined;
    }
    try {
      const v = new DataView(run.buffer, run.byteOffset, run.byteLength);
      const exitReason = v.getUint32(8, true);
      if (errno === LINUX_ERRNO.EINTR) return { reason: why ?? 'interrupted' };
      if (errno === LINUX_ERRNO.EFAULT && exitReason === ExitReason.MEMORY_FAULT) return decodeExit(v, exitReason);
      if (errno !== 0) {
        throw new KvmError(`KVM_RUN: ${codeOf(errno)}`, { errno, code: codeOf(errno), syscall: 'ioctl', request: 'KVM_RUN' });
      }
      const exit = decodeExit(v, exitReason);
      if (exit.reason === 'hypercall') this.#hypercallPending = v.getBigUint64(32, true);
      else if (exit.reason === 'io' && exit.direction === 'in') {
        this.#readPending = { what: `io in from port 0x${exit.port.toString(16)}`, offset: Number(v.getBigUint64(40, true)), length: exit.size * exit.count };
      } else if (exit.reason === 'mmio' && !exit.isWrite) {
        this.#readPending = { what: `mmio read at 0x${exit.gpa.toString(16)}`, offset: 40, length: exit.length };
      }
      return exit;
    } finally {
      if (this.#closed) this.#release(); // close() while running left this to the run
    }
  }

  /**
   * Answers the hypercall the last run() exited with: its return value (0: done; for
   * KVM_HC_MAP_GPA_RANGE a negative errno refuses), written to kvm_run for the guest to read
   * when it runs again. Vm.convert() answers MAP_GPA_RANGE exits itself. A negative `ret`
   * is written in two's complement; a value that fits neither a u64 nor an s64 is a
   * RangeError. EINVAL when the last exit was not a hypercall or it was answered already.
   */
  completeHypercall(ret: bigint | number): void {
    void this.fd;
    // A negative errno is written as the guest's register holds it (two's complement).
    const value = (typeof ret === 'bigint' && ret < 0n && ret >= -(1n << 63n)) || (typeof ret === 'number' && Number.isSafeInteger(ret) && ret < 0)
      ? BigInt.asUintN(64, BigInt(ret))
      : toU64(ret, 'ret');
    if (this.#hypercallPending === undefined) throw kvmError('EINVAL', { syscall: 'ioctl', request: 'KVM_RUN' }, `vCPU ${this.id} has no hypercall to answer (its last exit was not one)`);
    const run = this.#runArea!.view(0, 4096);
    new DataView(run.buffer, run.byteOffset, run.byteLength).setBigUint64(88, value, true);
    this.#hypercallPending = undefined;
  }

  /**
   * Answers the read the last run() exited with: for an io 'in' exit the size * count bytes the
   * guest reads from the port, for an mmio read its `length` bytes. They are written to
   * kvm_run, and the guest's instruction completes with them when it runs again. A `data` of
   * another length is a RangeError; anything but a Uint8Array or an array of bytes a
   * TypeError; EINVAL when the last exit was not a read or it was answered already.
   */
  completeRead(data: Uint8Array | readonly number[]): void {
    void this.fd;
    const bytes = toBytes(data);
    const pending = this.#readPending;
    if (!pending) throw kvmError('EINVAL', { syscall: 'ioctl', request: 'KVM_RUN' }, `vCPU ${this.id} has no read to answer (its last exit was not an io 'in' or an mmio read)`);
    if (bytes.length !== pending.length) throw new RangeError(`the ${pending.what} takes ${pending.length} bytes, got ${bytes.length}`);
    this.#runArea!.view(pending.offset, pending.length).set(bytes);
    this.#readPending = undefined;
  }

  /**
   * KVM_PRE_FAULT_MEMORY: maps [gpa, gpa + size) into the guest ahead of its accesses.
   * Returns the part not yet mapped ({ size: 0n } when all was); throws when no page was
   * (ENOENT where no memslot is, EFAULT where the page has no memory the kernel can fault
   * in, EOPNOTSUPP where the host cannot pre-fault, EINTR when the kernel mapped nothing for
   * 2 s: Linux 6.12 loops there once a memslot was deleted after this vCPU's first pre-fault,
   * until the vCPU runs, and the call is interrupted rather than block the thread forever).
   *
   * @property __type.gpa Where the part not yet mapped starts.
   * @property __type.size Bytes not yet mapped.
   */
  preFaultMemory(gpa: U64, size: U64): { gpa: bigint; size: bigint } {
    const fd = this.fd;
    try {
      return this.#ctx.raw.preFaultMemory(fd, { gpa: toU64(gpa, 'gpa'), size: toU64(size, 'size'), flags: 0n });
    } catch (e) {
      if (!(e instanceof KvmError) || e.code !== 'EINTR') throw e;
      throw new KvmError(
        `KVM_PRE_FAULT_MEMORY: no page mapped within the raw layer's watchdog (EINTR): the kernel retries a fault it cannot finish (Linux 6.12 does on an MMU root made obsolete by a memslot deletion, until vCPU ${this.id} runs)`,
        { errno: e.errno, code: 'EINTR', syscall: 'ioctl', request: 'KVM_PRE_FAULT_MEMORY', cause: e },
      );
    }
  }

  /** Kicks a running vCPU out of KVM_RUN (its run() resolves 'canceled'); a no-op when none
   * is in flight. */
  cancel(): void {
    this.#stop?.('canceled');
  }

  #release(): void {
    const raw = this.#ctx.raw;
    if (this.#runArea) raw.munmap(this.#runArea);
    this.#runArea = undefined;
    this.#ctx.forget(this, this.#key);
    raw.close(this.#fd);
  }

  /** Closes the vCPU (idempotent). A run in flight is kicked out (its run() resolves
   * 'canceled'); the fd closes when it has returned. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#stop) this.#stop('canceled');
    else this.#release();
  }

  /** close(), for `using cpu = vm.createVcpu(0)`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** `data` as bytes: a Uint8Array, or an array of integers in [0, 255]. */
function toBytes(data: unknown): Uint8Array {
  if (data instanceof Uint8Array) return Uint8Array.from(data);
  if (Array.isArray(data) && data.every((b) => Number.isInteger(b) && b >= 0 && b <= 255)) return Uint8Array.from(data as number[]);
  throw new TypeError(`data must be a Uint8Array or an array of bytes, got ${typeName(data)}`);
}

/** Decodes struct kvm_run's exit union (offsets for x86-64: the union starts at 32). */
function decodeExit(v: DataView, exitReason: number): VcpuExit {
  switch (exitReason) {
    case ExitReason.HLT:
      return { reason: 'hlt' };
    case ExitReason.IO: {
      const size = v.getUint8(33);
      const count = v.getUint32(36, true);
      const off = Number(v.getBigUint64(40, true));
      return {
        reason: 'io', direction: v.getUint8(32) === 1 ? 'out' : 'in', port: v.getUint16(34, true), size, count,
        data: new Uint8Array(v.buffer.slice(v.byteOffset + off, v.byteOffset + off + size * count)),
      };
    }
    case ExitReason.MMIO: {
      const length = v.getUint32(48, true);
      return { reason: 'mmio', gpa: v.getBigUint64(32, true), isWrite: v.getUint8(52) !== 0, length, data: new Uint8Array(v.buffer.slice(v.byteOffset + 40, v.byteOffset + 40 + Math.min(length, 8))) };
    }
    case ExitReason.MEMORY_FAULT:
      return { reason: 'memory-fault', gpa: v.getBigUint64(40, true), size: v.getBigUint64(48, true), private: (v.getBigUint64(32, true) & MEMORY_EXIT_FLAG_PRIVATE) !== 0n };
    case ExitReason.HYPERCALL: {
      const nr = v.getBigUint64(32, true);
      const args = Array.from({ length: 6 }, (_, i) => v.getBigUint64(40 + i * 8, true));
      if (nr === KVM_HC_MAP_GPA_RANGE) {
        const pageSize = MAP_GPA_RANGE_PAGE_SIZES[Number(args[2]! & 0xfn)] ?? 4096n;
        return { reason: 'hypercall', nr: 'map-gpa-range', gpa: args[0]!, pages: args[1]!, pageSize, toPrivate: (args[2]! & MAP_GPA_RANGE_ENCRYPTED) !== 0n, args };
      }
      return { reason: 'hypercall', nr: Number(nr), args };
    }
    case ExitReason.SHUTDOWN:
      return { reason: 'shutdown' };
    case ExitReason.INTERNAL_ERROR: {
      const n = Math.min(v.getUint32(36, true), 16);
      return { reason: 'internal-error', suberror: v.getUint32(32, true), data: Array.from({ length: n }, (_, i) => v.getBigUint64(40 + i * 8, true)) };
    }
    case ExitReason.FAIL_ENTRY:
      return { reason: 'fail-entry', hardwareEntryFailureReason: v.getBigUint64(32, true), cpu: v.getUint32(40, true) };
    case ExitReason.INTR:
      return { reason: 'interrupted' };
    default:
      return { reason: 'other', exitReason };
  }
}
