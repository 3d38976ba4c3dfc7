/**
 * Kernel rules that only the raw layer can provoke (the typed API never sends such values):
 * bad fds, the bind's fget/f_op checks, VM types, vCPUs, pre-fault and gmem lifetime
 * (kernel-spec.md §2a, §2d rule 16, §2f, §2g).
 */
import { closeSync, openSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { constants, type Kvm, type raw as rawNs } from '../../lib/index.js';
import { expectCode, MiB, noGmem, open, PAGE, skipped, unavailable } from '../helpers.js';

const { MemFlag, Falloc, Cap, VmType } = constants;
type Raw = rawNs.RawBackend;

describe.skipIf(unavailable)('raw kernel rules', () => {
  let kvm: Kvm;
  let raw: Raw;
  let vm: number;
  beforeEach(() => {
    kvm = open();
    raw = kvm.raw;
    vm = raw.createVm(kvm.fd, 0);
  });
  afterEach(() => {
    raw.close(vm);
    kvm.close();
  });

  // Binding a gmem (KVM_MEM_GUEST_MEMFD) on a default VM needs guest_memfd there (noGmem).
  const gmemSlot = (fd: number, o: Partial<rawNs.RawRegion2> = {}) =>
    raw.setUserMemoryRegion2(vm, { slot: 0, flags: MemFlag.GUEST_MEMFD, guestPhysAddr: 0, memorySize: 2n * MiB, guestMemfd: fd, guestMemfdOffset: 0, ...o });

  test.skipIf(noGmem)(`guestMemfd that is not an open file: EBADF; /dev/kvm, a VM, a regular file: EINVAL${skipped(noGmem)}`, () => {
    expectCode(() => gmemSlot(99999), 'EBADF');
    expectCode(() => gmemSlot(kvm.fd), 'EINVAL');
    expectCode(() => gmemSlot(vm), 'EINVAL');
    const file = path.join(tmpdir(), `kvm-gmem-${process.pid}`);
    const fd = openSync(file, 'w+');
    try {
      expectCode(() => gmemSlot(fd), 'EINVAL');
    } finally {
      closeSync(fd);
    }
  });

  test.skipIf(noGmem)(`GPA overlap is checked before the gmem fd: EEXIST even with a bad fd${skipped(noGmem)}`, () => {
    const g = raw.createGuestMemfd(vm, 4n * MiB, 0);
    try {
      gmemSlot(g);
      expectCode(() => gmemSlot(99999, { slot: 1 }), 'EEXIST');
      // deleting needs no valid fd
      raw.setUserMemoryRegion2(vm, { slot: 0, flags: MemFlag.GUEST_MEMFD, guestPhysAddr: 0, memorySize: 0, guestMemfd: 99999 });
    } finally {
      raw.close(g);
    }
  });

  test.skipIf(noGmem)(`a slot survives its gmem fd being closed, and can still be deleted; a closed fd number cannot be bound${skipped(noGmem)}`, () => {
    const g = raw.createGuestMemfd(vm, 2n * MiB, 0);
    gmemSlot(g);
    raw.close(g);
    expectCode(() => gmemSlot(g, { slot: 1, guestPhysAddr: 4n * MiB }), 'EBADF');
    raw.setUserMemoryRegion2(vm, { slot: 0, guestPhysAddr: 0, memorySize: 0 });
  });

  test.skipIf(noGmem)(`a gmem keeps its VM alive: after the VM fd closes, fallocate still works${skipped(noGmem)}`, () => {
    const v2 = raw.createVm(kvm.fd, 0);
    const g = raw.createGuestMemfd(v2, 2n * MiB, 0);
    raw.setUserMemoryRegion2(v2, { slot: 0, flags: MemFlag.GUEST_MEMFD, guestPhysAddr: 0, memorySize: 2n * MiB, guestMemfd: g });
    raw.close(v2);
    raw.fallocate(g, Falloc.KEEP_SIZE, 0, 2n * MiB);
    raw.fallocate(g, Falloc.KEEP_SIZE | Falloc.PUNCH_HOLE, 0, 2n * MiB);
    raw.close(g);
  });

  test('KVM_CREATE_VM: each type is created exactly when KVM_CAP_VM_TYPES has it', () => {
    const mask = raw.checkExtension(kvm.fd, Cap.VM_TYPES) || 1;
    for (const type of [...Object.values(VmType), 6]) {
      if (mask & (1 << type)) raw.close(raw.createVm(kvm.fd, type));
      else expectCode(() => raw.createVm(kvm.fd, type), 'EINVAL');
    }
    expect(kvm.capabilities().vmTypes).toContain('default');
  });

  test('KVM_CREATE_VCPU: a second vCPU with the same id is EEXIST; the run area has a size', () => {
    expect(raw.getVcpuMmapSize(kvm.fd)).toBeGreaterThanOrEqual(kvm.pageSize);
    using v = kvm.createVm();
    using cpu = v.createVcpu(0);
    expect(cpu.id).toBe(0);
    expectCode(() => v.createVcpu(0), 'EEXIST');
  });

  test('KVM_PRE_FAULT_MEMORY: bad flags, alignment, empty or wrapping range: EINVAL; else as the capability says', () => {
    const cpu = raw.createVcpu(vm, 0);
    try {
      expectCode(() => raw.preFaultMemory(cpu, { gpa: 0, size: PAGE, flags: 1 }), 'EINVAL');
      expectCode(() => raw.preFaultMemory(cpu, { gpa: 1, size: PAGE }), 'EINVAL');
      expectCode(() => raw.preFaultMemory(cpu, { gpa: 0, size: 1 }), 'EINVAL');
      expectCode(() => raw.preFaultMemory(cpu, { gpa: 0, size: 0 }), 'EINVAL');
      expectCode(() => raw.preFaultMemory(cpu, { gpa: (1n << 64n) - PAGE, size: 2n * PAGE }), 'EINVAL');
      if (!raw.checkExtension(vm, Cap.PRE_FAULT_MEMORY)) {
        // (With no memslot at all, this 6.18 PVM host answers ENOSPC before reaching that.)
        const g = raw.createGuestMemfd(vm, 2n * MiB, 0);
        gmemSlot(g);
        expectCode(() => raw.preFaultMemory(cpu, { gpa: 0, size: PAGE }), 'EOPNOTSUPP');
        raw.setUserMemoryRegion2(vm, { slot: 0, guestPhysAddr: 0, memorySize: 0 });
        raw.close(g);
      }
    } finally {
      raw.close(cpu);
    }
  });

  test('KVM_PRE_FAULT_MEMORY after a memslot deletion: the kernel answers (ENOENT), or, where it loops on the stale MMU root (6.12), the watchdog interrupts it (EINTR) and the profile says so', (ctx) => {
    if (!raw.checkExtension(vm, Cap.PRE_FAULT_MEMORY)) return ctx.skip('requires KVM_CAP_PRE_FAULT_MEMORY');
    const loops = kvm.profile().preFaultStaleRoot === 'loops';
    raw.setUserMemoryRegion(vm, { slot: 0, guestPhysAddr: 0n, memorySize: PAGE, userspaceAddr: 0n });
    const cpu = raw.createVcpu(vm, 0);
    try {
      expectCode(() => raw.preFaultMemory(cpu, { gpa: MiB, size: PAGE }), 'ENOENT'); // (the vCPU's root is loaded)
      raw.setUserMemoryRegion(vm, { slot: 0, guestPhysAddr: 0n, memorySize: 0n });
      const t0 = performance.now();
      expectCode(() => raw.preFaultMemory(cpu, { gpa: MiB, size: PAGE, watchdogMs: 500 }), loops ? 'EINTR' : 'ENOENT');
      // Interrupted, not blocked: within the watchdog plus slack for an emulated host.
      expect(performance.now() - t0).toBeLessThan(30_000);
      // The typed layer says what happened.
      if (loops && kvm.backend === 'kvm') {
        using v = kvm.createVm();
        using shared = v.createSharedMemory({ size: PAGE });
        const s = v.memslots.add({ guestPhysAddr: 0n, size: PAGE, userspace: shared });
        using c = v.createVcpu(0);
        c.preFaultMemory(0n, PAGE);
        s.delete();
        expect(() => c.preFaultMemory(0n, PAGE)).toThrow(/no page mapped within the raw layer's watchdog \(EINTR\).*until vCPU 0 runs/);
      }
    } finally {
      raw.close(cpu);
    }
  });

  test('KVM_SET_MEMORY_ATTRIBUTES without the capability: ENOTTY whatever the arguments', (ctx) => {
    ctx.skip(raw.checkExtension(kvm.fd, Cap.MEMORY_ATTRIBUTES) !== 0, 'host has memory attributes');
    expectCode(() => raw.setMemoryAttributes(vm, { address: 0, size: PAGE, attributes: 8 }), 'ENOTTY');
    expectCode(() => raw.setMemoryAttributes(vm, { address: 1, size: 0, attributes: 0, flags: 1 }), 'ENOTTY');
  });

  test('KVM_GET_API_VERSION is 12; KVM_CHECK_EXTENSION answers on /dev/kvm and on the VM', () => {
    expect(kvm.apiVersion).toBe(12);
    expect(raw.checkExtension(kvm.fd, Cap.GUEST_MEMFD)).toBe(1);
    expect(raw.checkExtension(vm, Cap.NR_MEMSLOTS)).toBe(constants.KVM_USER_MEM_SLOTS);
    expect(raw.checkExtension(kvm.fd, 245)).toBe(0); // a post-6.18 capability
    expectCode(() => raw.checkExtension(99999, Cap.GUEST_MEMFD), 'EBADF');
  });
});
