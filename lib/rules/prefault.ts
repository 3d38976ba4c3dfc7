/** KVM_PRE_FAULT_MEMORY (kvm_vcpu_pre_fault_memory) argument rules (docs/kernel-rules.md, pre-fault). */
import { hex } from '../base/args.js';
import { U64_MAX } from '../base/uapi.js';
import type { Violation } from './types.js';

export function checkPreFault(r: { gpa: bigint; size: bigint; flags: bigint }, pageSize: bigint): Violation | undefined {
  if (r.flags !== 0n) return { rule: 'prefault.flags', code: 'EINVAL', message: `flags must be 0, got ${hex(r.flags)}` };
  if (r.gpa % pageSize !== 0n || r.size % pageSize !== 0n || r.size === 0n || r.gpa + r.size > U64_MAX) {
    return { rule: 'prefault.range', code: 'EINVAL', message: `range [${hex(r.gpa)}, +${hex(r.size)}) must be page-aligned, non-empty and not wrap` };
  }
  return undefined;
}
