/**
 * Kernel-version orderings the simulator takes from a profile, checked against what each
 * kernel answered in the lab (profiles/*.json are measured there).
 */
import { describe, expect, test } from 'vitest';
import { openKvm, raw } from '../../lib/index.js';

const PAGE = 4096n;

describe('a guest_memfd slot past the MMU reach, over a bound file range', () => {
  // The file range is bound by slot 0; the new slot also ends past kvm_mmu_max_gfn (40-bit
  // guest-physical addresses on the lab's CPU). 7.2 binds first (EEXIST); 7.3 checks the
  // range first (EINVAL); with a bad fd, both look at the fd before the range (EBADF).
  test.each([
    ['debian-7.2', 'EEXIST', 'EBADF'],
    ['debian-7.3', 'EINVAL', 'EBADF'],
  ])('%s: %s (bound range), %s (fd not open)', (profile, boundCode, badFdCode) => {
    using kvm = openKvm({ backend: 'simulated', profile, precheck: false });
    using vm = kvm.createVm();
    const g = vm.createGuestMemfd({ size: 4n * PAGE });
    vm.memslots.add({ slot: 0, guestPhysAddr: 0n, size: PAGE, guestMemfd: g });
    const beyond = (1n << 40n) - PAGE;
    const bind = (guestMemfd: number) => () =>
      kvm.raw.setUserMemoryRegion2(vm.fd, { slot: 1, flags: raw.MemFlag.GUEST_MEMFD, guestPhysAddr: beyond, memorySize: 2n * PAGE, guestMemfd, guestMemfdOffset: 0n });
    expect(bind(g.fd)).toThrow(expect.objectContaining({ code: boundCode }));
    expect(bind(0x7fffffff)).toThrow(expect.objectContaining({ code: badFdCode }));
  });
});
