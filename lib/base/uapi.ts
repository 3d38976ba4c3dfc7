/**
 * KVM UAPI constants (x86-64) used by every layer: values as in include/uapi/linux/kvm.h,
 * arch/x86/include/uapi/asm/kvm.h and the libc headers (docs/kernel-rules.md, UAPI).
 */

/** KVM_CHECK_EXTENSION capability numbers. */
export const Cap = {
  /** KVM_CAP_USER_MEMORY: KVM_SET_USER_MEMORY_REGION. */
  USER_MEMORY: 3,
  /** KVM_CAP_NR_MEMSLOTS: user memslots per address space. */
  NR_MEMSLOTS: 10,
  /** KVM_CAP_MAX_VCPUS: the most vCPUs a VM can have. */
  MAX_VCPUS: 66,
  /** KVM_CAP_READONLY_MEM: read-only memslots (KVM_MEM_READONLY). */
  READONLY_MEM: 81,
  /** KVM_CAP_MULTI_ADDRESS_SPACE: the number of memslot address spaces. */
  MULTI_ADDRESS_SPACE: 118,
  /** KVM_CAP_MAX_VCPU_ID: vCPU ids are below this. */
  MAX_VCPU_ID: 128,
  /** KVM_CAP_EXIT_HYPERCALL: the hypercalls that can exit to userspace (a mask of bits by
   * hypercall number; enabled with KVM_ENABLE_CAP). */
  EXIT_HYPERCALL: 201,
  /** KVM_CAP_USER_MEMORY2: KVM_SET_USER_MEMORY_REGION2. */
  USER_MEMORY2: 231,
  /** KVM_CAP_MEMORY_FAULT_INFO: memory faults exit as KVM_EXIT_MEMORY_FAULT. */
  MEMORY_FAULT_INFO: 232,
  /** KVM_CAP_MEMORY_ATTRIBUTES: the KVM_MEMORY_ATTRIBUTE_* bits supported. */
  MEMORY_ATTRIBUTES: 233,
  /** KVM_CAP_GUEST_MEMFD: KVM_CREATE_GUEST_MEMFD. */
  GUEST_MEMFD: 234,
  /** KVM_CAP_VM_TYPES: a bit per VM type the host can create. */
  VM_TYPES: 235,
  /** KVM_CAP_PRE_FAULT_MEMORY: KVM_PRE_FAULT_MEMORY. */
  PRE_FAULT_MEMORY: 236,
  /** KVM_CAP_GUEST_MEMFD_FLAGS: the GUEST_MEMFD_FLAG_* bits supported. */
  GUEST_MEMFD_FLAGS: 244,
} as const;

/** kvm_userspace_memory_region(2).flags */
export const MemFlag = {
  /** KVM_MEM_LOG_DIRTY_PAGES: KVM logs the pages the guest writes. */
  LOG_DIRTY_PAGES: 1 << 0,
  /** KVM_MEM_READONLY: guest writes exit as MMIO. */
  READONLY: 1 << 1,
  /** KVM_MEM_GUEST_MEMFD: the slot's private memory is a guest_memfd. */
  GUEST_MEMFD: 1 << 2,
} as const;

/** kvm_create_guest_memfd.flags */
export const GuestMemfdFlag = {
  /** GUEST_MEMFD_FLAG_MMAP: the host may mmap the file. */
  MMAP: 1n << 0n,
  /** GUEST_MEMFD_FLAG_INIT_SHARED: its pages start shared (host-accessible). */
  INIT_SHARED: 1n << 1n,
} as const;

/** kvm_memory_attributes.attributes */
export const MemoryAttribute = {
  /** KVM_MEMORY_ATTRIBUTE_PRIVATE: the guest's accesses go to its guest_memfd. */
  PRIVATE: 1n << 3n,
} as const;

/** x86 VM types (arch/x86/include/uapi/asm/kvm.h). */
export const VmType = {
  /** KVM_X86_DEFAULT_VM. */
  default: 0,
  /** KVM_X86_SW_PROTECTED_VM: private memory without hardware protection (for development). */
  'sw-protected': 1,
  /** KVM_X86_SEV_VM. */
  sev: 2,
  /** KVM_X86_SEV_ES_VM. */
  'sev-es': 3,
  /** KVM_X86_SNP_VM. */
  snp: 4,
  /** KVM_X86_TDX_VM. */
  tdx: 5,
} as const;
/** The name of an x86 VM type: 'default', 'sw-protected', 'sev', 'sev-es', 'snp' or 'tdx'. */
export type VmTypeName = keyof typeof VmType;

/** The name of VM type number `type`, or undefined when it has none. */
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
  /** FALLOC_FL_KEEP_SIZE: the file size does not change. */
  KEEP_SIZE: 0x01,
  /** FALLOC_FL_PUNCH_HOLE: frees the range (with KEEP_SIZE). */
  PUNCH_HOLE: 0x02,
  /** FALLOC_FL_COLLAPSE_RANGE: removes the range, moving the rest down. */
  COLLAPSE_RANGE: 0x08,
  /** FALLOC_FL_ZERO_RANGE: zeroes the range. */
  ZERO_RANGE: 0x10,
  /** FALLOC_FL_INSERT_RANGE: inserts a hole, moving the rest up. */
  INSERT_RANGE: 0x20,
  /** FALLOC_FL_UNSHARE_RANGE: unshares shared blocks of the range. */
  UNSHARE_RANGE: 0x40,
  /** FALLOC_FL_WRITE_ZEROES: zeroes the range by writing zeros. */
  WRITE_ZEROES: 0x80,
} as const;

/**
 * mmap(2) protections.
 *
 * @property __type.NONE PROT_NONE
 * @property __type.READ PROT_READ
 * @property __type.WRITE PROT_WRITE
 * @property __type.EXEC PROT_EXEC
 */
export const Prot = { NONE: 0, READ: 1, WRITE: 2, EXEC: 4 } as const;
/**
 * mmap(2) flags.
 *
 * @property __type.SHARED MAP_SHARED
 * @property __type.PRIVATE MAP_PRIVATE
 * @property __type.SHARED_VALIDATE MAP_SHARED_VALIDATE
 * @property __type.FIXED MAP_FIXED
 * @property __type.ANONYMOUS MAP_ANONYMOUS
 * @property __type.FIXED_NOREPLACE MAP_FIXED_NOREPLACE
 */
export const MapFlag = { SHARED: 0x01, PRIVATE: 0x02, SHARED_VALIDATE: 0x03, FIXED: 0x10, ANONYMOUS: 0x20, FIXED_NOREPLACE: 0x100000 } as const;

/**
 * madvise(2) advice.
 *
 * @property __type.NORMAL MADV_NORMAL
 * @property __type.WILLNEED MADV_WILLNEED
 * @property __type.DONTNEED MADV_DONTNEED
 * @property __type.FREE MADV_FREE
 * @property __type.REMOVE MADV_REMOVE: frees the pages and their backing store.
 */
export const Madv = { NORMAL: 0, WILLNEED: 3, DONTNEED: 4, FREE: 8, REMOVE: 9 } as const;

/** KVM_USER_MEM_SLOTS = SHRT_MAX - KVM_INTERNAL_MEM_SLOTS (3) on x86. */
export const KVM_USER_MEM_SLOTS = 32764;
/** KVM_MEM_SLOTS_NUM = SHRT_MAX. */
export const KVM_MEM_SLOTS_NUM = 32767;
/** KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1. */
export const KVM_MEM_MAX_NR_PAGES = (1n << 31n) - 1n;
/** KVM_GET_API_VERSION answer of every KVM since 2.6.22. */
export const KVM_API_VERSION = 12;

/** The largest u64: 2^64 - 1. */
export const U64_MAX = (1n << 64n) - 1n;
/** The largest loff_t (file offsets and sizes are signed 64-bit in the kernel). */
export const LOFF_MAX = (1n << 63n) - 1n;

/** Highest end (userspace_addr + memory_size) of a user range that access_ok() accepts on
 * x86-64 with 4-level paging: TASK_SIZE_MAX. */
export const USER_ADDRESS_MAX = 0x7ffffffff000n;

/**
 * kvm_run.exit_reason values the library decodes.
 *
 * @property __type.IO KVM_EXIT_IO
 * @property __type.HYPERCALL KVM_EXIT_HYPERCALL
 * @property __type.HLT KVM_EXIT_HLT
 * @property __type.MMIO KVM_EXIT_MMIO
 * @property __type.SHUTDOWN KVM_EXIT_SHUTDOWN
 * @property __type.FAIL_ENTRY KVM_EXIT_FAIL_ENTRY
 * @property __type.INTR KVM_EXIT_INTR
 * @property __type.INTERNAL_ERROR KVM_EXIT_INTERNAL_ERROR
 * @property __type.MEMORY_FAULT KVM_EXIT_MEMORY_FAULT
 */
export const ExitReason = {
  IO: 2, HYPERCALL: 3, HLT: 5, MMIO: 6, SHUTDOWN: 8, FAIL_ENTRY: 9, INTR: 10, INTERNAL_ERROR: 17, MEMORY_FAULT: 39,
} as const;

/**
 * Hypercalls KVM can hand to userspace (KVM_CAP_EXIT_HYPERCALL's bit numbers).
 *
 * @property __type.MAP_GPA_RANGE KVM_HC_MAP_GPA_RANGE: the guest asks for a range to become
 * private or shared.
 */
export const Hypercall = { MAP_GPA_RANGE: 12 } as const;
/** KVM_HC_MAP_GPA_RANGE attributes (args[2]): the range becomes private (else shared). */
export const MAP_GPA_RANGE_ENCRYPTED = 1n << 4n;

/** kvm_run.memory_fault.flags: the access was to private memory. */
export const MEMORY_EXIT_FLAG_PRIVATE = 1n << 3n;
