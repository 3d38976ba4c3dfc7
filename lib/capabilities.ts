import { Cap, decodeVmTypes, GuestMemfdFlag, MemoryAttribute, type VmTypeName } from './base/uapi.js';
import type { Handle, RawBackend } from './raw/types.js';

/** What a KVM host (or one VM type on it) supports, decoded from KVM_CHECK_EXTENSION. */
export interface Capabilities {
  /** Scope the VM-dependent answers were read on: a VM type, or 'system' (/dev/kvm). */
  scope: VmTypeName | number | 'system';
  /** KVM_CAP_USER_MEMORY: KVM_SET_USER_MEMORY_REGION. */
  userMemory: boolean;
  /** KVM_CAP_USER_MEMORY2: KVM_SET_USER_MEMORY_REGION2. */
  userMemory2: boolean;
  /** KVM_CAP_GUEST_MEMFD: KVM_CREATE_GUEST_MEMFD. */
  guestMemfd: boolean;
  /**
   * KVM_CAP_GUEST_MEMFD_FLAGS: the guest_memfd creation flags supported.
   *
   * @property __type.mmap GUEST_MEMFD_FLAG_MMAP.
   * @property __type.initShared GUEST_MEMFD_FLAG_INIT_SHARED.
   * @property __type.raw The flag bits as the kernel answered.
   */
  guestMemfdFlags: { mmap: boolean; initShared: boolean; raw: bigint };
  /** Supported memory attribute bits (KVM_MEMORY_ATTRIBUTE_PRIVATE = 8n), 0n when none. */
  memoryAttributes: bigint;
  /** KVM_CAP_MEMORY_ATTRIBUTES on /dev/kvm: non-zero when the host has the ioctl at all. */
  systemMemoryAttributes: bigint;
  /** KVM_CAP_GUEST_MEMFD_FLAGS on /dev/kvm. */
  systemGuestMemfdFlags: bigint;
  /** Private memory (memory attributes with PRIVATE). */
  privateMemory: boolean;
  /** VM types the host can create. */
  vmTypes: (VmTypeName | number)[];
  /** KVM_CAP_VM_TYPES on /dev/kvm: a bit per VM type (0 on kernels without the capability). */
  vmTypesMask: number;
  /** KVM_CAP_PRE_FAULT_MEMORY: KVM_PRE_FAULT_MEMORY. */
  preFaultMemory: boolean;
  /** KVM_CAP_MEMORY_FAULT_INFO: KVM_RUN reports memory faults as KVM_EXIT_MEMORY_FAULT. */
  memoryFaultInfo: boolean;
  /** KVM_CAP_READONLY_MEM: read-only memslots (KVM_MEM_READONLY). */
  readonlyMem: boolean;
  /** Address spaces for memslots (1 without SMM). */
  addressSpaces: number;
  /** KVM_CAP_NR_MEMSLOTS: user memslots per address space. */
  maxMemslots: number;
}

/** Reads the capabilities: system-wide ones on `sysFd`, VM-dependent ones on `vmFd` if given. */
export function readCapabilities(raw: RawBackend, sysFd: Handle, vmFd: Handle | undefined, scope: Capabilities['scope']): Capabilities {
  const on = vmFd ?? sysFd;
  const c = (cap: number, fd = on) => raw.checkExtension(fd, cap);
  const flags = BigInt(c(Cap.GUEST_MEMFD_FLAGS));
  const attrs = BigInt(c(Cap.MEMORY_ATTRIBUTES));
  const vmTypesMask = c(Cap.VM_TYPES, sysFd);
  return {
    scope,
    userMemory: c(Cap.USER_MEMORY) > 0,
    userMemory2: c(Cap.USER_MEMORY2) > 0,
    guestMemfd: c(Cap.GUEST_MEMFD) > 0,
    guestMemfdFlags: { mmap: (flags & GuestMemfdFlag.MMAP) !== 0n, initShared: (flags & GuestMemfdFlag.INIT_SHARED) !== 0n, raw: flags },
    memoryAttributes: attrs,
    systemMemoryAttributes: BigInt(c(Cap.MEMORY_ATTRIBUTES, sysFd)),
    systemGuestMemfdFlags: BigInt(c(Cap.GUEST_MEMFD_FLAGS, sysFd)),
    privateMemory: (attrs & MemoryAttribute.PRIVATE) !== 0n,
    vmTypes: decodeVmTypes(vmTypesMask === 0 ? 1 : vmTypesMask),
    vmTypesMask,
    preFaultMemory: c(Cap.PRE_FAULT_MEMORY) > 0,
    memoryFaultInfo: c(Cap.MEMORY_FAULT_INFO) > 0,
    readonlyMem: c(Cap.READONLY_MEM) > 0,
    addressSpaces: Math.max(1, c(Cap.MULTI_ADDRESS_SPACE)),
    maxMemslots: c(Cap.NR_MEMSLOTS),
  };
}
