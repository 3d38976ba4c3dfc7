/**
 * What a rule says about an input, and the one place that turns a kernel refusal into an
 * explained error: every typed call that checks rules (memslots, guest_memfd creation,
 * fallocate, attributes) explains the kernel's refusals through explainRefusal().
 */
import { log } from '../base/log.js';
import { kvmError, type Conflict, type ErrnoCode, type KvmError, type Where } from '../base/errors.js';

/** A kernel rule that an input breaks: which rule, the errno code, and why in words. */
export interface Violation {
  rule: string;
  code: ErrnoCode;
  message: string;
  conflict?: Conflict;
  /** Codes other kernel versions give for the same rule (the caller cannot know which applies
   * without asking the kernel). */
  altCodes?: readonly ErrnoCode[];
  /** The answer depends on the books (the slots and bindings already there), which the typed
   * layer checks before the call so that the error names what is in the way. */
  books?: boolean;
}

export function violationError(v: Violation, where: Where, code: ErrnoCode = v.code): KvmError {
  return kvmError(code, where, v.message, { rule: v.rule, ...(v.conflict ? { conflict: v.conflict } : {}) });
}

/**
 * The kernel's refusal `e`, explained by the rule that predicted it: the rule's words and
 * conflict, the kernel's code. A refusal with a code the rule does not give is the kernel's
 * own (returned as it is; traced with NODE_DEBUG=kvm-gmem), and so is any error when no rule
 * objected. `verdict` is computed only on refusal.
 */
export function explainRefusal(e: unknown, verdict: () => Violation | undefined, where: Where): unknown {
  const code = (e as { code?: unknown })?.code;
  if (typeof code !== 'string') return e;
  const v = verdict();
  if (!v) return e;
  if (code === v.code || v.altCodes?.includes(code as ErrnoCode)) return violationError(v, where, code as ErrnoCode);
  log('rules predicted %s (%s) but the kernel said %s', v.code, v.rule, code);
  return e;
}
