/**
 * Guests that run from gmem on the real kernel: what the binding sets up is what the guest
 * sees. Skipped (with the reason) where /dev/kvm cannot be opened; the simulator cannot run
 * guest code, which the last test checks.
 */
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { openKvm, type GuestMemfd, type Kvm, type Vcpu, type Vm } from '../../lib/index.js';
import { expectCode, kvmUnavailable, MiB, noSharedGmem, PAGE, skipped } from '../helpers.js';
import { readEach, readFar, readThenWrite, spin } from '../../lib/selftest/programs.js';

const KiB = 1024n;

describe.skipIf(kvmUnavailable)(`guests on the real kernel (${kvmUnavailable ?? '/dev/kvm'})`, () => {
  let kvm: Kvm;
  let vm: Vm;
  let gmem: GuestMemfd;
  let cpu: Vcpu;
  beforeEach(() => {
    kvm = openKvm({ backend: 'kvm' });
    vm = kvm.createVm();
    cpu = vm.createVcpu(0);
    cpu.setSregs({ cs: { base: 0n, selector: 0 }, ds: { base: 0n, selector: 0 } });
  });
  afterEach(() => {
    vm.close();
    kvm.close();
  });

  const start = (ip: bigint) => cpu.setRegs({ rip: ip, rflags: 2n });

  // The guests run from a gmem the host maps (mmap + initShared) on a default VM.
  describe.skipIf(noSharedGmem)(`running from gmem${skipped(noSharedGmem)}`, () => {
    beforeEach(() => {
      gmem = vm.createGuestMemfd({ size: 2n * MiB, mmap: true, initShared: true });
    });

    test('the guest reads what the host wrote through the Mapping, and the host reads what the guest wrote', async () => {
      using slot = vm.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: gmem });
      using map = gmem.map({ length: MiB });
      map.bytes.set(readThenWrite(0x2000, 0x2001, 0x55), 0x1000);
      map.bytes[0x2000] = 0x42;
      start(0x1000n);
      expect(await cpu.run({ timeoutMs: 5000 })).toMatchObject({ reason: 'io', direction: 'out', port: 0x10, data: Uint8Array.of(0x42) });
      expect(await cpu.run({ timeoutMs: 5000 })).toEqual({ reason: 'hlt' });
      expect(map.bytes[0x2001]).toBe(0x55);
      expect([...vm.memory.read(0x2001n, 1)]).toEqual([0x55]);
      expect(slot.deleted).toBe(false);
    });

    test('after punchHole the guest reads zeros', async () => {
      using slot = vm.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: gmem });
      vm.memory.write(0x1000n, readEach([0x5000, 0x6000]));
      vm.memory.write(0x5000n, Uint8Array.of(0xaa));
      vm.memory.write(0x6000n, Uint8Array.of(0xbb));
      start(0x1000n);
      const seen = async () => [(await cpu.run({ timeoutMs: 5000 })), await cpu.run({ timeoutMs: 5000 })].map((e) => (e.reason === 'io' ? e.data[0] : e.reason));
      expect(await seen()).toEqual([0xaa, 0xbb]); // the guest has faulted both pages in
      expect(await cpu.run({ timeoutMs: 5000 })).toEqual({ reason: 'hlt' });
      const zapped = gmem.punchHole(0x5000n, PAGE);
      expect(zapped).toEqual([{ slot, gfnStart: 5n, gfnEnd: 6n }]);
      start(0x1000n);
      expect(await seen()).toEqual([0, 0xbb]);
    });

    test('one gmem behind two slots with a hole between them: the guest sees each at its address', async () => {
      // file [0, 64K) at gpa 0 (code), file [1M, 1M+64K) at gpa 0x20000; gpa 0x10000.. is a hole
      using low = vm.memslots.add({ guestPhysAddr: 0n, size: 64n * KiB, guestMemfd: gmem, guestMemfdOffset: 0n });
      using high = vm.memslots.add({ guestPhysAddr: 0x20000n, size: 64n * KiB, guestMemfd: gmem, guestMemfdOffset: MiB });
      using map = gmem.map();
      map.bytes[0x800] = 0x11; // file 0x800 -> gpa 0x800
      map.bytes[Number(MiB) + 0x10] = 0x22; // file 1M+0x10 -> gpa 0x20010
      expect(vm.memslots.translate(0x20010n)).toMatchObject({ slot: high, offset: MiB + 0x10n });
      map.bytes.set(readEach([0x800]), 0x1000);
      map.bytes.set(readFar(0x2000, 0x10), 0x1100); // ds:0x10 with ds = 0x2000 -> gpa 0x20010
      start(0x1000n);
      expect(await cpu.run({ timeoutMs: 5000 })).toMatchObject({ reason: 'io', data: Uint8Array.of(0x11) });
      start(0x1100n);
      expect(await cpu.run({ timeoutMs: 5000 })).toMatchObject({ reason: 'io', data: Uint8Array.of(0x22) });
      // The hole: no memslot at 0x10000, so a read there is an MMIO exit, not memory.
      map.bytes.set(readFar(0x1000, 0x20), 0x1200);
      start(0x1200n);
      expect(await cpu.run({ timeoutMs: 5000 })).toMatchObject({ reason: 'mmio', gpa: 0x10020n, isWrite: false, length: 1 });
      expect(low.deleted).toBe(false);
    });

    test('a guest in an infinite loop is stopped by run({ timeoutMs: 100 }), and the vCPU then runs again', async () => {
      using slot = vm.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: gmem });
      vm.memory.write(0x3000n, spin);
      vm.memory.write(0x1000n, readThenWrite(0x2000, 0x2001, 0x66));
      start(0x3000n);
      const t0 = performance.now();
      expect(await cpu.run({ timeoutMs: 100 })).toEqual({ reason: 'timeout' });
      const took = performance.now() - t0;
      expect(took).toBeGreaterThanOrEqual(90);
      expect(cpu.getRegs().rip).toBe(0x3000n); // still on the jmp $
      start(0x1000n);
      expect((await cpu.run({ timeoutMs: 5000 })).reason).toBe('io');
      expect(await cpu.run({ timeoutMs: 5000 })).toEqual({ reason: 'hlt' });
      expect([...vm.memory.read(0x2001n, 1)]).toEqual([0x66]);
      expect(slot.deleted).toBe(false);
    });

    test('cancel() and an AbortSignal kick a running vCPU; a second run while running is EBUSY', async () => {
      using slot = vm.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: gmem });
      vm.memory.write(0x3000n, spin);
      start(0x3000n);
      const running = cpu.run();
      expect(cpu.running).toBe(true);
      await expect(cpu.run()).rejects.toMatchObject({ code: 'EBUSY' });
      setTimeout(() => cpu.cancel(), 20);
      expect(await running).toEqual({ reason: 'canceled' });
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 20);
      expect(await cpu.run({ signal: ac.signal })).toEqual({ reason: 'canceled' });
      expect(slot.deleted).toBe(false);
    });

    test('while a guest loops, the event loop keeps running (KVM_RUN is on its own thread)', async () => {
      using slot = vm.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: gmem });
      vm.memory.write(0x3000n, spin);
      start(0x3000n);
      // Timers fire while the guest spins; the fifth one stops it. (Were the loop blocked, no
      // timer would fire and only the run's timeout would end it.)
      let ticks = 0;
      const iv = setInterval(() => ++ticks === 5 && cpu.cancel(), 5);
      const exit = await cpu.run({ timeoutMs: 60_000 });
      clearInterval(iv);
      expect(exit.reason).toBe('canceled');
      expect(ticks).toBeGreaterThanOrEqual(5);
      expect(slot.deleted).toBe(false);
    });

    test('closing a vCPU while it runs kicks it out; the VM closes cleanly', async () => {
      using slot = vm.memslots.add({ guestPhysAddr: 0n, size: MiB, guestMemfd: gmem });
      vm.memory.write(0x3000n, spin);
      start(0x3000n);
      const running = cpu.run();
      await new Promise((r) => setTimeout(r, 20));
      cpu.close();
      expect(await running).toEqual({ reason: 'canceled' });
      expect(cpu.closed).toBe(true);
      expect(slot.deleted).toBe(false);
    });
  });

  test('completeRead() answers an io in and an mmio read: the guest gets those bytes; nothing pending is EINVAL', async () => {
    using mem = vm.createSharedMemory({ size: 64n * KiB });
    using _slot = vm.memslots.add({ guestPhysAddr: 0n, size: 64n * KiB, userspace: mem });
    mem.bytes.set(Uint8Array.of(
      0xe4, 0x20, //             in al, 0x20
      0xe6, 0x10, //             out 0x10, al
      0xb8, 0x00, 0x10, //       mov ax, 0x1000
      0x8e, 0xd8, //             mov ds, ax
      0xa0, 0x34, 0x12, //       mov al, [0x1234]: gpa 0x11234, past the slot: mmio
      0xe6, 0x10, //             out 0x10, al
      0xf4, //                   hlt
    ), 0x1000);
    start(0x1000n);
    expectCode(() => cpu.completeRead([1]), 'EINVAL');
    expect(await cpu.run({ timeoutMs: 20_000 })).toMatchObject({ reason: 'io', direction: 'in', port: 0x20, size: 1, count: 1 });
    expect(() => cpu.completeRead([1, 2])).toThrow(RangeError);
    expect(() => cpu.completeRead('x' as never)).toThrow(TypeError);
    cpu.completeRead([0x5a]);
    expectCode(() => cpu.completeRead([0x5a]), 'EINVAL'); // answered already
    expect(await cpu.run({ timeoutMs: 20_000 })).toMatchObject({ reason: 'io', direction: 'out', port: 0x10, data: Uint8Array.of(0x5a) });
    expect(await cpu.run({ timeoutMs: 20_000 })).toMatchObject({ reason: 'mmio', gpa: 0x11234n, isWrite: false, length: 1 });
    cpu.completeRead(Uint8Array.of(0xa5));
    expect(await cpu.run({ timeoutMs: 20_000 })).toMatchObject({ reason: 'io', direction: 'out', data: Uint8Array.of(0xa5) });
    expectCode(() => cpu.completeRead([0]), 'EINVAL'); // an out is not a read
    expect(await cpu.run({ timeoutMs: 20_000 })).toEqual({ reason: 'hlt' });
  });

  test('registers round-trip through KVM_SET/GET_REGS and SREGS', () => {
    cpu.setRegs({ rax: 0x1234n, r15: (1n << 64n) - 1n });
    const r = cpu.getRegs();
    expect(r.rax).toBe(0x1234n);
    expect(r.r15).toBe((1n << 64n) - 1n);
    cpu.setSregs({ es: { base: 0x10000n, selector: 0x1000 } });
    expect(cpu.getSregs().es).toMatchObject({ base: 0x10000n, selector: 0x1000 });
    expect(() => cpu.setRegs({ nope: 1n } as never)).toThrow(TypeError);
  });
});

test('the simulator cannot run guest code: KVM_RUN is EOPNOTSUPP with a clear message', async () => {
  using kvm = openKvm({ backend: 'simulated' });
  using vm = kvm.createVm();
  using cpu = vm.createVcpu(0);
  cpu.setRegs({ rip: 0x1000n });
  expect(cpu.getRegs().rip).toBe(0x1000n);
  const e = await cpu.run().catch((x: unknown) => x);
  expect(e).toMatchObject({ code: 'EOPNOTSUPP', request: 'KVM_RUN' });
  expect((e as Error).message).toMatch(/needs \/dev\/kvm/);
  expectCode(() => kvm.raw.run(cpu.fd, { address: 0n, view: () => new Uint8Array(0) }), 'EOPNOTSUPP');
});
