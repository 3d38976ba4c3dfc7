/**
 * kvm-gmem: Linux KVM guest_memfd from Node.js.
 *
 *   import { openKvm } from 'kvm-gmem';
 *   const kvm = openKvm();
 *   const vm = kvm.createVm();
 *   const gmem = vm.createGuestMemfd({ size: 2n << 20n, mmap: true, initShared: true });
 *   const slot = vm.memslots.add({ guestPhysAddr: 0n, size: 2n << 20n, guestMemfd: gmem });
 */
export { openKvm, Kvm, resolveVmType, type OpenKvmOptions, type VmOptions, type BackendName } from './kvm.js';
export { Vm, type GuestMemfdOptions, type SharedMemoryOptions, type GuestMemory, type InvalidateEvent, type ConvertEvent, type VmEvents } from './vm.js';
export { AttributeBook, type AttributeRange, type ChangedRange } from './attributes.js';
export { GuestMemfd } from './gmem.js';
export { Mapping, MAX_VIEW, type MappingSource } from './mapping.js';
export { Memslot, MemslotTable, type MemslotOptions, type GuestRange, type Translation } from './memslots.js';
export { Vcpu, type VcpuExit, type HypercallExit, type Regs, type Sregs, type SregsUpdate, type Segment, type DescriptorTable, type RunOptions } from './vcpu.js';
export { RangeMap, type RangeEntry } from './base/rangemap.js';
export { KvmError, isKvmError, type Conflict, type KvmErrorInit, type ErrnoCode } from './base/errors.js';
export { type Capabilities } from './capabilities.js';
export { shippedProfiles, type ProfileSource } from './profiles.js';
export { type SimProfile } from './raw/sim/profile.js';
export { type U64 } from './base/args.js';
export { USER_ADDRESS_MAX } from './base/uapi.js';
export * as constants from './base/uapi.js';
export * as raw from './raw/index.js';
