/**
 * KVM_SET_MEMORY_ATTRIBUTES (kvm_vm_ioctl_set_mem_attributes) and KVM_PRE_FAULT_MEMORY
 * (kvm_vcpu_pre_fault_memory) argument rules, in the kernel's order (kernel-spec.md §2e-f).
 */
import { U64_MAX } from '../raw/constants.js';
import { hex } from '../u64.js';
import type { Violation } from './types.js';

/** `supported` is kvm_supported_mem_attributes(kvm): PRIVATE for private-memory VMs, else 0. */
export function checkSetMemoryAttributes(
  a: { address: bigint; size: bigint; attributes: bigint; flags: bigint },
  supported: bigint,
  pageSize: bigint,
): Violation | undefined {
  if (a.flags !== 0n) return { rule: 'attributes.flags', code: 'EINVAL', message: `flags must be 0, got ${hex(a.flags)}` };
  if (a.attributes & ~supported) {
    return { rule: 'attributes.unsupported', code: 'EINVAL', message: `attributes ${hex(a.attributes)} include bits this VM does not support (supported: ${hex(supported)})` };
  }
  if (a.size === 0n || a.address + a.size > U64_MAX) {
    return { rule: 'attributes.range', code: 'EINVAL', message: `range [${hex(a.address)}, +${hex(a.size)}) is empty or wraps` };
  }
  if (a.address % pageSize !== 0n || a.size % pageSize !== 0n) {
    return { rule: 'attributes.align', code: 'EINVAL', message: `address ${hex(a.address)} and size ${hex(a.size)} must be page-aligned` };
  }
  return undefined;
}

export function checkPreFault(r: { gpa: bigint; size: bigint; flags: bigint }, pageSize: bigint): Violation | undefined {
  if (r.flags !== 0n) return { rule: 'prefault.flags', code: 'EINVAL', message: `flags must be 0, got ${hex(r.flags)}` };
  if (r.gpa % pageSize !== 0n || r.size % pageSize !== 0n || r.size === 0n || r.gpa + r.size > U64_MAX) {
    return { rule: 'prefault.range', code: 'EINVAL', message: `range [${hex(r.gpa)}, +${hex(r.size)}) must be page-aligned, non-empty and not wrap` };
  }
  return undefined;
}
