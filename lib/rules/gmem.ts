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

/** fallocate on a guest_memfd of `fileSize` bytes. offset/length are u64 (loff_t in the kernel). */
export function checkFallocate(mode: number, offset: bigint, length: bigint, fileSize: bigint, pageSize: bigint): Violation | undefined {
  const off = offset > LOFF_MAX ? offset - (1n << 64n) : offset;
  const len = length > LOFF_MAX ? length - (1n << 64n) : length;
  // vfs_fallocate
  if (off < 0n || len <= 0n) return { rule: 'fallocate.range', code: 'EINVAL', message: `offset ${off} / length ${len}: offset must be >= 0 and length > 0` };
  if (mode & ~(Falloc.KEEP_SIZE | Falloc.PUNCH_HOLE | Falloc.COLLAPSE_RANGE | Falloc.ZERO_RANGE | Falloc.INSERT_RANGE | Falloc.UNSHARE_RANGE)) {
    return { rule: 'fallocate.mode', code: 'EOPNOTSUPP', message: `mode ${hex(mode)} has unknown bits` };
  }
  if (mode & Falloc.PUNCH_HOLE && !(mode & Falloc.KEEP_SIZE)) {
    return { rule: 'fallocate.punch-keep-size', code: 'EOPNOTSUPP', message: 'FALLOC_FL_PUNCH_HOLE needs FALLOC_FL_KEEP_SIZE' };
  }
  if (off + len > LOFF_MAX) return { rule: 'fallocate.efbig', code: 'EFBIG', message: `offset + length exceeds the maximum file size` };
  // kvm_gmem_fallocate
  if (!(mode & Falloc.KEEP_SIZE)) return { rule: 'fallocate.keep-size', code: 'EOPNOTSUPP', message: 'guest_memfd cannot change size: FALLOC_FL_KEEP_SIZE is required' };
  if (mode & ~(Falloc.KEEP_SIZE | Falloc.PUNCH_HOLE)) {
    return { rule: 'fallocate.gmem-mode', code: 'EOPNOTSUPP', message: `guest_memfd supports only allocate and punch-hole (mode ${hex(mode)})` };
  }
  if (off % pageSize !== 0n || len % pageSize !== 0n) {
    return { rule: 'fallocate.align', code: 'EINVAL', message: `offset ${hex(off)} and length ${hex(len)} must be page-aligned` };
  }
  if (!(mode & Falloc.PUNCH_HOLE) && off + len > fileSize) {
    return { rule: 'fallocate.bounds', code: 'EINVAL', message: `[${hex(off)}, ${hex(off + len)}) is past the end of the file (${hex(fileSize)})` };
  }
  return undefined;
}

/** kvm_gmem_mmap, for a guest_memfd created with `gmemFlags`. */
export function checkMmap(gmemFlags: bigint, prot: number, flags: number): Violation | undefined {
  if (!(gmemFlags & GuestMemfdFlag.MMAP)) {
    return { rule: 'mmap.no-mmap-flag', code: 'ENODEV', message: 'this guest_memfd was created without GUEST_MEMFD_FLAG_MMAP' };
  }
  if ((flags & 0x03) !== MapFlag.SHARED && (flags & 0x03) !== MapFlag.SHARED_VALIDATE) {
    return { rule: 'mmap.shared', code: 'EINVAL', message: 'a guest_memfd can only be mapped MAP_SHARED' };
  }
  if (prot & 4) return { rule: 'mmap.exec', code: 'EPERM', message: 'a guest_memfd cannot be mapped executable' };
  return undefined;
}
