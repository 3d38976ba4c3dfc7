/**
 * KVM UAPI constants (x86-64) used by every layer: values as in include/uapi/linux/kvm.h,
 * arch/x86/include/uapi/asm/kvm.h and the libc headers (docs/kernel-rules.md, UAPI).
 */

/** KVM_CHECK_EXTENSION capability numbers. */
export const Cap = {
  USER_MEMORY: 3,
  NR_MEMSLOTS: 10,
  MAX_VCPUS: 66,
  READONLY_MEM: 81,
  MULTI_ADDRESS_SPACE: 118,
  MAX_VCPU_ID: 128,
  EXIT_HYPERCALL: 201,
  USER_MEMORY2: 231,
  MEMORY_FAULT_INFO: 232,
  MEMORY_ATTRIBUTES: 233,
  GUEST_MEMFD: 234,
  VM_TYPES: 235,
  PRE_FAULT_MEMORY: 236,
  GUEST_MEMFD_FLAGS: 244,
} as const;

/** kvm_userspace_memory_region(2).flags */
export const MemFlag = {
  LOG_DIRTY_PAGES: 1 << 0,
  READONLY: 1 << 1,
  GUEST_MEMFD: 1 << 2,
} as const;

/** kvm_create_guest_memfd.flags */
export const GuestMemfdFlag = {
  MMAP: 1n << 0n,
  INIT_SHARED: 1n << 1n,
} as const;

/** kvm_memory_attributes.attributes */
export const MemoryAttribute = {
  PRIVATE: 1n << 3n,
} as const;

/** x86 VM types (arch/x86/include/uapi/asm/kvm.h). */
export const VmType = {
  default: 0,
  'sw-protected': 1,
  sev: 2,
  'sev-es': 3,
  snp: 4,
  tdx: 5,
} as const;
export type VmTypeName = keyof typeof VmType;

export function vmTypeName(type: number): VmTypeName | undefined {
  return (Object.keys(VmType) as VmTypeName[]).find((k) => VmType[k] === type);
}

/** Whether `name` is a VM type's name (an own key: 'toString' is not one). */
export function isVmTypeName(name: string): name is VmTypeName {
  return Object.hasOwn(VmType, name);
}

/** The VM types of a KVM_CAP_VM_TYPES mask, by name where known. */
export function decodeVmTypes(mask: number): (VmTypeName | number)[] {
  const out: (VmTypeName | number)[] = [];
  for (let t = 0; t < 32; t++) if (mask & (1 << t)) out.push(vmTypeName(t) ?? t);
  return out;
}

/** fallocate(2) modes. */
export const Falloc = {
  KEEP_SIZE: 0x01,
  PUNCH_HOLE: 0x02,
  COLLAPSE_RANGE: 0x08,
  ZERO_RANGE: 0x10,
  INSERT_RANGE: 0x20,
  UNSHARE_RANGE: 0x40,
  WRITE_ZEROES: 0x80,
} as const;

/** mmap(2) protections and flags. */
export const Prot = { NONE: 0, READ: 1, WRITE: 2, EXEC: 4 } as const;
export const MapFlag = { SHARED: 0x01, PRIVATE: 0x02, SHARED_VALIDATE: 0x03, FIXED: 0x10, ANONYMOUS: 0x20, FIXED_NOREPLACE: 0x100000 } as const;

/** madvise(2) advice. */
export const Madv = { NORMAL: 0, WILLNEED: 3, DONTNEED: 4, FREE: 8, REMOVE: 9 } as const;

/** KVM_USER_MEM_SLOTS = SHRT_MAX - KVM_INTERNAL_MEM_SLOTS (3) on x86. */
export const KVM_USER_MEM_SLOTS = 32764;
/** KVM_MEM_SLOTS_NUM = SHRT_MAX. */
export const KVM_MEM_SLOTS_NUM = 32767;
/** KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1. */
export const KVM_MEM_MAX_NR_PAGES = (1n << 31n) - 1n;
/** KVM_GET_API_VERSION answer of every KVM since 2.6.22. */
export const KVM_API_VERSION = 12;

export const U64_MAX = (1n << 64n) - 1n;
/** The largest loff_t (file offsets and sizes are signed 64-bit in the kernel). */
export const LOFF_MAX = (1n << 63n) - 1n;

/** Highest end (userspace_addr + memory_size) of a user range that access_ok() accepts on
 * x86-64 with 4-level paging: TASK_SIZE_MAX. */
export const USER_ADDRESS_MAX = 0x7ffffffff000n;

/** kvm_run.exit_reason values the library decodes. */
export const ExitReason = {
  IO: 2, HYPERCALL: 3, HLT: 5, MMIO: 6, SHUTDOWN: 8, FAIL_ENTRY: 9, INTR: 10, INTERNAL_ERROR: 17, MEMORY_FAULT: 39,
} as const;

/** Hypercalls KVM can hand to userspace (KVM_CAP_EXIT_HYPERCALL's bit numbers). */
export const Hypercall = { MAP_GPA_RANGE: 12 } as const;
/** KVM_HC_MAP_GPA_RANGE attributes (args[2]): the range becomes private (else shared). */
export const MAP_GPA_RANGE_ENCRYPTED = 1n << 4n;

/** kvm_run.memory_fault.flags: the access was to private memory. */
export const MEMORY_EXIT_FLAG_PRIVATE = 1n << 3n;
