/**
 * What a VM's parts share, handed to each at creation: GuestMemfd, Vcpu, Mapping, MemslotTable
 * and AttributeBook reach their VM through this context, never through members of the public
 * classes. Not exported from the package.
 */
import type { Capabilities } from './capabilities.js';
import type { Kvm } from './kvm.js';
import type { ChildResources, SystemHandle } from './lifetime.js';
import type { MemslotBooks } from './memslots.js';
import type { Handle, RawBackend } from './raw/types.js';
import type { ConvertEvent, InvalidateEvent, Vm } from './vm.js';

/**
 * The token the library's constructors require: objects are made by their factories
 * (openKvm, kvm.createVm, vm.createGuestMemfd, gmem.map, ...), not by `new` from outside.
 */
export const CREATE: unique symbol = Symbol('kvm-gmem: made by the library');

export function checkToken(token: unknown, what: string, factory: string): void {
  if (token !== CREATE) throw new TypeError(`${what} objects are made by ${factory}, not with new`);
}

export interface VmContext {
  readonly vm: Vm;
  readonly kvm: Kvm;
  readonly raw: RawBackend;
  /** The VM fd. */
  readonly fd: Handle;
  /** /dev/kvm, held open while the VM lives. */
  readonly system: SystemHandle;
  readonly precheck: boolean;
  readonly pageSize: number;
  /** Throws EBADF once the VM is closed. */
  checkOpen(syscall: string): void;
  /** The VM-scope capabilities, read once. */
  caps(): Capabilities;
  /** Registers a child's raw resources, which the VM's finalizer releases if both are dropped;
   * the key forgets them. */
  adopt(resources: ChildResources): number;
  /** A child closed: the VM forgets it and its resources. */
  forget(child: object, key: number): void;
  /** The memslot books (which guest ranges a file range backs). */
  readonly books: MemslotBooks;
  /** Emits a VM event after a call changed state; a listener that throws cannot undo the call. */
  emit(event: 'invalidate', payload: InvalidateEvent): void;
  emit(event: 'convert', payload: ConvertEvent): void;
}
