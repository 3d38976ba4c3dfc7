import { kvmError, type Conflict, type ErrnoCode, type KvmError } from '../errors.js';

/** A kernel rule that an input breaks: which rule, the errno code, and why in words. */
export interface Violation {
  rule: string;
  code: ErrnoCode;
  message: string;
  conflict?: Conflict;
}

export function violationError(v: Violation, where: { syscall: string; request?: string }): KvmError {
  return kvmError(v.code, where, v.message, { rule: v.rule, ...(v.conflict ? { conflict: v.conflict } : {}) });
}
