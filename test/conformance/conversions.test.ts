/**
 * Private memory driven by a guest, as a VMM runs it: a sw-protected VM whose memory is a
 * guest_memfd (the private side) plus library shared memory (the shared side), the guest asking
 * for conversions with KVM_HC_MAP_GPA_RANGE and the VMM applying them with vm.convert(); and a
 * private access where no guest_memfd can serve it, exiting with a memory fault that the VMM
 * resolves by converting. The guest parts need a kernel (the lab's sw-protected one); the host
 * side runs on every backend with the VM type.
 */
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { KvmError, type GuestMemfd, type Kvm, type Mapping, type Vm } from '../../lib/index.js';
import { halt, mapGpaRange, program, reportAl, reportByte, storeByte } from '../../lib/selftest/programs.js';
import { expectCode, MiB, open, PAGE, simulated, unavailable } from '../helpers.js';

const CODE = 0x1000;
const DATA = 0x8000;

function privateVmMissing(): string | undefined {
  if (unavailable) return unavailable;
  using kvm = open();
  return kvm.capabilities().vmTypes.includes('sw-protected') ? undefined : 'requires KVM_X86_SW_PROTECTED_VM';
}
const missing = privateVmMissing();
const noGuest = simulated ? 'requires guest execution (the simulator cannot run guest code; the lab runs it)' : undefined;

describe.skipIf(missing)(`private memory a guest converts${missing ? ` (skipped: ${missing})` : ''}`, () => {
  let kvm: Kvm;
  let vm: Vm;
  let gmem: GuestMemfd;
  let shared: Mapping;
  beforeEach(() => {
    kvm = open();
    vm = kvm.createVm({ type: 'sw-protected' });
    gmem = vm.createGuestMemfd({ size: 2n * MiB });
    shared = vm.createSharedMemory({ size: 2n * MiB });
    vm.memslots.add({ guestPhysAddr: 0n, size: 2n * MiB, guestMemfd: gmem, userspace: shared });
  });
  afterEach(() => {
    vm.close();
    kvm.close();
  });

  test('host side: a conversion sets the attributes, frees the side left, and the books and events follow', () => {
    const events: string[] = [];
    vm.on('convert', (e) => events.push(`convert ${e.attributes} ${e.changed.map((c) => `${c.start}-${c.end}`)}`));
    vm.on('invalidate', (e) => events.push(`invalidate ${e.ranges.map((r) => `${r.gfnStart}-${r.gfnEnd}`)}`));
    shared.bytes.fill(0xaa, DATA, DATA + Number(PAGE));
    // Going private: the shared page is discarded (it reads zeros from then on).
    const toPrivate = vm.convert({ gpa: DATA, size: PAGE, toPrivate: true });
    expect(toPrivate).toMatchObject({ changed: [{ start: BigInt(DATA), end: BigInt(DATA) + PAGE, from: 0n }], discarded: PAGE });
    expect(vm.attributes.isPrivate(DATA)).toBe(true);
    expect(shared.view(DATA, 4).every((b) => b === 0)).toBe(true);
    expectCode(() => vm.memory.read(BigInt(DATA), 1), 'EFAULT');
    // Again: nothing changes, nothing is freed.
    expect(vm.convert({ gpa: DATA, size: PAGE, toPrivate: true })).toMatchObject({ changed: [], discarded: 0n });
    // Going shared: the guest_memfd page is punched, with its guest range invalidated.
    expect(vm.convert({ gpa: DATA, size: PAGE, toPrivate: false })).toMatchObject({ discarded: PAGE });
    expect([...vm.memory.read(BigInt(DATA), 2)]).toEqual([0, 0]);
    expect(events).toEqual([`convert 8 ${DATA}-${DATA + 4096}`, `convert 0 ${DATA}-${DATA + 4096}`, `invalidate ${DATA / 4096}-${DATA / 4096 + 1}`]);
    // Keeping both sides: discard: false.
    shared.bytes[DATA] = 0x11;
    expect(vm.convert({ gpa: DATA, size: PAGE, toPrivate: true }, { discard: false }).discarded).toBe(0n);
    expect(shared.bytes[DATA]).toBe(0x11);
  });

  test('host side: a refused conversion changes nothing; a hypercall needs its vCPU', () => {
    const e = (() => {
      try {
        vm.convert({ gpa: DATA + 1, size: PAGE, toPrivate: true });
      } catch (err) {
        return err;
      }
    })();
    expect(e).toBeInstanceOf(KvmError);
    expect((e as KvmError).code).toBe('EINVAL');
    expect(vm.attributes.count).toBe(0);
    expect(() => vm.convert({ reason: 'hypercall', nr: 'map-gpa-range', gpa: BigInt(DATA), pages: 1n, pageSize: PAGE, toPrivate: true, args: [] })).toThrow(TypeError);
    expect(() => vm.convert({ reason: 'hlt' } as never)).toThrow(TypeError);
  });

  test.skipIf(noGuest)(`the guest converts a page to private and back with MAP_GPA_RANGE${noGuest ? ` (skipped: ${noGuest})` : ''}`, async () => {
    vm.enableHypercallExits();
    shared.bytes[DATA] = 0xaa;
    shared.bytes.set(
      program(
        reportByte(DATA), // the shared page: 0xaa
        mapGpaRange(DATA, 1, true), reportAl, // to private: the VMM answers 0
        storeByte(DATA, 0x55), reportByte(DATA), // private data, read back: 0x55
        mapGpaRange(DATA, 1, false), reportAl, // back to shared
        reportByte(DATA), // the shared page, discarded when the page went private: 0
        halt,
      ),
      CODE,
    );
    using cpu = vm.createVcpu(0);
    cpu.setSregs({ cs: { base: 0n, selector: 0 }, ds: { base: 0n, selector: 0 } });
    cpu.setRegs({ rip: BigInt(CODE), rflags: 2n });
    const out: (number | string)[] = [];
    for (;;) {
      const exit = await cpu.run({ timeoutMs: 20_000 });
      if (exit.reason === 'io') out.push(exit.data[0]!);
      else if (exit.reason === 'hypercall' && exit.nr === 'map-gpa-range') {
        // Unanswered, the guest would read the kernel's default 0 (done): run() refuses.
        await expect(cpu.run({ timeoutMs: 20_000 })).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/hypercall 12 is unanswered/) });
        const c = vm.convert(exit, { vcpu: cpu });
        out.push(`${c.toPrivate ? 'private' : 'shared'} ${c.gpa}+${c.size}`);
        if (c.toPrivate) {
          // The host cannot reach the private page, and the shared side was freed.
          expectCode(() => vm.memory.read(BigInt(DATA), 1), 'EFAULT');
          expect(shared.bytes[DATA]).toBe(0);
        }
      } else {
        out.push(exit.reason);
        break;
      }
    }
    expect(out).toEqual([0xaa, `private ${DATA}+4096`, 0, 0x55, `shared ${DATA}+4096`, 0, 0, 'hlt']);
    expect(vm.attributes.count).toBe(0);
    expect(shared.bytes[DATA]).toBe(0); // the guest's private 0x55 never reached the shared side
  });

  test.skipIf(noGuest)(`a private access where no guest_memfd serves it: a memory-fault exit, resolved by converting${noGuest ? ` (skipped: ${noGuest})` : ''}`, async () => {
    // A second slot of shared memory only, its page private: the guest's read cannot be served.
    using plain = vm.createSharedMemory({ size: 2n * MiB });
    const base = 0x200000;
    using _slot = vm.memslots.add({ guestPhysAddr: BigInt(base), size: 2n * MiB, userspace: plain }); // (deleted before plain is unmapped)
    plain.bytes[0x100] = 0x77;
    vm.setPrivate(base, PAGE);
    shared.bytes.set(program(reportByte(0x100), halt), CODE); // out [ds:0x100]
    using cpu = vm.createVcpu(0);
    // Real mode cannot load a segment above 1 MiB, but the segment cache can hold one: ds
    // points at the second slot from the start.
    cpu.setSregs({ cs: { base: 0n, selector: 0 }, ds: { base: BigInt(base), selector: 0 } });
    cpu.setRegs({ rip: BigInt(CODE), rflags: 2n });
    const fault = await cpu.run({ timeoutMs: 20_000 });
    expect(fault).toEqual({ reason: 'memory-fault', gpa: BigInt(base), size: PAGE, private: true });
    // The fault asks for private memory, which this slot cannot give: the VMM converts the page
    // to shared instead, and the access goes on from the slot's shared memory.
    expect(vm.convert({ gpa: fault.reason === 'memory-fault' ? fault.gpa : 0n, size: PAGE, toPrivate: false }, { discard: false }).changed).toHaveLength(1);
    const read = await cpu.run({ timeoutMs: 20_000 });
    expect(read).toMatchObject({ reason: 'io', data: Uint8Array.of(0x77) });
    expect((await cpu.run({ timeoutMs: 20_000 })).reason).toBe('hlt');
  });

  test.skipIf(noGuest)(`punch-hole over private memory: the guest reads zeros where it wrote${noGuest ? ` (skipped: ${noGuest})` : ''}`, async () => {
    vm.setPrivate(DATA, PAGE);
    shared.bytes.set(program(storeByte(DATA, 0x66), reportByte(DATA), halt), CODE);
    shared.bytes.set(program(reportByte(DATA), halt), CODE + 0x100);
    using cpu = vm.createVcpu(0);
    const runFrom = async (ip: number) => {
      cpu.setSregs({ cs: { base: 0n, selector: 0 }, ds: { base: 0n, selector: 0 } });
      cpu.setRegs({ rip: BigInt(ip), rflags: 2n });
      const e = await cpu.run({ timeoutMs: 20_000 });
      expect((await cpu.run({ timeoutMs: 20_000 })).reason).toBe('hlt');
      return e.reason === 'io' ? e.data[0] : e.reason;
    };
    expect(await runFrom(CODE)).toBe(0x66);
    expect(gmem.punchHole(DATA, PAGE)).toHaveLength(1);
    expect(await runFrom(CODE + 0x100)).toBe(0);
    // Pre-fault of the private page maps it again (from the guest_memfd).
    expect(cpu.preFaultMemory(DATA, PAGE)).toEqual({ gpa: BigInt(DATA) + PAGE, size: 0n });
  });
});
