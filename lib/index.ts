/**
 * kvm-gmem: Linux KVM guest_memfd from Node.js.
 *
 *   import { openKvm } from 'kvm-gmem';
 *   using kvm = openKvm();
 *   using vm = kvm.createVm();
 *   using gmem = vm.createGuestMemfd({ size: 2n << 20n, mmap: true, initShared: true });
 *   const slot = vm.memslots.add({ guestPhysAddr: 0n, size: 2n << 20n, guestMemfd: gmem });
 */
export { openKvm, Kvm, resolveVmType, type OpenKvmOptions, type VmOptions, type BackendName } from './kvm.js';
export { Vm, AttributeBook, type GuestMemfdOptions, type AttributeRange, type InvalidateEvent, type ConvertEvent } from './vm.js';
export { GuestMemfd } from './gmem.js';
export { Mapping, MAX_VIEW } from './mapping.js';
export { Memslot, MemslotTable, USER_ADDRESS_MAX, type MemslotOptions, type GuestRange, type Translation } from './memslots.js';
export { Vcpu, type VcpuExit, type Regs, type Sregs, type SregsUpdate, type Segment, type RunOptions } from './vcpu.js';
export { RangeMap, type RangeEntry } from './rangemap.js';
export { KvmError, isKvmError, type Conflict, type KvmErrorInit } from './errors.js';
export { type Capabilities } from './capabilities.js';
export { type U64 } from './u64.js';
export * as constants from './raw/constants.js';
export * as raw from './raw/index.js';
