import { constants as os } from 'node:os';
import { KvmError, kvmError } from './errors.js';
import { Map as MapFlag, Prot } from './raw/constants.js';
import type { Handle, RawBackend, RawMapping, RawRun } from './raw/types.js';
import { toOptions, toU64, typeName, type U64 } from './u64.js';
import type { Vm } from './vm.js';

const REG_NAMES = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags'] as const;
/** struct kvm_regs, by name. */
export type Regs = Record<(typeof REG_NAMES)[number], bigint>;

/** struct kvm_segment. */
export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}
/** struct kvm_dtable. */
export interface DescriptorTable {
  base: bigint;
  limit: number;
}
const SEGMENTS = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
const CONTROL = ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apicBase'] as const;
/** struct kvm_sregs (the interrupt bitmap is kept as read). */
export type Sregs = Record<(typeof SEGMENTS)[number], Segment> & Record<'gdt' | 'idt', DescriptorTable> & Record<(typeof CONTROL)[number], bigint>;
export type SregsUpdate = { [K in (typeof SEGMENTS)[number]]?: Partial<Segment> } & { [K in 'gdt' | 'idt']?: Partial<DescriptorTable> } & { [K in (typeof CONTROL)[number]]?: U64 };

/** A decoded KVM_RUN exit. */
export type VcpuExit =
  | { reason: 'hlt' }
  | { reason: 'io'; direction: 'in' | 'out'; port: number; size: number; count: number; data: Uint8Array }
  | { reason: 'mmio'; gpa: bigint; isWrite: boolean; length: number; data: Uint8Array }
  | { reason: 'memory-fault'; gpa: bigint; size: bigint; private: boolean }
  | { reason: 'shutdown' }
  | { reason: 'internal-error'; suberror: number; data: bigint[] }
  | { reason: 'fail-entry'; hardwareEntryFailureReason: bigint; cpu: number }
  | { reason: 'timeout' }
  | { reason: 'canceled' }
  | { reason: 'interrupted' }
  | { reason: 'other'; exitReason: number };

export interface RunOptions {
  /** Kick the vCPU out after this many milliseconds (exit 'timeout'). */
  timeoutMs?: number;
  /** Kick the vCPU out when aborted (exit 'canceled'). */
  signal?: AbortSignal;
}

/** The longest timer Node keeps (setTimeout turns a longer one into 1 ms). */
const MAX_TIMEOUT = 2 ** 31 - 1;

const EXIT = { IO: 2, HLT: 5, MMIO: 6, SHUTDOWN: 8, FAIL_ENTRY: 9, INTR: 10, INTERNAL_ERROR: 17, MEMORY_FAULT: 39 } as const;
const MEMORY_EXIT_FLAG_PRIVATE = 1n << 3n;
const codeOf = (errno: number) => Object.entries(os.errno).find(([, n]) => n === errno)?.[0] ?? `E${errno}`;

/** A virtual CPU (KVM_CREATE_VCPU): registers, and KVM_RUN off the event loop. */
export class Vcpu {
  readonly vm: Vm;
  readonly id: number;
  #raw: RawBackend;
  #fd: Handle;
  #closed = false;
  #runArea: RawMapping | undefined;
  /** #runArea while mapped, for the VM's finalizer. */
  #mappings = new Set<RawMapping>();
  #running: RawRun | undefined;
  /** Kicks the run in flight, recording why. */
  #stop: ((why: 'timeout' | 'canceled') => void) | undefined;

  /** @internal use Vm.createVcpu() */
  constructor(vm: Vm, raw: RawBackend, fd: Handle, id: number) {
    this.vm = vm;
    this.#raw = raw;
    this.#fd = fd;
    this.id = id;
    vm._adopt(fd, this.#mappings); // (released by the VM's finalizer if both are dropped)
  }

  get fd(): Handle {
    if (this.#closed) throw kvmError('EBADF', { syscall: 'ioctl' }, `vCPU ${this.id} is closed`);
    return this.#fd;
  }
  get closed(): boolean {
    return this.#closed;
  }
  /** Whether a run() is in flight. */
  get running(): boolean {
    return this.#running !== undefined;
  }

  /** KVM_GET_REGS */
  getRegs(): Regs {
    const v = view(this.#raw.getRegs(this.fd));
    return Object.fromEntries(REG_NAMES.map((n, i) => [n, v.getBigUint64(i * 8, true)])) as Regs;
  }

  /** KVM_SET_REGS of the given registers (the others keep their values). */
  setRegs(regs: Partial<Record<keyof Regs, U64>>): void {
    if (typeof regs !== 'object' || regs === null) throw new TypeError(`regs must be an object, got ${typeName(regs)}`);
    const bytes = this.#raw.getRegs(this.fd);
    const v = view(bytes);
    for (const [k, val] of Object.entries(regs)) {
      const i = REG_NAMES.indexOf(k as never);
      if (i < 0) throw new TypeError(`unknown register '${k}'`);
      if (val !== undefined) v.setBigUint64(i * 8, toU64(val, k), true);
    }
    this.#raw.setRegs(this.#fd, bytes);
  }

  /** KVM_GET_SREGS */
  getSregs(): Sregs {
    const v = view(this.#raw.getSregs(this.fd));
    const out: Record<string, unknown> = {};
    SEGMENTS.forEach((n, i) => (out[n] = readSegment(v, i * 24)));
    out.gdt = { base: v.getBigUint64(192, true), limit: v.getUint16(200, true) };
    out.idt = { base: v.getBigUint64(208, true), limit: v.getUint16(216, true) };
    CONTROL.forEach((n, i) => (out[n] = v.getBigUint64(224 + i * 8, true)));
    return out as Sregs;
  }

  /** KVM_SET_SREGS of the given fields (segments may be partial; the rest keep their values). */
  setSregs(update: SregsUpdate): void {
    if (typeof update !== 'object' || update === null) throw new TypeError(`sregs must be an object, got ${typeName(update)}`);
    const bytes = this.#raw.getSregs(this.fd);
    const v = view(bytes);
    for (const [k, val] of Object.entries(update)) {
      if (val === undefined) continue;
      const seg = SEGMENTS.indexOf(k as never);
      const ctl = CONTROL.indexOf(k as never);
      if (seg >= 0) writeSegment(v, seg * 24, val as Partial<Segment>);
      else if (k === 'gdt' || k === 'idt') {
        const o = k === 'gdt' ? 192 : 208;
        const t = toOptions(val as Partial<DescriptorTable>, k);
        if (t.base !== undefined) v.setBigUint64(o, toU64(t.base, `${k}.base`), true);
        if (t.limit !== undefined) v.setUint16(o + 8, int(t.limit, `${k}.limit`, 0xffff), true);
      } else if (ctl >= 0) v.setBigUint64(224 + ctl * 8, toU64(val, k), true);
      else throw new TypeError(`unknown sregs field '${k}'`);
    }
    this.#raw.setSregs(this.#fd, bytes);
  }

  /**
   * KVM_RUN on a thread of its own; resolves with the decoded exit. A timeout or an abort
   * kicks the vCPU out (exit 'timeout' / 'canceled'), after which it can run again.
   * A memory fault (KVM_RUN failing with EFAULT and exit reason KVM_EXIT_MEMORY_FAULT) is an
   * exit, not an error; other failures reject with a KvmError.
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
    if (!this.#runArea) {
      this.#runArea = this.#raw.mmap(fd, this.#raw.getVcpuMmapSize(this.vm.kvm.fd), 0, Prot.READ | Prot.WRITE, MapFlag.SHARED);
      this.#mappings.add(this.#runArea);
    }
    const area = this.#runArea;
    const run = area.view(0, 4096);
    run[1] = 0; // immediate_exit: a previous kick must not stop this run
    let why: 'timeout' | 'canceled' | undefined;
    const r = this.#raw.run(fd, area);
    this.#running = r;
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
      if (errno === os.errno.EINTR) return { reason: why ?? 'interrupted' };
      if (errno === os.errno.EFAULT && exitReason === EXIT.MEMORY_FAULT) return decodeExit(v, exitReason);
      if (errno !== 0) {
        throw new KvmError(`KVM_RUN: ${codeOf(errno)}`, { errno, code: codeOf(errno), syscall: 'ioctl', request: 'KVM_RUN' });
      }
      return decodeExit(v, exitReason);
    } finally {
      if (this.#closed) this.#release(); // close() while running left this to the run
    }
  }

  /**
   * KVM_PRE_FAULT_MEMORY: maps [gpa, gpa + size) into the guest ahead of its accesses.
   * Returns the part not yet mapped ({ size: 0n } when all was); throws when no page was
   * (ENOENT where no memslot is, EOPNOTSUPP where the host cannot pre-fault).
   */
  preFaultMemory(gpa: U64, size: U64): { gpa: bigint; size: bigint } {
    const fd = this.fd;
    return this.#raw.preFaultMemory(fd, { gpa: toU64(gpa, 'gpa'), size: toU64(size, 'size'), flags: 0n });
  }

  /** Kicks a running vCPU out of KVM_RUN (its run() resolves 'canceled'). */
  cancel(): void {
    this.#stop?.('canceled');
  }

  #release(): void {
    if (this.#runArea) this.#raw.munmap(this.#runArea);
    this.#runArea = undefined;
    this.#mappings.clear();
    this.#raw.close(this.#fd);
  }

  /** Closes the vCPU (idempotent). A run in flight is kicked out (its run() resolves
   * 'canceled'); the fd closes when it has returned. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.vm._forgetVcpu(this, this.#fd);
    if (this.#stop) this.#stop('canceled');
    else this.#release();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function int(v: unknown, name: string, max: number): number {
  if (typeof v !== 'number') throw new TypeError(`${name} must be a number`);
  if (!Number.isInteger(v) || v < 0 || v > max) throw new RangeError(`${name} must be an integer in [0, ${max}]`);
  return v;
}

const SEG_BYTES = ['type', 'present', 'dpl', 'db', 's', 'l', 'g', 'avl', 'unusable'] as const;

function readSegment(v: DataView, o: number): Segment {
  const s: Record<string, unknown> = { base: v.getBigUint64(o, true), limit: v.getUint32(o + 8, true), selector: v.getUint16(o + 12, true) };
  SEG_BYTES.forEach((k, i) => (s[k] = v.getUint8(o + 14 + i)));
  return s as unknown as Segment;
}

function writeSegment(v: DataView, o: number, seg: Partial<Segment>): void {
  const s = toOptions(seg, 'a segment');
  if (s.base !== undefined) v.setBigUint64(o, toU64(s.base, 'base'), true);
  if (s.limit !== undefined) v.setUint32(o + 8, int(s.limit, 'limit', 0xffffffff), true);
  if (s.selector !== undefined) v.setUint16(o + 12, int(s.selector, 'selector', 0xffff), true);
  SEG_BYTES.forEach((k, i) => {
    if (s[k] !== undefined) v.setUint8(o + 14 + i, int(s[k], k, 0xff));
  });
}

/** Decodes struct kvm_run's exit union (offsets for x86-64: the union starts at 32). */
function decodeExit(v: DataView, exitReason: number): VcpuExit {
  switch (exitReason) {
    case EXIT.HLT:
      return { reason: 'hlt' };
    case EXIT.IO: {
      const size = v.getUint8(33);
      const count = v.getUint32(36, true);
      const off = Number(v.getBigUint64(40, true));
      return {
        reason: 'io', direction: v.getUint8(32) === 1 ? 'out' : 'in', port: v.getUint16(34, true), size, count,
        data: new Uint8Array(v.buffer.slice(v.byteOffset + off, v.byteOffset + off + size * count)),
      };
    }
    case EXIT.MMIO: {
      const length = v.getUint32(48, true);
      return { reason: 'mmio', gpa: v.getBigUint64(32, true), isWrite: v.getUint8(52) !== 0, length, data: new Uint8Array(v.buffer.slice(v.byteOffset + 40, v.byteOffset + 40 + Math.min(length, 8))) };
    }
    case EXIT.MEMORY_FAULT:
      return { reason: 'memory-fault', gpa: v.getBigUint64(40, true), size: v.getBigUint64(48, true), private: (v.getBigUint64(32, true) & MEMORY_EXIT_FLAG_PRIVATE) !== 0n };
    case EXIT.SHUTDOWN:
      return { reason: 'shutdown' };
    case EXIT.INTERNAL_ERROR: {
      const n = Math.min(v.getUint32(36, true), 16);
      return { reason: 'internal-error', suberror: v.getUint32(32, true), data: Array.from({ length: n }, (_, i) => v.getBigUint64(40 + i * 8, true)) };
    }
    case EXIT.FAIL_ENTRY:
      return { reason: 'fail-entry', hardwareEntryFailureReason: v.getBigUint64(32, true), cpu: v.getUint32(40, true) };
    case EXIT.INTR:
      return { reason: 'interrupted' };
    default:
      return { reason: 'other', exitReason };
  }
}
