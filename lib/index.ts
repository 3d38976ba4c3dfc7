/**
 * kvm-gmem: Linux KVM guest_memfd from Node.js.
 *
 *   import { openKvm } from 'kvm-gmem';
 *   const kvm = openKvm();
 *   const vm = kvm.createVm();
 *   const gmem = vm.createGuestMemfd({ size: 2n << 20n, mmap: true, initShared: true });
 *   const slot = vm.memslots.add({ guestPhysAddr: 0n, size: 2n << 20n, guestMemfd: gmem });
 *
 * @packageDocumentation
 */
export { openKvm, Kvm, resolveVmType, type OpenKvmOptions, type VmOptions, type BackendName } from './kvm.js';
export { Vm, type GuestMemfdOptions, type SharedMemoryOptions, type GuestMemory, type InvalidateEvent, type ConvertEvent, type VmEvents, type ConversionRequest, type HypercallConversion, type MemoryFaultConversion, type RangeConversion, type ConvertOptions, type Conversion } from './vm.js';
export { AttributeBook, type AttributeRange, type ChangedRange } from './attributes.js';
export { GuestMemfd } from './gmem.js';
export { Mapping, MAX_VIEW, type MappingSource } from './mapping.js';
export { Memslot, MemslotTable, type MemslotOptions, type GuestRange, type Translation } from './memslots.js';
export { Vcpu, type VcpuExit, type HypercallExit, type Regs, type Sregs, type SregsUpdate, type Segment, type DescriptorTable, type RunOptions } from './vcpu.js';
export { RangeMap, type RangeEntry } from './base/rangemap.js';
export { KvmError, isKvmError, type Conflict, type KvmErrorInit, type ErrnoCode } from './base/errors.js';
export { type Capabilities } from './capabilities.js';
export { shippedProfiles, type ProfileSource } from './profiles.js';
/**
 * What the simulator needs to answer as a given host: its KVM_CHECK_EXTENSION answers and the
 * answers no capability reveals. kvm.profile() measures one; openKvm's `profile` takes one.
 *
 * @property caps.__type.system KVM_CHECK_EXTENSION answers on /dev/kvm, by capability number.
 * @property caps.__type.vm KVM_CHECK_EXTENSION answers on a VM, by VM type number, then by
 * capability number.
 */
export { type SimProfile, type CapTable } from './raw/sim/profile.js';
export { type U64 } from './base/args.js';
export { USER_ADDRESS_MAX } from './base/uapi.js';
/** KVM UAPI constants (x86-64), with the values of include/uapi/linux/kvm.h and the libc headers. */
export * as constants from './base/uapi.js';
/**
 * The raw, syscall-shaped layer: RawBackend functions over integer handles, one per kernel
 * call, with no policy and no books, to hand the kernel exactly what you want, bad values
 * included. Also re-exports the UAPI constants.
 */
export * as raw from './raw/index.js';
