/** fallocate(2) on the files the library makes: vfs_fallocate's checks, then the file's own
 * (kvm_gmem_fallocate, shmem_fallocate), in the kernel's order (docs/kernel-rules.md, fallocate). */
import { hex } from '../base/args.js';
import { Falloc, LOFF_MAX } from '../base/uapi.js';
import type { Violation } from './types.js';

/** The file fallocate acts on: a guest_memfd or a memfd (shmem) of `size` bytes, or a file
 * that is not regular (/dev/kvm, a VM or vCPU fd: anon inodes and devices). */
export type FallocateTarget = { kind: 'gmem' | 'shmem'; size: bigint } | { kind: 'not-regular' };

const FALLOC_SUPPORTED = Falloc.KEEP_SIZE | Falloc.PUNCH_HOLE | Falloc.COLLAPSE_RANGE | Falloc.ZERO_RANGE | Falloc.INSERT_RANGE | Falloc.UNSHARE_RANGE | Falloc.WRITE_ZEROES;

/** What differs between kernels: `writeZeroes` false where fallocate does not know
 * FALLOC_FL_WRITE_ZEROES (before 6.17: 6.12 answers EOPNOTSUPP for it). */
export interface FallocateHost {
  writeZeroes?: boolean | undefined;
}

/** fallocate: vfs_fallocate's checks, then kvm_gmem_fallocate's (6.18). offset/length are u64 (loff_t in the kernel). */
export function checkFallocate(mode: number, offset: bigint, length: bigint, file: FallocateTarget, pageSize: bigint, host: FallocateHost = {}): Violation | undefined {
  const off = offset > LOFF_MAX ? offset - (1n << 64n) : offset;
  const len = length > LOFF_MAX ? length - (1n << 64n) : length;
  // vfs_fallocate
  if (off < 0n || len <= 0n) return { rule: 'fallocate.range', code: 'EINVAL', message: `offset ${off} / length ${len}: offset must be >= 0 and length > 0` };
  if (mode & ~(host.writeZeroes === false ? FALLOC_SUPPORTED & ~Falloc.WRITE_ZEROES : FALLOC_SUPPORTED)) return { rule: 'fallocate.mode', code: 'EOPNOTSUPP', message: `mode ${hex(mode)} has bits fallocate does not know` };
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
