import { constants } from 'node:os';

/** The kernel's name for an errno value ('EINVAL'). */
export type ErrnoCode = keyof typeof constants.errno;

/** What a conflict error points at: the memslot or range in the way. */
export interface Conflict {
  /** Memslot id (bits 15:0) that already occupies the range. */
  slot?: number;
  /** Address space of that slot. */
  asId?: number;
  /** The range in the way, end exclusive (guest-physical or file offsets, see `space`). */
  start?: bigint;
  end?: bigint;
  space?: 'gpa' | 'file';
}

export interface KvmErrorInit {
  errno?: number;
  code: string;
  syscall: string;
  /** The KVM ioctl, e.g. 'KVM_SET_USER_MEMORY_REGION2'. */
  request?: string;
  /** Set when the error names what was in the way. */
  conflict?: Conflict;
  /** Which kernel rule (rules/) explains the error, when the library knows. */
  rule?: string;
  cause?: unknown;
}

/**
 * The one error class for a failed system call, thrown alike by the native addon (which is
 * handed this class at load), by the simulator and by the typed layer's pre-checks. Shaped
 * like Node's ErrnoException: `errno` (positive), `code`, `syscall`, plus the KVM `request`.
 */
export class KvmError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly syscall: string;
  readonly request: string | undefined;
  readonly conflict: Conflict | undefined;
  readonly rule: string | undefined;

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

export function errnoOf(code: string): number {
  return (constants.errno as Record<string, number>)[code] ?? 0;
}

/** A KvmError for `code` raised by the library itself (pre-check, simulator). */
export function kvmError(
  code: ErrnoCode,
  where: { syscall: string; request?: string | undefined },
  detail: string,
  extra: Partial<KvmErrorInit> = {},
): KvmError {
  const head = where.request ?? where.syscall;
  return new KvmError(`${head}: ${detail} (${code})`, {
    ...extra,
    code,
    syscall: where.syscall,
    request: where.request,
  });
}

export function isKvmError(e: unknown, code?: string): e is KvmError {
  return e instanceof KvmError && (code === undefined || e.code === code);
}
