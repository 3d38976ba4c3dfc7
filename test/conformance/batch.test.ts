/**
 * memslots.addMany() and deleteMany(): a loop of add()/delete() with the kernel calls back to
 * back. Each batch must leave the books equal to the kernel's slots, and do what the loop
 * would: the same slots, the same error at the same entry (its `index`), the entries before it
 * applied and none after it. Whether the kernel holds what the books say is checked through
 * the kernel itself: slots the books have delete without error, the ranges of slots they do
 * not have add without error. Twice: with the pre-checks and without (the kernel alone).
 */
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { KvmError, type GuestMemfd, type Kvm, type Mapping, type MemslotOptions, type Vm } from '../../lib/index.js';
import { mapCount, MiB, noGmem, noSharedGmem, open, PAGE, skipped, unavailable } from '../helpers.js';

/** The error fn throws, with its batch entry. */
function batchError(fn: () => unknown): Error & { index?: number; code?: string } {
  try {
    fn();
  } catch (e) {
    return e as Error & { index?: number };
  }
  throw new Error('expected the batch to fail, but it succeeded');
}

describe.skipIf(unavailable).each([true, false])('memslot batches (precheck %s)', (precheck) => {
  let kvm: Kvm;
  let vm: Vm;
  let mem: Mapping;
  beforeEach(() => {
    kvm = open({ precheck });
    vm = kvm.createVm();
    mem = vm.createSharedMemory({ size: 64n * PAGE });
  });
  afterEach(() => {
    vm.close();
    kvm.close();
  });

  /** Slot i: one page of `mem` at guest page 2i (userspace slots: every kernel has them). */
  const page = (i: number, o: Partial<MemslotOptions> = {}): MemslotOptions => ({
    guestPhysAddr: BigInt(2 * i) * PAGE, size: PAGE, userspace: mem, userspaceOffset: BigInt(i) * PAGE, ...o,
  });
  const shape = (v: Vm) => v.memslots.list().map(String);

  /** The kernel has exactly the books' slots: each deletes, then every range added adds again. */
  function expectKernelHasBooks(v: Vm, others: MemslotOptions[] = []): void {
    const held = v.memslots.list().map((s) => page(Number(s.guestPhysAddr / PAGE / 2n), { slot: s.id }));
    for (const s of v.memslots.list()) v.memslots.delete(s);
    for (const o of [...held, ...others]) v.memslots.add(o);
  }

  test('addMany gives the slots a loop of add() gives, and find/translate see them', () => {
    const list = Array.from({ length: 12 }, (_, i) => page(i));
    const slots = vm.memslots.addMany(list);
    expect(slots.map((s) => s.id)).toEqual(list.map((_, i) => i));
    const vm2 = kvm.createVm();
    try {
      const mem2 = vm2.createSharedMemory({ size: 64n * PAGE });
      for (const o of list) vm2.memslots.add({ ...o, userspace: mem2 });
      expect(shape(vm)).toEqual(shape(vm2));
    } finally {
      vm2.close();
    }
    expect(vm.memslots.find(2n * 5n * PAGE + 7n)).toBe(slots[5]);
    expect(vm.memslots.find(2n * 5n * PAGE + PAGE)).toBeUndefined();
    expect(vm.memslots.translate(2n * 11n * PAGE)!.userspaceAddr).toBe(mem.address + 11n * PAGE);
    expect(vm.memslots.addMany([])).toEqual([]);
    expectKernelHasBooks(vm);
  });

  test('addMany stops at an overlap with an earlier entry of the same batch: EEXIST at its index', () => {
    const list = [page(0), page(1), page(2), { ...page(3), guestPhysAddr: 2n * PAGE }, page(4)];
    const e = batchError(() => vm.memslots.addMany(list));
    expect(e).toBeInstanceOf(KvmError);
    expect(e.code).toBe('EEXIST');
    expect(e.index).toBe(3);
    expect(vm.memslots.size).toBe(3);
    // Entries 0-2 are in the kernel, 3 and 4 are not (4's range adds).
    expectKernelHasBooks(vm, [page(4)]);
  });

  test('an unaligned address stops the batch at that entry: EINVAL', () => {
    const e = batchError(() => vm.memslots.addMany([page(0), page(1), { ...page(2), guestPhysAddr: PAGE / 2n }, page(3)]));
    expect((e as KvmError).code).toBe('EINVAL');
    expect(e.index).toBe(2);
    expect(shape(vm)).toEqual(['slot 0 [0x0, 0x1000)', 'slot 1 [0x2000, 0x3000)']);
    expectKernelHasBooks(vm, [page(2), page(3)]);
  });

  test('a bad entry is its TypeError at its turn: the entries before it are added', () => {
    expect(() => vm.memslots.addMany(42 as never)).toThrow(TypeError);
    expect(() => vm.memslots.addMany('slots' as never)).toThrow(TypeError);
    const e = batchError(() => vm.memslots.addMany([page(0), page(1), { ...page(2), guestPhysAddr: 'x' as never }, page(3)]));
    expect(e).toBeInstanceOf(TypeError);
    expect(e.index).toBe(2);
    expect(vm.memslots.size).toBe(2);
    const r = batchError(() => vm.memslots.addMany([page(5), { ...page(6), size: 0n }]));
    expect(r).toBeInstanceOf(RangeError);
    expect(r.index).toBe(1);
    expect(vm.memslots.size).toBe(3);
    expectKernelHasBooks(vm, [page(2), page(3), page(6)]);
  });

  test('addMany moves an existing slot as add() does, in its place in the batch', () => {
    const [a] = vm.memslots.addMany([page(0)]);
    const out = vm.memslots.addMany([page(1), { ...page(0), slot: a!.id, guestPhysAddr: 40n * PAGE }, page(2)]);
    expect(out[1]).toBe(a);
    expect(a!.guestPhysAddr).toBe(40n * PAGE);
    expect(vm.memslots.find(0n)).toBeUndefined();
    expect(vm.memslots.size).toBe(3);
  });

  test('deleteMany deletes in order; a slot named twice is EINVAL at its second index', () => {
    const slots = vm.memslots.addMany(Array.from({ length: 10 }, (_, i) => page(i)));
    vm.memslots.deleteMany([slots[0]!, slots[1]!.id, slots[2]!]);
    expect(vm.memslots.size).toBe(7);
    expect(slots[0]!.deleted).toBe(true);
    const e = batchError(() => vm.memslots.deleteMany([slots[3]!, slots[4]!, slots[3]!, slots[5]!]));
    expect((e as KvmError).code).toBe('EINVAL');
    expect(e.index).toBe(2);
    expect(vm.memslots.list().map((s) => s.id)).toEqual([5, 6, 7, 8, 9]);
    const f = batchError(() => vm.memslots.deleteMany([slots[5]!, 300]));
    expect((f as KvmError).code).toBe('EINVAL');
    expect(f.index).toBe(1);
    const t = batchError(() => vm.memslots.deleteMany([slots[6]!, 'x' as never]));
    expect(t).toBeInstanceOf(TypeError);
    expect(t.index).toBe(1);
    expect(vm.memslots.list().map((s) => s.id)).toEqual([7, 8, 9]);
    expect(() => vm.memslots.deleteMany(7 as never)).toThrow(TypeError);
    expectKernelHasBooks(vm, [0, 1, 2, 3, 4, 5, 6].map((i) => page(i)));
  });

  test('batches after the VM is closed are EBADF', () => {
    const [s] = vm.memslots.addMany([page(0)]);
    vm.close();
    expect(batchError(() => vm.memslots.addMany([page(1)])).code).toBe('EBADF');
    expect(batchError(() => vm.memslots.deleteMany([s!])).code).toBe('EBADF');
  });

  describe.skipIf(noGmem)(`gmem slots${skipped(noGmem)}`, () => {
    let gmem: GuestMemfd;
    beforeEach(() => {
      gmem = vm.createGuestMemfd({ size: 16n * PAGE });
    });

    test('a file range bound twice in one batch stops it at the second binding', () => {
      const g = (i: number, off: number): MemslotOptions => ({ guestPhysAddr: BigInt(i) * PAGE, size: PAGE, guestMemfd: gmem, guestMemfdOffset: BigInt(off) * PAGE });
      const e = batchError(() => vm.memslots.addMany([g(0, 0), g(1, 1), g(2, 0), g(3, 3)]));
      expect(['EINVAL', 'EEXIST']).toContain((e as KvmError).code);
      expect(e.index).toBe(2);
      expect(vm.memslots.guestRanges(gmem, 0n, 16n * PAGE).map((r) => r.gfnStart)).toEqual([0n, 1n]);
      vm.memslots.deleteMany(vm.memslots.list());
      vm.memslots.addMany([g(2, 0), g(3, 3)]);
    });
  });

  test.skipIf(noSharedGmem)(`own host mappings of a refused batch are unmapped${skipped(noSharedGmem)}`, () => {
    const g = vm.createGuestMemfd({ size: 8n * MiB, mmap: true, initShared: true });
    const before = mapCount();
    const o = (i: number): MemslotOptions => ({ guestPhysAddr: BigInt(i) * MiB, size: MiB, guestMemfd: g, guestMemfdOffset: BigInt(i) * MiB });
    const e = batchError(() => vm.memslots.addMany([o(0), o(1), { ...o(2), guestPhysAddr: 0n }]));
    expect(e.index).toBe(2);
    const [s0, s1] = vm.memslots.list();
    expect(s1!.userspace).toBeDefined();
    vm.memslots.deleteMany([s0!, s1!]);
    if (kvm.backend === 'kvm') expect(mapCount()).toBe(before);
  });
});
