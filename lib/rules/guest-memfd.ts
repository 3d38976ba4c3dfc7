/** KVM_CREATE_GUEST_MEMFD (kvm_gmem_create), in the kernel's order (docs/kernel-rules.md, guest_memfd). */
import { hex } from '../base/args.js';
import { LOFF_MAX } from '../base/uapi.js';
import type { Violation } from './types.js';

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
