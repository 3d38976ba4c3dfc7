/**
 * guest_memfd creation, fallocate and mmap, asserted through the typed API with the kernel's
 * errno code (kernel-spec.md §2a-c; selftest guest_memfd_test.c).
 */
import { describe, expect, test } from 'vitest';
import { constants, KvmError, type Kvm, type Vm } from '../../lib/index.js';
import { eachVm, expectCode, isCloexec, MiB, noMmapGmem, noOsFds, noSharedGmem, PAGE, skipped, unavailable, vmCaps } from '../helpers.js';

const { Falloc } = constants;

/** Why a gmem with GUEST_MEMFD_FLAG_INIT_SHARED alone cannot be created here (undefined when it can). */
const noInitShared =
  vmCaps && !vmCaps.guestMemfdFlags.initShared ? 'requires guest_memfd INIT_SHARED on default VMs (KVM_CAP_GUEST_MEMFD_FLAGS on the VM: Linux 6.18+)' : undefined;

describe.skipIf(unavailable)(`guest_memfd (${unavailable ?? 'backend available'})`, () => {
  let kvm: Kvm;
  let vm: Vm;
  eachVm((k, v) => {
    kvm = k;
    vm = v;
  });

  test('size must be a positive multiple of the page size', () => {
    for (const size of [1n, 4095n, 4097n, (1n << 64n) - 4096n, 1n << 63n]) {
      expectCode(() => vm.createGuestMemfd({ size }), 'EINVAL');
    }
    expectCode(() => vm.createGuestMemfd({ size: 0 }), 'EINVAL');
    using big = vm.createGuestMemfd({ size: 1n << 40n }); // no upper bound but loff_t
    expect(big.stat().size).toBe(1n << 40n);
  });

  test('each flag bit is accepted exactly when KVM_CAP_GUEST_MEMFD_FLAGS has it', () => {
    const supported = BigInt(vm.checkExtension(constants.Cap.GUEST_MEMFD_FLAGS));
    for (let bit = 0n; bit < 64n; bit++) {
      const flags = 1n << bit;
      if (supported & flags) vm.createGuestMemfd({ size: PAGE, flags }).close();
      else expectCode(() => vm.createGuestMemfd({ size: PAGE, flags }), 'EINVAL');
    }
  });

  test('fstat: size, regular file mode 0600, page-sized blocks; distinct inodes', () => {
    using a = vm.createGuestMemfd({ size: PAGE });
    using b = vm.createGuestMemfd({ size: 2n * PAGE });
    const sa = a.stat();
    expect(sa.size).toBe(PAGE);
    expect(sa.mode).toBe(0o100600);
    expect(sa.blksize).toBe(kvm.pageSize);
    expect(b.stat().size).toBe(2n * PAGE);
    expect(b.stat().ino).not.toBe(sa.ino);
  });

  test.skipIf(noOsFds)(`every fd the addon returns is FD_CLOEXEC (the kernel leaves gmem fds without it)${skipped(noOsFds)}`, () => {
    using g = vm.createGuestMemfd({ size: PAGE });
    using v = vm.createVcpu(0);
    for (const fd of [kvm.fd, vm.fd, g.fd, v.fd]) expect(isCloexec(fd), `fd ${fd}`).toBe(true);
  });

  describe('fallocate on a 16-page file', () => {
    const N = 16n;
    const cases: [string, number, bigint, bigint, string | undefined][] = [
      ['mode 0 (would change size)', 0, 0n, PAGE, 'EOPNOTSUPP'],
      ['allocate one page', Falloc.KEEP_SIZE, 0n, PAGE, undefined],
      ['allocate the whole file', Falloc.KEEP_SIZE, 0n, N * PAGE, undefined],
      ['allocate at an unaligned offset', Falloc.KEEP_SIZE, 1n, PAGE, 'EINVAL'],
      ['allocate an unaligned length', Falloc.KEEP_SIZE, 0n, PAGE + 1n, 'EINVAL'],
      ['allocate across EOF', Falloc.KEEP_SIZE, 15n * PAGE, 2n * PAGE, 'EINVAL'],
      ['allocate at EOF', Falloc.KEEP_SIZE, N * PAGE, PAGE, 'EINVAL'],
      ['allocate zero length', Falloc.KEEP_SIZE, 0n, 0n, 'EINVAL'],
      ['punch without KEEP_SIZE', Falloc.PUNCH_HOLE, 0n, PAGE, 'EOPNOTSUPP'],
      ['punch an unaligned length', Falloc.PUNCH_HOLE | Falloc.KEEP_SIZE, 0n, 100n, 'EINVAL'],
      ['punch an unaligned offset', Falloc.PUNCH_HOLE | Falloc.KEEP_SIZE, 100n, PAGE, 'EINVAL'],
      ['punch across EOF', Falloc.PUNCH_HOLE | Falloc.KEEP_SIZE, 15n * PAGE, 4n * PAGE, undefined],
      ['punch past EOF', Falloc.PUNCH_HOLE | Falloc.KEEP_SIZE, 100n * PAGE, 4n * PAGE, undefined],
      ['zero range', Falloc.ZERO_RANGE | Falloc.KEEP_SIZE, 0n, PAGE, 'EOPNOTSUPP'],
      ['collapse range', Falloc.COLLAPSE_RANGE, 0n, PAGE, 'EOPNOTSUPP'],
      ['insert range', Falloc.INSERT_RANGE, 0n, PAGE, 'EOPNOTSUPP'],
      ['unshare range', Falloc.UNSHARE_RANGE | Falloc.KEEP_SIZE, 0n, PAGE, 'EOPNOTSUPP'],
      ['negative offset (u64 2^64-4096)', Falloc.KEEP_SIZE, (1n << 64n) - PAGE, PAGE, 'EINVAL'],
      ['offset + length beyond the largest file', Falloc.KEEP_SIZE, 0x7ffffffffffff000n, 0x2000n, 'EFBIG'],
    ];
    test.each(cases)('%s', (_name, mode, offset, length, code) => {
      using g = vm.createGuestMemfd({ size: N * PAGE });
      const call = () => kvm.raw.fallocate(g.fd, mode, offset, length);
      if (code) expectCode(call, code);
      else expect(call()).toBeUndefined();
    });

    test('typed allocate/punchHole give the same codes, explained', () => {
      using g = vm.createGuestMemfd({ size: N * PAGE });
      g.allocate(0, N * PAGE);
      g.allocate(0, N * PAGE); // idempotent
      const e = expectCode(() => g.allocate(PAGE, N * PAGE), 'EINVAL');
      expect(e.rule).toBe('fallocate.bounds');
      expect(e.message).toMatch(/past the end/);
      expectCode(() => g.punchHole(1, PAGE), 'EINVAL');
      expect(g.punchHole(1000n * PAGE, PAGE)).toEqual([]); // past EOF: accepted, nothing bound
    });
  });

  describe('mmap', () => {
    test('a gmem without GUEST_MEMFD_FLAG_MMAP cannot be mapped: ENODEV', () => {
      using g = vm.createGuestMemfd({ size: PAGE });
      expectCode(() => g.map(), 'ENODEV');
    });

    test.skipIf(noInitShared)(`nor one with GUEST_MEMFD_FLAG_INIT_SHARED but without MMAP: ENODEV${skipped(noInitShared)}`, () => {
      using s = vm.createGuestMemfd({ size: PAGE, flags: constants.GuestMemfdFlag.INIT_SHARED });
      expectCode(() => s.map(), 'ENODEV');
    });

    test.skipIf(noSharedGmem)(`MAP_PRIVATE is refused: EINVAL${skipped(noSharedGmem)}`, () => {
      using g = vm.createGuestMemfd({ size: PAGE, mmap: true, initShared: true });
      expectCode(() => kvm.raw.mmap(g.fd, PAGE, 0, 3, constants.MapFlag.PRIVATE), 'EINVAL');
    });

    test.skipIf(noMmapGmem)(`without initShared the library refuses a view that would SIGBUS${skipped(noMmapGmem)}`, () => {
      using g = vm.createGuestMemfd({ size: PAGE, mmap: true });
      const e = expectCode(() => g.map(), 'EFAULT');
      expect(e.message).toMatch(/initShared/);
    });

    test.skipIf(noSharedGmem)(`no view past EOF${skipped(noSharedGmem)}`, () => {
      using g = vm.createGuestMemfd({ size: 4n * PAGE, mmap: true, initShared: true });
      expect(() => g.map({ length: 5n * PAGE })).toThrow(RangeError);
      expect(() => g.map({ offset: 3n * PAGE, length: 2n * PAGE })).toThrow(RangeError);
      using m = g.map({ offset: PAGE });
      expect(m.length).toBe(3n * PAGE);
      expect(() => m.view(0, 3n * PAGE + 1n)).toThrow(RangeError);
    });

    test.skipIf(noSharedGmem)(`writes are visible in other mappings; punch-hole zeroes the range in both${skipped(noSharedGmem)}`, () => {
      using g = vm.createGuestMemfd({ size: 4n * PAGE, mmap: true, initShared: true });
      using a = g.map();
      using b = g.map({ offset: PAGE, length: PAGE });
      a.bytes.fill(0xaa);
      expect(b.bytes[0]).toBe(0xaa);
      g.punchHole(PAGE, PAGE);
      expect(a.bytes[Number(PAGE)]).toBe(0);
      expect(b.bytes.every((x) => x === 0)).toBe(true);
      expect(a.bytes[0]).toBe(0xaa);
      expect(a.bytes[2 * Number(PAGE)]).toBe(0xaa);
    });

    test.skipIf(noSharedGmem)(`unmapping detaches every view${skipped(noSharedGmem)}`, () => {
      using g = vm.createGuestMemfd({ size: PAGE, mmap: true, initShared: true });
      const m = g.map();
      const whole = m.bytes;
      const part = m.view(16, 16);
      m.close();
      m.close(); // idempotent
      expect(whole.length).toBe(0);
      expect(part.length).toBe(0);
      expect(() => m.bytes).toThrow(KvmError);
    });
  });

  test('a closed gmem answers EBADF', () => {
    const g = vm.createGuestMemfd({ size: PAGE });
    g.close();
    g.close();
    expectCode(() => g.allocate(0, PAGE), 'EBADF');
    expectCode(() => g.map(), 'EBADF');
    expectCode(() => vm.memslots.add({ guestPhysAddr: 0, size: PAGE, guestMemfd: g }), 'EBADF');
  });

  test('creating a gmem on /dev/kvm rather than a VM: EINVAL', () => {
    expectCode(() => kvm.raw.createGuestMemfd(kvm.fd, PAGE, 0), 'EINVAL');
  });

  test.skipIf(noSharedGmem)(`reserved fields and sizes up to 1 TiB: the VM stays usable${skipped(noSharedGmem)}`, () => {
    using g = vm.createGuestMemfd({ size: 1n << 40n, mmap: true, initShared: true });
    using m = g.map({ offset: (1n << 40n) - MiB, length: MiB });
    m.view(0, 8).set([1, 2, 3, 4, 5, 6, 7, 8]);
    expect([...m.view(0, 8)]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });
});
