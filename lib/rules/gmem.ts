/**
 * guest_memfd rules: KVM_CREATE_GUEST_MEMFD (kvm_gmem_create), fallocate (vfs_fallocate then
 * kvm_gmem_fallocate) and mmap (kvm_gmem_mmap), in the kernel's order (kernel-spec.md §2a-c).
 */
import { Falloc, GuestMemfdFlag, Map as MapFlag } from '../raw/constants.js';
import { hex } from '../u64.js';
import type { Violation } from './types.js';

const LOFF_MAX = (1n << 63n) - 1n;

/** kvm_gmem_create: `supportedFlags` is KVM_CAP_GUEST_MEMFD_FLAGS of this VM. */
export function checkCreateGuestMemfd(size: bigint, flags: bigint, supportedFlags: bigint, pageSize: bigint): Violation | undefined {
  if (flags & ~supportedFlags) {
    return { rule: 'gmem.flags', code: 'EINVAL', message: `flags ${hex(flags)} include bits this VM does not support (supported: ${hex(supportedFlags)})` };
  }
  // size is a signed loff_t in the kernel: >= 2^63 is negative.
  if (size === 0n || size > LOFF_MAX || size % pageSize !== 0n) {
    return { rule: 'gmem.size', code: 'EINVAL', message: `size ${hex(size)} must be a positive multiple of the page size` };
  }
  return undefined;
}

/** The file fallocate acts on: a guest_memfd or a memfd (shmem) of `size` bytes, or a file
 * that is not regular (/dev/kvm, a VM or vCPU fd: anon inodes and devices). */
export type FallocateTarget = { kind: 'gmem' | 'shmem'; size: bigint } | { kind: 'not-regular' };

const FALLOC_SUPPORTED = Falloc.KEEP_SIZE | Falloc.PUNCH_HOLE | Falloc.COLLAPSE_RANGE | Falloc.ZERO_RANGE | Falloc.INSERT_RANGE | Falloc.UNSHARE_RANGE | Falloc.WRITE_ZEROES;

/** fallocate: vfs_fallocate's checks, then kvm_gmem_fallocate's (6.18). offset/length are u64 (loff_t in the kernel). */
export function checkFallocate(mode: number, offset: bigint, length: bigint, file: FallocateTarget, pageSize: bigint): Violation | undefined {
  const off = offset > LOFF_MAX ? offset - (1n << 64n) : offset;
  const len = length > LOFF_MAX ? length - (1n << 64n) : length;
  // vfs_fallocate
  if (off < 0n || len <= 0n) return { rule: 'fallocate.range', code: 'EINVAL', message: `offset ${off} / length ${len}: offset must be >= 0 and length > 0` };
  if (mode & ~FALLOC_SUPPORTED) return { rule: 'fallocate.mode', code: 'EOPNOTSUPP', message: `mode ${hex(mode)} has bits fallocate does not know` };
  const op = mode & ~Falloc.KEEP_SIZE;
  const keep = (mode & Falloc.KEEP_SIZE) !== 0;
  if (op & (op - 1)) return { rule: 'fallocate.mode', code: 'EOPNOTSUPP', message: `mode ${hex(mode)} combines operations` };
  if (op === Falloc.PUNCH_HOLE && !keep) return { rule: 'fallocate.punch-keep-size', code: 'EOPNOTSUPP', message: 'FALLOC_FL_PUNCH_HOLE needs FALLOC_FL_KEEP_SIZE' };
  if ((op === Falloc.COLLAPSE_RANGE || op === Falloc.INSERT_RANGE || op === Falloc.WRITE_ZEROES) && keep) {
    return { rule: 'fallocate.mode', code: 'EOPNOTSUPP', message: `mode ${hex(mode)} cannot keep the size` };
  }
  if (file.kind === 'not-regular') return { rule: 'fallocate.not-regular', code: 'ENODEV', message: 'fallocate needs a regular file' };
  if (off + len > LOFF_MAX) return { rule: 'fallocate.efbig', code: 'EFBIG', message: `offset + length exceeds the maximum file size` };
  if (file.kind === 'shmem') {
    // shmem_fallocate: allocate and punch-hole only.
    if (op !== 0 && op !== Falloc.PUNCH_HOLE) return { rule: 'fallocate.shmem-mode', code: 'EOPNOTSUPP', message: `shared memory supports only allocate and punch-hole (mode ${hex(mode)})` };
    return undefined;
  }
  // kvm_gmem_fallocate
  if (!keep) return { rule: 'fallocate.keep-size', code: 'EOPNOTSUPP', message: 'guest_memfd cannot change size: FALLOC_FL_KEEP_SIZE is required' };
  if (op !== 0 && op !== Falloc.PUNCH_HOLE) {
    return { rule: 'fallocate.gmem-mode', code: 'EOPNOTSUPP', message: `guest_memfd supports only allocate and punch-hole (mode ${hex(mode)})` };
  }
  if (off % pageSize !== 0n || len % pageSize !== 0n) {
    return { rule: 'fallocate.align', code: 'EINVAL', message: `offset ${hex(off)} and length ${hex(len)} must be page-aligned` };
  }
  if (op === 0 && off + len > file.size) {
    return { rule: 'fallocate.bounds', code: 'EINVAL', message: `[${hex(off)}, ${hex(off + len)}) is past the end of the file (${hex(file.size)})` };
  }
  return undefined;
}

/** What an mmap targets: a guest_memfd (with its creation flags), a vCPU (its kvm_run
 * area), or a file without an mmap operation (/dev/kvm on devtmpfs; a VM, an anon inode on
 * a noexec mount). gmem and vCPU fds are anon inodes too: noexec. */
export type MmapTarget = { kind: 'gmem'; flags: bigint } | { kind: 'vcpu' } | { kind: 'shmem' } | { kind: 'anonymous' } | { kind: 'no-mmap'; noexec: boolean };

const MAP_TYPE = 0x0f;
const MAP_HUGETLB = 0x40000;
/** LEGACY_MAP_MASK: the flags MAP_SHARED_VALIDATE accepts without asking the file. */
const LEGACY_MAP_MASK = 0x01 | 0x02 | 0x10 | 0x20 | 0x0800 | 0x1000 | 0x4000000 | 0x0100 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000 | MAP_HUGETLB;

/**
 * mmap (sys_mmap -> do_mmap -> the file's mmap), in the kernel's order. `userSpan` is the
 * address space an mmap can get (TASK_SIZE less mmap_min_addr).
 */
export function checkMmapCall(length: bigint, offset: bigint, prot: number, flags: number, target: MmapTarget, pageSize: bigint, userSpan: bigint): Violation | undefined {
  const fail = (rule: string, code: Violation['code'], message: string): Violation => ({ rule: `mmap.${rule}`, code, message });
  if (offset % pageSize !== 0n) return fail('offset-align', 'EINVAL', `offset ${hex(offset)} is not page-aligned`);
  if (flags & MAP_HUGETLB) return fail('hugetlb', 'EINVAL', 'MAP_HUGETLB needs a hugetlbfs file');
  if (length === 0n) return fail('length', 'EINVAL', 'length is 0');
  const span = ((length + pageSize - 1n) / pageSize) * pageSize;
  if (span >= 1n << 64n) return fail('length', 'ENOMEM', 'length wraps');
  const pgoff = offset / pageSize;
  if (pgoff + span / pageSize >= 1n << 64n) return fail('pgoff', 'EOVERFLOW', 'offset + length wraps');
  if (span > userSpan) return fail('no-room', 'ENOMEM', `no ${hex(span)} bytes of address space`);
  const maxSize = target.kind === 'gmem' ? LOFF_MAX : (1n << 64n) - 1n; // file_mmap_size_max
  if (span > maxSize || pgoff > (maxSize - span) / pageSize) return fail('size', 'EOVERFLOW', 'offset + length beyond the largest file offset');
  const type = flags & MAP_TYPE;
  if (type !== MapFlag.SHARED && type !== MapFlag.PRIVATE && type !== MapFlag.SHARED_VALIDATE) return fail('type', 'EINVAL', `map type ${hex(type)} is not MAP_SHARED or MAP_PRIVATE`);
  if (type === MapFlag.SHARED_VALIDATE && flags & ~LEGACY_MAP_MASK) return fail('validate', 'EOPNOTSUPP', `flags ${hex(flags & ~LEGACY_MAP_MASK)} are not supported by this file`);
  if (prot & 4 && (target.kind === 'gmem' || target.kind === 'vcpu' || (target.kind === 'no-mmap' && target.noexec))) {
    return fail('exec', 'EPERM', 'the file is on a noexec mount: no PROT_EXEC');
  }
  if (target.kind === 'no-mmap') return fail('no-mmap', 'ENODEV', 'this file cannot be mapped');
  if (target.kind === 'gmem') return checkMmap(target.flags, flags);
  return undefined;
}

/** kvm_gmem_mmap's own checks, for a guest_memfd created with `gmemFlags`. */
export function checkMmap(gmemFlags: bigint, flags: number): Violation | undefined {
  if (!(gmemFlags & GuestMemfdFlag.MMAP)) {
    return { rule: 'mmap.no-mmap-flag', code: 'ENODEV', message: 'this guest_memfd was created without GUEST_MEMFD_FLAG_MMAP' };
  }
  if ((flags & 0x03) !== MapFlag.SHARED && (flags & 0x03) !== MapFlag.SHARED_VALIDATE) {
    return { rule: 'mmap.shared', code: 'EINVAL', message: 'a guest_memfd can only be mapped MAP_SHARED' };
  }
  return undefined;
}
