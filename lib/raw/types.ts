/**
 * The raw backend: syscall-shaped functions over integer handles, one per kernel call,
 * implemented by the native addon (./native.ts) and by the simulator (./sim/). No policy and
 * no bookkeeping here: a selftest can hand the kernel deliberately bad values through it.
 *
 * u64 arguments take a bigint or a safe-integer number; a wrong type is a TypeError, an
 * unrepresentable value a RangeError, and a kernel refusal a KvmError with its errno code.
 */
import type { U64 } from '../base/args.js';

/** A file descriptor (native) or a simulated handle (numbers far above real fds). */
export type Handle = number;

/** struct kvm_userspace_memory_region (KVM_SET_USER_MEMORY_REGION). Omitted fields are 0. */
export interface RawRegion {
  /** bits 15:0 slot id, bits 31:16 address-space id */
  slot: number;
  /** KVM_MEM_* flags. */
  flags?: number;
  /** First guest-physical address, in bytes. */
  guestPhysAddr: U64;
  /** 0 deletes the slot */
  memorySize: U64;
  /** Host address of the slot's memory in this process. */
  userspaceAddr?: U64;
}

/** struct kvm_userspace_memory_region2 (KVM_SET_USER_MEMORY_REGION2). */
export interface RawRegion2 extends RawRegion {
  /** Byte offset of the slot's memory in the guest_memfd. */
  guestMemfdOffset?: U64;
  /** The guest_memfd's fd (with KVM_MEM_GUEST_MEMFD), passed to the kernel as given. */
  guestMemfd?: number;
}

/** struct kvm_memory_attributes. */
export interface RawMemoryAttributes {
  /** First guest-physical address, in bytes. */
  address: U64;
  /** Size of the range in bytes. */
  size: U64;
  /** The KVM_MEMORY_ATTRIBUTE_* bits the range gets. */
  attributes: U64;
  /** Must be 0. */
  flags?: U64;
}

/** struct kvm_pre_fault_memory (in: range; out: what is left). */
export interface RawPreFault {
  /** First guest-physical address, in bytes. */
  gpa: U64;
  /** Size of the range in bytes. */
  size: U64;
  /** Must be 0. */
  flags?: U64;
  /**
   * Not the kernel's: the longest the call may go without the kernel mapping a page, in ms
   * (default 2000; 0: wait forever). Then it is interrupted and fails with EINTR, where a
   * kernel would otherwise loop (6.12 after a memslot deletion, until the vCPU runs).
   */
  watchdogMs?: number;
}

/** What fstat(2) reports of a file, the fields the library reads. */
export interface RawStat {
  /** st_size: the file size in bytes. */
  size: bigint;
  /** st_mode: file type and permissions. */
  mode: number;
  /** st_blksize: the preferred I/O block size in bytes. */
  blksize: number;
  /** st_blocks: 512-byte blocks allocated. */
  blocks: bigint;
  /** st_ino: the inode number. */
  ino: bigint;
}

/**
 * What mmap returns: the mapping's address, and zero-copy views of its bytes. Native: views
 * over the mapping itself (an external ArrayBuffer made on first use), detached by munmap.
 * Simulated: views of memory that mappings of the same file range share, so they alias. A
 * view cannot be transferred (postMessage, structuredClone) away from its mapping. As in C,
 * the raw layer does not unmap a mapping that is dropped (the typed Mapping does); the
 * environment's end unmaps what is left.
 */
export interface RawMapping {
  /** The mapping's address in this process. */
  readonly address: bigint;
  /** A view of [offset, offset + length) (length <= 4 GiB); EBADF once unmapped. */
  view(offset: number, length: number): Uint8Array;
}

/** A KVM_RUN in flight on its own thread. */
export interface RawRun {
  /** Settles with the ioctl's errno (0 on success) when KVM_RUN returns; read the exit from the run area. */
  done: Promise<number>;
  /** Sets immediate_exit and signals the thread: KVM_RUN returns EINTR. Idempotent. */
  kick(): void;
}

/** The syscall-shaped functions every backend provides, one per kernel call. */
export interface RawBackend {
  /** 'kvm' for the native addon, 'simulated' for the simulator. */
  readonly kind: 'kvm' | 'simulated';
  /** The host page size (sysconf(_SC_PAGESIZE)). */
  readonly pageSize: number;

  /** open(path, O_RDWR | O_CLOEXEC) */
  open(path: string): Handle;
  /** close(fd) */
  close(fd: Handle): void;
  /** KVM_GET_API_VERSION */
  getApiVersion(fd: Handle): number;
  /** KVM_CHECK_EXTENSION on /dev/kvm or on a VM */
  checkExtension(fd: Handle, cap: number): number;
  /** KVM_CREATE_VM(type) */
  createVm(fd: Handle, type: number): Handle;
  /** KVM_GET_VCPU_MMAP_SIZE */
  getVcpuMmapSize(fd: Handle): number;
  /** KVM_CREATE_VCPU(id) */
  createVcpu(vmFd: Handle, id: number): Handle;
  /** KVM_CREATE_GUEST_MEMFD; the fd is FD_CLOEXEC */
  createGuestMemfd(vmFd: Handle, size: U64, flags: U64): Handle;
  /** KVM_SET_USER_MEMORY_REGION */
  setUserMemoryRegion(vmFd: Handle, region: RawRegion): void;
  /** KVM_SET_USER_MEMORY_REGION2 */
  setUserMemoryRegion2(vmFd: Handle, region: RawRegion2): void;
  /**
   * KVM_SET_USER_MEMORY_REGION2 for each region in order, back to back (every region is read
   * first; a bad one is a TypeError or RangeError before any call). Stops at the first
   * refusal: its KvmError has `index`, and the regions before it were applied.
   */
  setUserMemoryRegions2(vmFd: Handle, regions: readonly RawRegion2[]): void;
  /** KVM_ENABLE_CAP(cap, args[0..3]) on a VM (or vCPU) fd */
  enableCap(fd: Handle, cap: number, args?: readonly U64[]): void;
  /** KVM_SET_MEMORY_ATTRIBUTES */
  setMemoryAttributes(vmFd: Handle, attributes: RawMemoryAttributes): void;
  /**
   * KVM_PRE_FAULT_MEMORY on a vCPU: the range not yet faulted in
   *
   * @property __type.gpa Where the part not yet faulted in starts.
   * @property __type.size Bytes not yet faulted in.
   */
  preFaultMemory(vcpuFd: Handle, range: RawPreFault): { gpa: bigint; size: bigint };
  /** fallocate(fd, mode, offset, length) */
  fallocate(fd: Handle, mode: number, offset: U64, length: U64): void;
  /** fstat(fd) */
  fstat(fd: Handle): RawStat;
  /** mmap(NULL, length, prot, flags, fd, offset); fd -1 with MAP_ANONYMOUS for anonymous
   * memory; MAP_FIXED is refused */
  mmap(fd: Handle, length: U64, offset: U64, prot: number, flags: number): RawMapping;
  /** munmap of what mmap() returned: detaches every view over it. Idempotent. */
  munmap(mapping: RawMapping): void;
  /** madvise(address + offset, length, advice) within a mapping (MADV_DONTNEED, MADV_REMOVE, ...) */
  madvise(mapping: RawMapping, offset: U64, length: U64, advice: number): void;
  /** memfd_create(name, MFD_CLOEXEC): shared memory that is not gmem (size 0 until ftruncate) */
  memfdCreate(name: string): Handle;
  /** ftruncate(fd, length) */
  ftruncate(fd: Handle, length: U64): void;
  /** KVM_GET_REGS: struct kvm_regs (144 bytes). */
  getRegs(vcpuFd: Handle): Uint8Array;
  /** KVM_SET_REGS */
  setRegs(vcpuFd: Handle, regs: Uint8Array): void;
  /** KVM_GET_SREGS: struct kvm_sregs (312 bytes). */
  getSregs(vcpuFd: Handle): Uint8Array;
  /** KVM_SET_SREGS */
  setSregs(vcpuFd: Handle, sregs: Uint8Array): void;
  /** KVM_RUN off the event loop; runArea is the vCPU's mmap()ed kvm_run. */
  run(vcpuFd: Handle, runArea: RawMapping): RawRun;
}

/** The names of the RawBackend's functions (for tracing and for tests that walk them). */
export const rawFunctionNames = [
  'open', 'close', 'getApiVersion', 'checkExtension', 'createVm', 'getVcpuMmapSize',
  'createVcpu', 'createGuestMemfd', 'setUserMemoryRegion', 'setUserMemoryRegion2', 'setUserMemoryRegions2',
  'enableCap', 'setMemoryAttributes', 'preFaultMemory', 'fallocate', 'fstat', 'mmap', 'munmap', 'madvise', 'memfdCreate', 'ftruncate',
  'getRegs', 'setRegs', 'getSregs', 'setSregs', 'run',
] as const satisfies readonly (keyof RawBackend)[];
