/**
 * What the simulated host is: a Linux 6.18 x86-64 KVM host, either the default (one that
 * also offers KVM_X86_SW_PROTECTED_VM: memory attributes, private memory, pre-fault) or one
 * built from a real host's capabilities() so that the simulator answers as that host would.
 */
import type { Capabilities } from '../../capabilities.js';
import { MAX_GFN_52 } from '../../rules/memslot.js';
import { GuestMemfdFlag, VmType } from '../constants.js';

export interface SimProfile {
  name: string;
  /** KVM_CAP_VM_TYPES bitmask (BIT(type)). */
  vmTypes: number;
  /** CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES: without it KVM_SET_MEMORY_ATTRIBUTES is ENOTTY. */
  memoryAttributes: boolean;
  /** KVM_CAP_PRE_FAULT_MEMORY (x86: TDP enabled). */
  preFaultMemory: boolean;
  memoryFaultInfo: boolean;
  /** kvm_arch_nr_memslot_as_ids: 2 with SMM, else 1. */
  addressSpaces: number;
  /** Guest_memfd flags of a VM without private memory (sys scope too). */
  guestMemfdFlags: bigint;
  /** Highest end of a user address range (access_ok): TASK_SIZE_MAX. */
  userAddressMax: bigint;
  /** KVM_GET_VCPU_MMAP_SIZE */
  vcpuMmapSize: number;
  /** kvm_mmu_max_gfn(): the highest guest frame a memslot may reach. */
  maxGfn: bigint;
}

const bit = (t: number) => 1 << t;

/** VM types with private memory (kvm_arch_has_private_mem). */
export const PRIVATE_MEM_TYPES = bit(VmType['sw-protected']) | bit(VmType.snp) | bit(VmType.tdx);
/** VM types with protected state (no readonly memslots). */
export const PROTECTED_STATE_TYPES = bit(VmType['sev-es']) | bit(VmType.snp) | bit(VmType.tdx);

/** The default simulated host: 6.18 with KVM_X86_SW_PROTECTED_VM. */
export const defaultProfile: SimProfile = {
  name: 'linux-6.18-sw-protected',
  vmTypes: bit(VmType.default) | bit(VmType['sw-protected']),
  memoryAttributes: true,
  preFaultMemory: true,
  memoryFaultInfo: true,
  addressSpaces: 1,
  guestMemfdFlags: GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED,
  userAddressMax: 0x7ffffffff000n,
  vcpuMmapSize: 12288,
  maxGfn: MAX_GFN_52,
};

/** A profile that answers as the host whose capabilities() these are. */
export function profileFromCapabilities(c: Capabilities, name = 'host'): SimProfile {
  return {
    name,
    vmTypes: c.vmTypesMask || bit(VmType.default),
    memoryAttributes: c.systemMemoryAttributes !== 0n,
    preFaultMemory: c.preFaultMemory,
    memoryFaultInfo: c.memoryFaultInfo,
    addressSpaces: c.addressSpaces,
    guestMemfdFlags: c.guestMemfdFlags.raw | (c.systemGuestMemfdFlags ?? 0n),
    userAddressMax: defaultProfile.userAddressMax,
    vcpuMmapSize: defaultProfile.vcpuMmapSize,
    maxGfn: defaultProfile.maxGfn,
  };
}
