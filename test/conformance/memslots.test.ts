/**
 * KVM_SET_USER_MEMORY_REGION2 through vm.memslots, asserting the kernel's code
 * (docs/kernel-rules.md, memslots; set_memory_region_test.c). Every case runs twice: with the typed
 * layer's pre-checks (the error names the slot in the way) and without them (the backend
 * alone answers), and both must give the same code.
 */
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { constants, type GuestMemfd, type Kvm, type Vm } from '../../lib/index.js';
import { expectCode, GiB, MiB, noGmem, noSharedGmem, open, PAGE, skipped, unavailable } from '../helpers.js';

const { MemFlag } = constants;

describe.skipIf(unavailable).each([true, false])(`memslots (precheck %s)`, (precheck) => {
  let kvm: Kvm;
  let vm: Vm;
  let gmem: GuestMemfd;
  beforeEach(() => {
    kvm = open({ precheck });
    vm = kvm.createVm();
    // The gmem most cases bind (host-accessible: mmap + initShared), where a default VM has one.
    if (!noSharedGmem) gmem = vm.createGuestMemfd({ size: 16n * MiB, mmap: true, initShared: true });
  });
  afterEach(() => {
    vm.close();
    kvm.close();
  });

  // Cases that bind `gmem` need host-accessible gmems on a default VM; cases that bind a gmem
  // of their own without host access need guest_memfd there; the rest run everywhere.
  const add = (o: Partial<Parameters<Vm['memslots']['add']>[0]> = {}) =>
    vm.memslots.add({ guestPhysAddr: 0n, size: 2n * MiB, guestMemfd: gmem, guestMemfdOffset: 0n, ...o });

  test.skipIf(noSharedGmem)(`a gmem slot binds; find and translate see it${skipped(noSharedGmem)}`, () => {
    const s = add({ guestPhysAddr: GiB, guestMemfdOffset: 4n * MiB });
    expect(s.id).toBe(0);
    expect(vm.memslots.find(GiB + 5n)).toBe(s);
    expect(vm.memslots.find(GiB - 1n)).toBeUndefined();
    expect(vm.memslots.find(GiB + 2n * MiB)).toBeUndefined();
    const t = vm.memslots.translate(GiB + 0x1234n)!;
    expect(t.slot).toBe(s);
    expect(t.guestMemfd).toBe(gmem);
    expect(t.offset).toBe(4n * MiB + 0x1234n);
    expect(vm.memslots.reverse(gmem, 4n * MiB + 0x1234n)).toEqual({ slot: s, gpa: GiB + 0x1234n });
  });

  test.skipIf(noSharedGmem)(`alignment: size, guest address, gmem offset not page-aligned: EINVAL${skipped(noSharedGmem)}`, () => {
    expectCode(() => add({ size: 2n * MiB + 1n }), 'EINVAL');
    expectCode(() => add({ guestPhysAddr: 0x1001n }), 'EINVAL');
    for (const off of [1n, 100n, PAGE - 1n]) expectCode(() => add({ guestMemfdOffset: off }), 'EINVAL');
    expect(vm.memslots.size).toBe(0);
  });

  test.skipIf(noSharedGmem)(`bounds: the file range must lie inside the gmem${skipped(noSharedGmem)}`, () => {
    expectCode(() => add({ guestMemfdOffset: 15n * MiB }), 'EINVAL'); // crosses EOF
    expectCode(() => add({ guestMemfdOffset: 16n * MiB }), 'EINVAL'); // at EOF
    expectCode(() => add({ guestMemfdOffset: 1n << 63n, userspace: gmem.map({ length: 2n * MiB }) }), 'EINVAL');
    expectCode(() => add({ guestPhysAddr: (1n << 64n) - MiB }), 'EINVAL'); // gpa + size wraps
    expectCode(() => add({ size: 1n << 43n }), 'EINVAL'); // 2^31 pages
    expect(vm.memslots.size).toBe(0);
  });

  test.skipIf(noSharedGmem)(`guest-physical overlap: EEXIST naming the slot in the way${skipped(noSharedGmem)}`, () => {
    const a = add({ guestPhysAddr: 0n, guestMemfdOffset: 0n });
    const e = expectCode(() => add({ guestPhysAddr: MiB, guestMemfdOffset: 4n * MiB }), 'EEXIST');
    if (precheck) {
      expect(e.conflict).toMatchObject({ slot: a.id, start: 0n, end: 2n * MiB, space: 'gpa' });
      expect(e.message).toMatch(/overlaps slot 0/);
    }
    expect(vm.memslots.list()).toEqual([a]);
  });

  test.skipIf(noSharedGmem)(`second binding of a bound file range: this kernel's code (EINVAL on 6.18, EEXIST on 7.x), naming the slot that binds it${skipped(noSharedGmem)}`, () => {
    const a = add({ guestPhysAddr: 0n, guestMemfdOffset: 2n * MiB });
    const e = expectCode(() => add({ guestPhysAddr: GiB, guestMemfdOffset: 3n * MiB }), kvm.profile().gmemBoundErrno ?? 'EINVAL');
    if (precheck) {
      expect(e.conflict).toMatchObject({ slot: a.id, space: 'file' });
      expect(e.message).toMatch(/already bound to slot 0/);
    }
    // Adjacent file ranges are fine.
    add({ guestPhysAddr: GiB, guestMemfdOffset: 4n * MiB });
    add({ guestPhysAddr: 2n * GiB, guestMemfdOffset: 0n });
    expect(vm.memslots.size).toBe(3);
  });

  test.skipIf(noGmem)(`a foreign VM's gmem: EINVAL${skipped(noGmem)}`, () => {
    using other = kvm.createVm();
    using foreign = other.createGuestMemfd({ size: 2n * MiB });
    expectCode(() => add({ guestMemfd: foreign }), 'EINVAL');
  });

  test.skipIf(noSharedGmem)(`readonly or dirty logging on a gmem slot: EINVAL${skipped(noSharedGmem)}`, () => {
    expectCode(() => add({ readonly: true }), 'EINVAL');
    expectCode(() => add({ logDirtyPages: true }), 'EINVAL');
  });

  test('an unknown flag bit, and GUEST_MEMFD through the v1 ioctl: EINVAL', () => {
    expectCode(() => kvm.raw.setUserMemoryRegion2(vm.fd, { slot: 0, flags: 1 << 3, guestPhysAddr: 0, memorySize: PAGE }), 'EINVAL');
    expectCode(() => kvm.raw.setUserMemoryRegion(vm.fd, { slot: 0, flags: MemFlag.GUEST_MEMFD, guestPhysAddr: 0, memorySize: PAGE }), 'EINVAL');
  });

  test.skipIf(noSharedGmem)(`slot-id limit: KVM_USER_MEM_SLOTS - 1 works, KVM_USER_MEM_SLOTS does not${skipped(noSharedGmem)}`, () => {
    expect(vm.capabilities().maxMemslots).toBe(constants.KVM_USER_MEM_SLOTS);
    expectCode(() => add({ slot: constants.KVM_USER_MEM_SLOTS }), 'EINVAL');
    expect(add({ slot: constants.KVM_USER_MEM_SLOTS - 1 }).id).toBe(constants.KVM_USER_MEM_SLOTS - 1);
    // Address spaces: 2 with SMM (slots of address space 1 are accepted), else 1.
    const spaces = vm.capabilities().addressSpaces;
    if (spaces > 1) expect(add({ slot: 0, asId: 1, guestMemfdOffset: 4n * MiB }).asId).toBe(1);
    expectCode(() => add({ slot: 0, asId: spaces, guestMemfdOffset: 6n * MiB }), 'EINVAL');
  });

  test.skipIf(noSharedGmem)(`a gmem slot can only be deleted: re-set, move, resize or flag change give EINVAL${skipped(noSharedGmem)}`, () => {
    const s = add({ slot: 5 });
    const e = expectCode(() => add({ slot: 5 }), 'EINVAL'); // identical
    if (precheck) expect(e.conflict?.slot).toBe(5);
    expectCode(() => add({ slot: 5, guestPhysAddr: GiB }), 'EINVAL'); // move
    expectCode(() => add({ slot: 5, size: 4n * MiB }), 'EINVAL'); // resize
    expectCode(() => add({ slot: 5, guestMemfdOffset: 4n * MiB }), 'EINVAL'); // rebind
    // dropping the GUEST_MEMFD flag (a plain slot with the same id)
    using m = gmem.map({ offset: 8n * MiB, length: 2n * MiB });
    expectCode(() => vm.memslots.add({ slot: 5, guestPhysAddr: 0n, size: 2n * MiB, userspace: m }), 'EINVAL');
    expect(vm.memslots.list()).toEqual([s]);
    expect(s.guestPhysAddr).toBe(0n);
  });

  test.skipIf(noSharedGmem)(`delete then rebind the same file range${skipped(noSharedGmem)}`, () => {
    const a = add({ guestPhysAddr: 0n });
    vm.memslots.delete(a);
    expect(a.deleted).toBe(true);
    expect(vm.memslots.find(0n)).toBeUndefined();
    const b = add({ guestPhysAddr: GiB });
    expect(b.id).toBe(a.id); // the lowest free id again
    expect(vm.memslots.translate(GiB)?.offset).toBe(0n);
  });

  test('deleting a slot that does not exist: EINVAL', () => {
    const e = expectCode(() => vm.memslots.delete(7), 'EINVAL');
    if (precheck) expect(e.conflict?.slot).toBe(7);
  });

  test.skipIf(noGmem)(`the overlapping-regions selftest: EEXIST from the GPA check comes before gmem binding${skipped(noGmem)}`, () => {
    // set_memory_region_test.c test_add_overlapping_private_memory_regions
    using g = vm.createGuestMemfd({ size: 8n * MiB });
    const base = GiB;
    const a = vm.memslots.add({ guestPhysAddr: base, size: 4n * MiB, guestMemfd: g, guestMemfdOffset: 0n });
    const b = vm.memslots.add({ guestPhysAddr: base * 2n, size: 4n * MiB, guestMemfd: g, guestMemfdOffset: 4n * MiB });
    vm.memslots.delete(a);
    expectCode(() => vm.memslots.add({ guestPhysAddr: base * 2n - 2n * MiB, size: 4n * MiB, guestMemfd: g, guestMemfdOffset: 0n }), 'EEXIST');
    expectCode(() => vm.memslots.add({ guestPhysAddr: base * 2n + 2n * MiB, size: 4n * MiB, guestMemfd: g, guestMemfdOffset: 0n }), 'EEXIST');
    expect(vm.memslots.list()).toEqual([b]);
  });

  test.skipIf(noSharedGmem)(`plain (non-gmem) slots may move and toggle dirty logging, but not change memory${skipped(noSharedGmem)}`, () => {
    using m = gmem.map({ offset: 0n, length: 4n * MiB });
    const s = vm.memslots.add({ guestPhysAddr: 0n, size: 2n * MiB, userspace: m });
    expect(vm.memslots.add({ slot: s.id, guestPhysAddr: GiB, size: 2n * MiB, userspace: m })).toBe(s); // MOVE
    expect(vm.memslots.find(GiB)).toBe(s);
    expect(vm.memslots.find(0n)).toBeUndefined();
    vm.memslots.add({ slot: s.id, guestPhysAddr: GiB, size: 2n * MiB, userspace: m, logDirtyPages: true });
    expect(s.logDirtyPages).toBe(true);
    expectCode(() => vm.memslots.add({ slot: s.id, guestPhysAddr: GiB, size: 2n * MiB, userspace: m, readonly: true }), 'EINVAL');
    expectCode(() => vm.memslots.add({ slot: s.id, guestPhysAddr: GiB, size: 2n * MiB, userspace: m, userspaceOffset: 2n * MiB }), 'EINVAL');
    vm.memslots.delete(s);
  });

  test('userspace address must be a user range: a kernel address is EINVAL', () => {
    expectCode(() => kvm.raw.setUserMemoryRegion2(vm.fd, { slot: 0, guestPhysAddr: 0, memorySize: PAGE, userspaceAddr: 0xffff800000000000n }), 'EINVAL');
    expectCode(() => kvm.raw.setUserMemoryRegion2(vm.fd, { slot: 0, guestPhysAddr: 0, memorySize: PAGE, userspaceAddr: 1 }), 'EINVAL');
  });

  test.skipIf(noSharedGmem)(`userspace address 0 is fine for a gmem slot${skipped(noSharedGmem)}`, () => {
    kvm.raw.setUserMemoryRegion2(vm.fd, { slot: 0, flags: MemFlag.GUEST_MEMFD, guestPhysAddr: 0, memorySize: PAGE, userspaceAddr: 0, guestMemfd: gmem.fd, guestMemfdOffset: 0 });
    kvm.raw.setUserMemoryRegion2(vm.fd, { slot: 0, guestPhysAddr: 0, memorySize: 0 });
  });

  test.skipIf(noGmem)(`a gmem without host access binds with userspace_addr 0${skipped(noGmem)}`, () => {
    using priv = vm.createGuestMemfd({ size: 2n * MiB });
    const s = vm.memslots.add({ guestPhysAddr: 4n * GiB, size: 2n * MiB, guestMemfd: priv });
    expect(s.userspace).toBeUndefined();
    expect(s.userspaceAddr).toBe(0n);
    expectCode(() => vm.memory.read(4n * GiB, 1), 'EFAULT');
  });

  test.skipIf(noSharedGmem)(`auto slot ids fill the lowest free id${skipped(noSharedGmem)}`, () => {
    const ids = [0n, 1n, 2n, 3n].map((i) => add({ guestPhysAddr: i * GiB, guestMemfdOffset: i * 2n * MiB }).id);
    expect(ids).toEqual([0, 1, 2, 3]);
    vm.memslots.delete(1);
    expect(add({ guestPhysAddr: 8n * GiB, guestMemfdOffset: 2n * MiB }).id).toBe(1);
  });
});
