import { kvmError } from './errors.js';
import { track, untrack } from './lifetime.js';
import type { Handle, RawBackend } from './raw/types.js';
import { toU64, type U64 } from './u64.js';
import type { Vm } from './vm.js';

/** A virtual CPU (KVM_CREATE_VCPU). */
export class Vcpu {
  readonly vm: Vm;
  readonly id: number;
  #raw: RawBackend;
  #fd: Handle;
  #closed = false;
  /** @internal this vCPU's entry in its VM's list */
  _ref: WeakRef<Vcpu> | undefined;

  /** @internal use Vm.createVcpu() */
  constructor(vm: Vm, raw: RawBackend, fd: Handle, id: number) {
    this.vm = vm;
    this.#raw = raw;
    this.#fd = fd;
    this.id = id;
    track(this, raw, fd);
  }

  get fd(): Handle {
    if (this.#closed) throw kvmError('EBADF', { syscall: 'ioctl' }, `vCPU ${this.id} is closed`);
    return this.#fd;
  }
  get closed(): boolean {
    return this.#closed;
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

  close(): void {
    if (this.#closed) return;
    untrack(this);
    this.#closed = true;
    this.vm._forgetVcpu(this);
    this.#raw.close(this.#fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
