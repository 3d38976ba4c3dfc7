/**
 * The one error class for a failed system call, its errno codes, and the library's own
 * refusals. Errno values are Linux's (x86-64), wherever the library runs: the simulator on
 * macOS answers with Linux's numbers, as the kernel it simulates would.
 */

/** Linux's errno values (include/uapi/asm-generic/errno-base.h, errno.h). */
export const LINUX_ERRNO = {
  EPERM: 1, ENOENT: 2, ESRCH: 3, EINTR: 4, EIO: 5, ENXIO: 6, E2BIG: 7, ENOEXEC: 8, EBADF: 9, ECHILD: 10,
  EAGAIN: 11, ENOMEM: 12, EACCES: 13, EFAULT: 14, ENOTBLK: 15, EBUSY: 16, EEXIST: 17, EXDEV: 18, ENODEV: 19,
  ENOTDIR: 20, EISDIR: 21, EINVAL: 22, ENFILE: 23, EMFILE: 24, ENOTTY: 25, ETXTBSY: 26, EFBIG: 27, ENOSPC: 28,
  ESPIPE: 29, EROFS: 30, EMLINK: 31, EPIPE: 32, EDOM: 33, ERANGE: 34, EDEADLK: 35, ENAMETOOLONG: 36, ENOLCK: 37,
  ENOSYS: 38, ENOTEMPTY: 39, ELOOP: 40, ENOMSG: 42, EIDRM: 43, ENODATA: 61, ETIME: 62, EPROTO: 71, EBADMSG: 74,
  EOVERFLOW: 75, ELIBACC: 79, EILSEQ: 84, ENOTSOCK: 88, EMSGSIZE: 90, EOPNOTSUPP: 95, EADDRINUSE: 98, ENOBUFS: 105,
  ENOTCONN: 107, ETIMEDOUT: 110, ECONNREFUSED: 111, EALREADY: 114, EINPROGRESS: 115, ESTALE: 116,
  EDQUOT: 122, ECANCELED: 125, EOWNERDEAD: 130, ENOTRECOVERABLE: 131, EHWPOISON: 133,
} as const;

/** The kernel's name for an errno value ('EINVAL'). */
export type ErrnoCode = keyof typeof LINUX_ERRNO;

const CODES = new Map<number, string>(Object.entries(LINUX_ERRNO).map(([k, v]) => [v, k]));

/** What a conflict error points at: the memslot or range in the way. */
export interface Conflict {
  /** Memslot id (bits 15:0) that already occupies the range. */
  slot?: number;
  /** Address space of that slot. */
  asId?: number;
  /** The range in the way, end exclusive (guest-physical or file offsets, see `space`). */
  start?: bigint;
  /** End of the range in the way (exclusive). */
  end?: bigint;
  /** What `start` and `end` count: guest-physical addresses ('gpa') or guest_memfd file
   * offsets ('file'), in bytes. */
  space?: 'gpa' | 'file';
}

/** The fields of a KvmError, as its constructor takes them. */
export interface KvmErrorInit {
  /** The errno value (Linux's); derived from `code` when omitted. */
  errno?: number;
  /** The errno's name, e.g. 'EINVAL'. */
  code: string;
  /** The system call that failed, e.g. 'ioctl', 'mmap', 'fallocate'. */
  syscall: string;
  /** The KVM ioctl, e.g. 'KVM_SET_USER_MEMORY_REGION2'. */
  request?: string | undefined;
  /** Set when the error names what was in the way. */
  conflict?: Conflict | undefined;
  /** Which kernel rule (rules/) explains the error, when the library knows. */
  rule?: string | undefined;
  /** The error this one explains (Error's `cause`). */
  cause?: unknown;
}

/**
 * A failed system call, thrown alike by the native addon (which is handed this class at
 * load), by the simulator and by the typed layer's pre-checks. Shaped like Node's
 * ErrnoException: `errno` (positive), `code`, `syscall`, plus the KVM `request`, and, where
 * the library knows, the `rule` the kernel applied and the `conflict` in the way.
 */
export class KvmError extends Error {
  /** Linux's errno value, positive (22 for EINVAL); 0 for a code it does not know. */
  readonly errno: number;
  /** The errno's name, e.g. 'EINVAL'. */
  readonly code: string;
  /** The system call that failed, e.g. 'ioctl', 'mmap', 'fallocate'. */
  readonly syscall: string;
  /** The KVM ioctl, e.g. 'KVM_SET_USER_MEMORY_REGION2'; undefined for other calls. */
  readonly request: string | undefined;
  /** The memslot or range in the way, when the error is a conflict the library named. */
  readonly conflict: Conflict | undefined;
  /** The kernel rule (lib/rules/, e.g. 'gmem.size') that explains the error, when known. */
  readonly rule: string | undefined;

  /** Makes the error; `errno` is derived from `code` when `init` has none. */
  constructor(message: string, init: KvmErrorInit) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'KvmError';
    this.code = init.code;
    this.errno = init.errno ?? errnoOf(init.code);
    this.syscall = init.syscall;
    this.request = init.request;
    this.conflict = init.conflict;
    this.rule = init.rule;
  }
}

/** Linux's errno value of `code` (0 when unknown). */
export function errnoOf(code: string): number {
  return (LINUX_ERRNO as Record<string, number>)[code] ?? 0;
}

/** The code of a Linux errno value ('E<n>' when unknown). */
export function codeOf(errno: number): string {
  return CODES.get(errno) ?? `E${errno}`;
}

/** Where a call failed: the syscall and the KVM ioctl. */
export interface Where {
  syscall: string;
  request?: string | undefined;
}

/** A KvmError for `code` raised by the library itself (pre-check, simulator). */
export function kvmError(code: ErrnoCode, where: Where, detail: string, extra: Partial<KvmErrorInit> = {}): KvmError {
  const head = where.request ?? where.syscall;
  return new KvmError(`${head}: ${detail} (${code})`, {
    ...extra,
    code,
    syscall: where.syscall,
    request: where.request,
  });
}

/** Whether `e` is a KvmError, and, when `code` is given, one with that code ('EINVAL'). */
export function isKvmError(e: unknown, code?: string): e is KvmError {
  return e instanceof KvmError && (code === undefined || e.code === code);
}
