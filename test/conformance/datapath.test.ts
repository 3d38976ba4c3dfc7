/**
 * The data path: bytes written through a gmem Mapping are what vm.memory reads at the slot's
 * guest address; punch-hole zeroes them and reports the guest ranges it invalidated; one
 * gmem behind several slots translates each way.
 */
import { describe, expect, test } from 'vitest';
import type { InvalidateEvent, Vm } from '../../lib/index.js';
import { expectCode, GiB, MiB, noGmem, noSharedGmem, PAGE, skipped, unavailable, eachVm } from '../helpers.js';

describe.skipIf(unavailable)('data path', () => {
  let vm: Vm;
  eachVm((_k, v) => {
    vm = v;
  });

  // Host-accessible gmems (mmap + initShared) bound to slots on a default VM, except the reviewed
  // case, whose gmem the host never touches.
  test.skipIf(noSharedGmem)(`write through the Mapping, read at the guest address; punch-hole zeroes${skipped(noSharedGmem)}`, () => {
    using gmem = vm.createGuestMemfd({ size: 4n * MiB, mmap: true, initShared: true });
    using map = gmem.map();
    using slot = vm.memslots.add({ guestPhysAddr: GiB, size: 4n * MiB, guestMemfd: gmem, userspace: map });
    const hello = new TextEncoder().encode('hello, guest');
    map.view(MiB + 8n, hello.length).set(hello);
    expect(vm.memory.read(GiB + MiB + 8n, hello.length)).toEqual(hello);

    // and the other way: vm.memory.write lands in the mapping
    vm.memory.write(GiB + 3n * MiB, Uint8Array.of(1, 2, 3));
    expect([...map.view(3n * MiB, 3)]).toEqual([1, 2, 3]);

    const events: InvalidateEvent[] = [];
    vm.on('invalidate', (e: InvalidateEvent) => events.push(e));
    const ranges = gmem.punchHole(MiB, PAGE);
    const gfn = (GiB + MiB) / PAGE;
    expect(ranges).toEqual([{ slot, gfnStart: gfn, gfnEnd: gfn + 1n }]);
    expect(events).toHaveLength(1);
    expect(events[0]!.ranges).toEqual(ranges);
    expect(vm.memory.read(GiB + MiB + 8n, hello.length).every((b) => b === 0)).toBe(true);
    expect([...vm.memory.read(GiB + 3n * MiB, 3)]).toEqual([1, 2, 3]); // outside the hole
  });

  test.skipIf(noSharedGmem)(`a slot without \`userspace\` on an mmap+initShared gmem uses the gmem's own mapping at its offset${skipped(noSharedGmem)}`, () => {
    using gmem = vm.createGuestMemfd({ size: 8n * MiB, mmap: true, initShared: true });
    using a = vm.memslots.add({ guestPhysAddr: 0n, size: 2n * MiB, guestMemfd: gmem, guestMemfdOffset: 0n });
    const b = vm.memslots.add({ guestPhysAddr: 4n * GiB, size: 2n * MiB, guestMemfd: gmem, guestMemfdOffset: 6n * MiB });
    for (const s of [a, b]) {
      expect(s.userspace!.guestMemfd).toBe(gmem);
      expect(s.userspace!.offset + s.userspaceOffset).toBe(s.guestMemfdOffset);
      expect(s.userspaceAddr).toBe(s.userspace!.address + s.userspaceOffset);
    }
    using map = gmem.map();
    map.view(6n * MiB, 4).set([9, 8, 7, 6]);
    expect([...vm.memory.read(4n * GiB, 4)]).toEqual([9, 8, 7, 6]);
    // The mapping made for a slot goes with the slot.
    const own = b.userspace!;
    b.delete();
    expect(own.closed).toBe(true);
  });

  test.skipIf(noSharedGmem)(`two slots on one gmem, a hole between them: both translations and their data${skipped(noSharedGmem)}`, () => {
    using gmem = vm.createGuestMemfd({ size: 4n * MiB, mmap: true, initShared: true });
    using lo = vm.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: gmem, guestMemfdOffset: 0n });
    using hi = vm.memslots.add({ guestPhysAddr: 4n * GiB, size: 2n * MiB, guestMemfd: gmem, guestMemfdOffset: 2n * MiB });
    expect(vm.memslots.translate(0x800n)).toMatchObject({ slot: lo, offset: 0x800n });
    expect(vm.memslots.translate(4n * GiB + 0x800n)).toMatchObject({ slot: hi, offset: 2n * MiB + 0x800n });
    expect(vm.memslots.translate(2n * MiB)).toBeUndefined();
    expect(vm.memslots.reverse(gmem, MiB + 0x10n)).toBeUndefined(); // the unbound file range
    expect(vm.memslots.reverse(gmem, 3n * MiB)).toEqual({ slot: hi, gpa: 4n * GiB + MiB });
    vm.memory.write(0x800n, Uint8Array.of(0x11));
    vm.memory.write(4n * GiB + 0x800n, Uint8Array.of(0x22));
    using map = gmem.map();
    expect(map.bytes[0x800]).toBe(0x11);
    expect(map.bytes[2 * 2 ** 20 + 0x800]).toBe(0x22);
    expectCode(() => vm.memory.read(2n * MiB, 1), 'EFAULT'); // no slot there
  });

  test.skipIf(noGmem)(`the reviewed case: one gmem, slots at offsets 0, 1 GiB, 3 GiB; punch [512 MiB, 3.5 GiB)${skipped(noGmem)}`, () => {
    using gmem = vm.createGuestMemfd({ size: 4n * GiB });
    const s0 = vm.memslots.add({ guestPhysAddr: 0n, size: GiB, guestMemfd: gmem, guestMemfdOffset: 0n });
    const s1 = vm.memslots.add({ guestPhysAddr: 4n * GiB, size: 2n * GiB, guestMemfd: gmem, guestMemfdOffset: GiB });
    const s2 = vm.memslots.add({ guestPhysAddr: 8n * GiB, size: GiB, guestMemfd: gmem, guestMemfdOffset: 3n * GiB });
    const ranges = gmem.punchHole(512n * MiB, 3n * GiB);
    const g = (x: bigint) => x / PAGE;
    expect(ranges).toEqual([
      { slot: s0, gfnStart: g(512n * MiB), gfnEnd: g(GiB) },
      { slot: s1, gfnStart: g(4n * GiB), gfnEnd: g(6n * GiB) },
      { slot: s2, gfnStart: g(8n * GiB), gfnEnd: g(8n * GiB + 512n * MiB) },
    ]);
  });

  test.skipIf(noSharedGmem)(`a Mapping that is a live slot's memory cannot be unmapped until the slot is deleted${skipped(noSharedGmem)}`, () => {
    using gmem = vm.createGuestMemfd({ size: 2n * MiB, mmap: true, initShared: true });
    const map = gmem.map();
    const slot = vm.memslots.add({ guestPhysAddr: 0n, size: 2n * MiB, guestMemfd: gmem, userspace: map });
    const e = expectCode(() => map.close(), 'EBUSY');
    expect(e.message).toMatch(/memslot 0/);
    expect(e.conflict?.slot).toBe(slot.id);
    expectCode(() => gmem.close(), 'EBUSY');
    expect(map.closed).toBe(false);
    map.bytes[0] = 1; // still mapped
    vm.memslots.delete(slot);
    map.close();
    expect(map.closed).toBe(true);
  });

  test.skipIf(noSharedGmem)(`a mapping too small for the slot is refused before the kernel is asked${skipped(noSharedGmem)}`, () => {
    using gmem = vm.createGuestMemfd({ size: 4n * MiB, mmap: true, initShared: true });
    using small = gmem.map({ length: MiB });
    expect(() => vm.memslots.add({ guestPhysAddr: 0n, size: 2n * MiB, guestMemfd: gmem, userspace: small })).toThrow(RangeError);
    expect(vm.memslots.size).toBe(0);
  });
});
