/** mmap(2) (sys_mmap -> do_mmap -> the file's mmap, kvm_gmem_mmap for a guest_memfd), in the
 * kernel's order (docs/kernel-rules.md, mmap). */
import { hex } from '../base/args.js';
import { GuestMemfdFlag, LOFF_MAX, MapFlag, Prot } from '../base/uapi.js';
import type { Violation } from './types.js';

/** What an mmap targets: a guest_memfd (with its creation flags), a vCPU (its kvm_run
 * area), or a file without an mmap operation (/dev/kvm on devtmpfs; a VM, an anon inode on
 * a noexec mount). gmem and vCPU fds are anon inodes too: noexec. */
export type MmapTarget = { kind: 'gmem'; flags: bigint } | { kind: 'vcpu' } | { kind: 'shmem' } | { kind: 'anonymous' } | { kind: 'no-mmap'; noexec: boolean };

/** What differs between kernels: `anonInodeExec`, anon inodes (KVM's VM, vCPU and gmem fds)
 * may be mapped PROT_EXEC (6.12; later kernels mount them noexec: EPERM). */
export interface MmapHost {
  anonInodeExec?: boolean | undefined;
}

const MAP_TYPE = 0x0f;
const MAP_HUGETLB = 0x40000;
/** LEGACY_MAP_MASK: the flags MAP_SHARED_VALIDATE accepts without asking the file. */
const LEGACY_MAP_MASK = 0x01 | 0x02 | 0x10 | 0x20 | 0x0800 | 0x1000 | 0x4000000 | 0x0100 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000 | MAP_HUGETLB;

/**
 * mmap (sys_mmap -> do_mmap -> the file's mmap), in the kernel's order. `userSpan` is the
 * address space an mmap can get (TASK_SIZE less mmap_min_addr).
 */
export function checkMmapCall(length: bigint, offset: bigint, prot: number, flags: number, target: MmapTarget, pageSize: bigint, userSpan: bigint, host: MmapHost = {}): Violation | undefined {
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
  const anonInode = target.kind === 'gmem' || target.kind === 'vcpu' || (target.kind === 'no-mmap' && target.noexec);
  if (prot & Prot.EXEC && anonInode && !host.anonInodeExec) {
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
