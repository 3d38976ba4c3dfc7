import { KvmError, type Kvm } from '../index.js';
import { printString } from '../selftest/programs.js';

const MiB = 1n << 20n;
const GiB = 1n << 30n;
const hex = (v: bigint) => `0x${v.toString(16)}`;

/** A narrated walk-through of guest_memfd on the given backend. */
export async function demo(kvm: Kvm, out: (s: string) => void): Promise<number> {
  const say = (s: string) => out(`${s}\n`);
  const where = kvm.backend === 'kvm' ? 'the real kernel (/dev/kvm)' : `the simulator${kvm.fallbackReason ? ` (no KVM here: ${kvm.fallbackReason})` : ''}`;
  say(`1. Opened KVM on ${where}, API version ${kvm.apiVersion}.`);
  using vm = kvm.createVm();
  say(`2. Created a ${vm.type} VM. Its memory will come from a guest_memfd: a file whose pages`);
  say(`   belong to the guest rather than to an ordinary host buffer.`);

  using gmem = vm.createGuestMemfd({ size: 8n * MiB, mmap: true, initShared: true });
  say(`3. Created an 8 MiB guest_memfd (mmap + initShared, so the host may map and touch it).`);

  using low = vm.memslots.add({ guestPhysAddr: 0n, size: 2n * MiB, guestMemfd: gmem, guestMemfdOffset: 0n });
  using high = vm.memslots.add({ guestPhysAddr: 4n * GiB, size: 4n * MiB, guestMemfd: gmem, guestMemfdOffset: 4n * MiB });
  say(`4. Bound two memslots to that one file, around a hole (as a VMM skips the PCI hole):`);
  for (const s of [low, high]) say(`     ${s}`);
  say(`   Each file offset backs at most one guest frame, so a second binding is refused:`);
  try {
    vm.memslots.add({ guestPhysAddr: 8n * GiB, size: 2n * MiB, guestMemfd: gmem, guestMemfdOffset: 5n * MiB });
  } catch (e) {
    say(`     ${(e as KvmError).message}`);
  }

  const text = new TextEncoder().encode('hello from the host');
  const gpa = 4n * GiB + 0x1000n;
  vm.memory.write(gpa, text);
  const t = vm.memslots.translate(gpa)!;
  using map = gmem.map();
  const seen = new TextDecoder().decode(map.view(t.offset!, text.length));
  say(`5. Wrote "${seen}" at guest address ${hex(gpa)}: slot ${t.slot.id} translates it to file offset ${hex(t.offset!)},`);
  say(`   and a host mapping of the guest_memfd sees the same bytes there.`);

  const greeting = new TextEncoder().encode('hi from the guest');
  vm.memory.write(0x2000n, greeting);
  vm.memory.write(0x1000n, printString(0x2000, greeting.length));
  if (kvm.backend === 'kvm') {
    using cpu = vm.createVcpu(0);
    cpu.setSregs({ cs: { base: 0n, selector: 0 }, ds: { base: 0n, selector: 0 } });
    cpu.setRegs({ rip: 0x1000n, rflags: 2n });
    const chars: number[] = [];
    for (;;) {
      const exit = await cpu.run({ timeoutMs: 2000 });
      if (exit.reason !== 'io') {
        say(`6. Ran a real-mode guest from slot ${low.id}: it read bytes at 0x2000 out of the guest_memfd and`);
        say(`   wrote them to I/O port 0x10, one exit each: "${String.fromCharCode(...chars)}" (then ${exit.reason}).`);
        break;
      }
      chars.push(...exit.data);
    }
  } else {
    say(`6. (On a KVM host a real-mode guest would now read bytes out of slot ${low.id}; the simulator`);
    say(`   cannot execute guest code, so this step is skipped.)`);
  }

  const ranges = gmem.punchHole(4n * MiB, 2n * MiB);
  say(`7. Punched a hole in file range [${hex(4n * MiB)}, ${hex(6n * MiB)}). KVM must forget the guest frames it`);
  say(`   backed; the library works them out per slot, clamped to the slot:`);
  for (const r of ranges) say(`     slot ${r.slot.id}: gfn [${hex(r.gfnStart)}, ${hex(r.gfnEnd)}) = guest [${hex(r.gfnStart * 4096n)}, ${hex(r.gfnEnd * 4096n)})`);
  const after = vm.memory.read(gpa, text.length);
  say(`   The guest address now reads ${after.every((b) => b === 0) ? 'all zeros' : 'data (unexpected!)'}.`);

  say(`8. Private/shared state changes through memory attributes, not memslot edits (which are slow):`);
  using pvm = kvm.capabilities().vmTypes.includes('sw-protected') ? kvm.createVm({ type: 'sw-protected' }) : undefined;
  if (pvm) {
    pvm.setPrivate(0n, 2n * MiB);
    pvm.setShared(MiB, 4096n);
    const show = pvm.attributes.ranges().map((r) => `[${hex(r.start)}, ${hex(r.end)})`).join(' ');
    say(`     on a sw-protected VM: 2 MiB set private, one page back to shared -> private ranges ${show}`);
    say(`     (adjacent ranges of equal attributes merge: one entry per range, not per page).`);
  } else {
    try {
      vm.setPrivate(4n * GiB, 2n * MiB);
    } catch (e) {
      if (!(e instanceof KvmError)) throw e;
      say(`     this host refuses KVM_SET_MEMORY_ATTRIBUTES (${e.code}) and has no private-memory VM type.`);
    }
  }
  say(`9. Done: slots deleted, mappings unmapped, files and VMs closed, in that order.`);
  return 0;
}
