/**
 * Private memory (KVM_X86_SW_PROTECTED_VM): memory attributes, conversions both ways, host
 * access refused on private pages, and the kernel's errno for bad arguments (kernel-spec.md
 * §2e-f; private_mem_conversions_test.c, pre_fault_memory_test.c). Runs where the backend
 * offers that VM type: the simulator's default profile; skipped (with the reason) on a host
 * without it, such as this project's PVM host.
 */
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { constants, type ConvertEvent, type Kvm, type Vm } from '../../lib/index.js';
import { expectCode, GiB, MiB, open, PAGE, unavailable } from '../helpers.js';

const PRIVATE = constants.MemoryAttribute.PRIVATE;

function hostHas(type: string): string | undefined {
  if (unavailable) return unavailable;
  using kvm = open();
  return kvm.capabilities().vmTypes.includes(type as never) ? undefined : `the host lacks KVM_X86_SW_PROTECTED_VM`;
}
const missing = hostHas('sw-protected');

describe.skipIf(missing)(`private memory (${missing ?? 'sw-protected VM'})`, () => {
  let kvm: Kvm;
  let vm: Vm;
  beforeEach(() => {
    kvm = open();
    vm = kvm.createVm({ type: 'sw-protected' });
  });
  afterEach(() => {
    vm.close();
    kvm.close();
  });

  test('capabilities on the VM: PRIVATE attribute; guest_memfd may be mmap-able but not initShared', () => {
    const c = vm.capabilities();
    expect(c.memoryAttributes).toBe(PRIVATE);
    expect(c.privateMemory).toBe(true);
    expect(c.guestMemfdFlags).toMatchObject({ mmap: true, initShared: false });
    expectCode(() => vm.createGuestMemfd({ size: MiB, mmap: true, initShared: true }), 'EINVAL');
    vm.createGuestMemfd({ size: MiB, mmap: true }).close();
  });

  test('conversions both ways; adjacent equal ranges merge; events carry what changed', () => {
    const events: ConvertEvent[] = [];
    vm.on('convert', (e: ConvertEvent) => events.push(e));
    vm.setPrivate(0n, 2n * MiB);
    vm.setPrivate(2n * MiB, 2n * MiB);
    expect(vm.attributes.ranges()).toEqual([{ start: 0n, end: 4n * MiB, attributes: PRIVATE }]);
    expect(vm.attributes.count).toBe(1);
    vm.setShared(MiB, PAGE);
    expect(vm.attributes.ranges()).toEqual([
      { start: 0n, end: MiB, attributes: PRIVATE },
      { start: MiB + PAGE, end: 4n * MiB, attributes: PRIVATE },
    ]);
    expect(vm.attributes.isPrivate(MiB)).toBe(false);
    expect(vm.attributes.isPrivate(MiB + PAGE)).toBe(true);
    vm.setShared(0n, 4n * MiB);
    expect(vm.attributes.ranges()).toEqual([]);
    expect(events.map((e) => e.changed)).toEqual([
      [{ start: 0n, end: 2n * MiB, from: 0n }],
      [{ start: 2n * MiB, end: 4n * MiB, from: 0n }],
      [{ start: MiB, end: MiB + PAGE, from: PRIVATE }],
      [{ start: 0n, end: MiB, from: PRIVATE }, { start: MiB + PAGE, end: 4n * MiB, from: PRIVATE }],
    ]);
    vm.setShared(0n, 4n * MiB); // no change: no event
    expect(events).toHaveLength(4);
  });

  test('a terabyte set private is one range', () => {
    vm.setPrivate(0n, 1n << 40n);
    expect(vm.attributes.count).toBe(1);
    expect(vm.attributes.get((1n << 40n) - 1n)).toBe(PRIVATE);
    expect(vm.attributes.get(1n << 40n)).toBe(0n);
  });

  test('bad alignment, flags, unsupported bits, empty or wrapping ranges: EINVAL, books unchanged', () => {
    vm.setPrivate(GiB, PAGE);
    const before = vm.attributes.ranges();
    expectCode(() => vm.setPrivate(1n, PAGE), 'EINVAL');
    expectCode(() => vm.setPrivate(0n, PAGE + 1n), 'EINVAL');
    expectCode(() => vm.setPrivate(0n, 0n), 'EINVAL');
    expectCode(() => vm.setPrivate((1n << 64n) - PAGE, 2n * PAGE), 'EINVAL');
    for (const bits of [1n, 1n << 4n, PRIVATE | 1n, 1n << 63n]) expectCode(() => vm.setMemoryAttributes(0n, PAGE, bits), 'EINVAL');
    expectCode(() => kvm.raw.setMemoryAttributes(vm.fd, { address: 0, size: PAGE, attributes: PRIVATE, flags: 1 }), 'EINVAL');
    expect(vm.attributes.ranges()).toEqual(before);
  });

  test('a default VM on the same host has the ioctl but no attributes: PRIVATE is EINVAL, 0 is fine', () => {
    using plain = kvm.createVm();
    expect(plain.capabilities().memoryAttributes).toBe(0n);
    expectCode(() => plain.setPrivate(0n, PAGE), 'EINVAL');
    plain.setShared(0n, PAGE);
    expect(plain.attributes.ranges()).toEqual([]);
  });

  test('host access to private pages is refused; converted back, it works again', () => {
    // Shared memory for a plain slot: a host-accessible gmem of a default VM, mapped.
    using other = kvm.createVm();
    using backing = other.createGuestMemfd({ size: 2n * MiB, mmap: true, initShared: true });
    using map = backing.map();
    using slot = vm.memslots.add({ guestPhysAddr: GiB, size: 2n * MiB, userspace: map });
    vm.memory.write(GiB + PAGE, Uint8Array.of(7));
    vm.setPrivate(GiB, 2n * PAGE);
    const e = expectCode(() => vm.memory.read(GiB + PAGE, 1), 'EFAULT');
    expect(e.message).toMatch(/private/);
    expectCode(() => vm.memory.write(GiB, Uint8Array.of(1)), 'EFAULT');
    expect([...vm.memory.read(GiB + 2n * PAGE, 1)]).toEqual([0]); // the next page is shared
    vm.setShared(GiB, 2n * PAGE);
    expect([...vm.memory.read(GiB + PAGE, 1)]).toEqual([7]);
    expect(slot.deleted).toBe(false);
  });

  test('a gmem of a private-memory VM is never host-accessible', () => {
    using g = vm.createGuestMemfd({ size: 2n * MiB, mmap: true });
    expectCode(() => g.map(), 'EFAULT');
    using s = vm.memslots.add({ guestPhysAddr: 0n, size: 2n * MiB, guestMemfd: g });
    expect(s.userspaceAddr).toBe(0n);
  });

  test('pre-fault: mapped ranges, a range past the slot, no slot, private without gmem', (ctx) => {
    ctx.skip(!vm.capabilities().preFaultMemory, 'the host cannot pre-fault (KVM_CAP_PRE_FAULT_MEMORY is 0)');
    // pre_fault_memory_test.c: a slot of 2 MiB + 4 KiB, all private
    using g = vm.createGuestMemfd({ size: 2n * MiB + PAGE });
    using s = vm.memslots.add({ guestPhysAddr: 4n * GiB, size: 2n * MiB + PAGE, guestMemfd: g });
    using cpu = vm.createVcpu(0);
    const base = 4n * GiB;
    // Shared pages of a gmem slot come from its host memory; this slot has none.
    expectCode(() => cpu.preFaultMemory(base, PAGE), 'EFAULT');
    vm.setPrivate(base, 2n * MiB + PAGE);
    expect(cpu.preFaultMemory(base, 2n * MiB).size).toBe(0n);
    expect(cpu.preFaultMemory(base + 2n * MiB, 2n * PAGE).size).toBe(PAGE); // the second page has no slot
    expectCode(() => cpu.preFaultMemory(base + 2n * MiB + PAGE, PAGE), 'ENOENT');
    // private memory in a plain slot cannot be faulted in
    using other = kvm.createVm();
    using backing = other.createGuestMemfd({ size: 2n * MiB, mmap: true, initShared: true });
    using map = backing.map();
    using plain = vm.memslots.add({ guestPhysAddr: 0n, size: 2n * MiB, userspace: map });
    vm.setPrivate(0n, PAGE);
    expectCode(() => cpu.preFaultMemory(0n, PAGE), 'EFAULT');
    expect(s.deleted || plain.deleted).toBe(false);
  });
});
