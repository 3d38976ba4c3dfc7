/**
 * A memslot batch that the kernel refuses partway through for a reason no rule predicts (here:
 * ENOMEM from a backend that runs out after k calls). The books must keep the slots the kernel
 * took and forget the rest, the error must name the entry, and the own host mappings made for
 * the refused entries must be unmapped. Only a backend made to fail can show this: the sim
 * project's.
 */
import { describe, expect, test } from 'vitest';
import { KvmError, openKvm, type MemslotOptions } from '../../lib/index.js';
import { kvmError } from '../../lib/base/errors.js';
import { defaultProfile, SimBackend } from '../../lib/raw/sim/index.js';
import type { Handle, RawMapping, RawRegion2 } from '../../lib/raw/types.js';
import { MiB, PAGE } from '../helpers.js';

/** A simulator whose batch call applies `budget` regions, then fails as a kernel out of memory. */
class RunsOut extends SimBackend {
  budget = Infinity;
  /** Mappings made and not yet unmapped. */
  live = new Set<RawMapping>();
  override mmap(...a: Parameters<SimBackend['mmap']>): RawMapping {
    const m = super.mmap(...a);
    this.live.add(m);
    return m;
  }
  override munmap(m: RawMapping): void {
    super.munmap(m);
    this.live.delete(m);
  }
  override setUserMemoryRegions2(vmFd: Handle, regions: readonly RawRegion2[]): void {
    const n = Math.min(regions.length, this.budget);
    super.setUserMemoryRegions2(vmFd, regions.slice(0, n));
    this.budget -= n;
    if (n < regions.length) throw Object.assign(kvmError('ENOMEM', { syscall: 'ioctl', request: 'KVM_SET_USER_MEMORY_REGION2' }, 'out of memory'), { index: n });
  }
}

describe('memslot batches refused partway by the kernel', () => {
  test.each([0, 1, 3])('addMany with the kernel taking %i of 5: the books keep those, forget the rest', (k) => {
    const raw = new RunsOut(defaultProfile);
    using kvm = openKvm({ raw });
    const vm = kvm.createVm();
    const gmem = vm.createGuestMemfd({ size: 8n * MiB, mmap: true, initShared: true });
    const o = (i: number): MemslotOptions => ({ guestPhysAddr: BigInt(i) * MiB, size: MiB, guestMemfd: gmem, guestMemfdOffset: BigInt(i) * MiB });
    const before = raw.live.size;
    raw.budget = k;
    let error: (KvmError & { index?: number }) | undefined;
    try {
      vm.memslots.addMany([0, 1, 2, 3, 4].map(o));
    } catch (e) {
      error = e as KvmError;
    }
    expect(error).toBeInstanceOf(KvmError);
    expect(error!.code).toBe('ENOMEM');
    expect(error!.index).toBe(k);
    expect(vm.memslots.list().map((s) => s.guestPhysAddr)).toEqual([0, 1, 2, 3, 4].slice(0, k).map((i) => BigInt(i) * MiB));
    expect(vm.memslots.find(BigInt(k) * MiB)).toBeUndefined();
    expect(vm.memslots.reverse(gmem, BigInt(k) * MiB)).toBeUndefined();
    // The host mappings the library made for the refused slots are gone; the kept slots' stay.
    expect(raw.live.size - before).toBe(k);
    // The simulator (the kernel here) holds what the books hold: the rest adds, in one batch.
    raw.budget = Infinity;
    vm.memslots.addMany([0, 1, 2, 3, 4].slice(k).map(o));
    expect(vm.memslots.size).toBe(5);
    expect(vm.memslots.translate(4n * MiB + PAGE)!.offset).toBe(4n * MiB + PAGE);
  });

  test('an entry the rules refuse leaves no host mapping behind (the batch before it is kept)', () => {
    const raw = new RunsOut(defaultProfile);
    using kvm = openKvm({ raw });
    const vm = kvm.createVm();
    const gmem = vm.createGuestMemfd({ size: 8n * MiB, mmap: true, initShared: true });
    const o = (i: number, gpa = i): MemslotOptions => ({ guestPhysAddr: BigInt(gpa) * MiB, size: MiB, guestMemfd: gmem, guestMemfdOffset: BigInt(i) * MiB });
    const before = raw.live.size;
    expect(() => vm.memslots.addMany([o(0), o(1), o(2, 0)])).toThrow(KvmError);
    expect(vm.memslots.size).toBe(2);
    expect(raw.live.size - before).toBe(2);
  });

  test('deleteMany with the kernel taking 2 of 4: those two are gone from the books, two stay', () => {
    const raw = new RunsOut(defaultProfile);
    using kvm = openKvm({ raw });
    const vm = kvm.createVm();
    const mem = vm.createSharedMemory({ size: 4n * PAGE });
    const slots = vm.memslots.addMany([0, 1, 2, 3].map((i) => ({ guestPhysAddr: BigInt(i) * PAGE, size: PAGE, userspace: mem, userspaceOffset: BigInt(i) * PAGE })));
    raw.budget = 2;
    let error: (KvmError & { index?: number }) | undefined;
    try {
      vm.memslots.deleteMany(slots);
    } catch (e) {
      error = e as KvmError;
    }
    expect(error!.index).toBe(2);
    expect(slots.map((s) => s.deleted)).toEqual([true, true, false, false]);
    raw.budget = Infinity;
    vm.memslots.deleteMany(slots.slice(2));
    expect(vm.memslots.size).toBe(0);
  });
});
