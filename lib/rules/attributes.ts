/** KVM_SET_MEMORY_ATTRIBUTES (kvm_vm_ioctl_set_mem_attributes) argument rules, in the kernel's
 * order (docs/kernel-rules.md, memory attributes). */
import { hex } from '../base/args.js';
import { U64_MAX } from '../base/uapi.js';
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
