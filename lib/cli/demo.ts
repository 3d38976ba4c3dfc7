import { KvmError, type Kvm } from '../index.js';

const MiB = 1n << 20n;
const GiB = 1n << 30n;
const hex = (v: bigint) => `0x${v.toString(16)}`;

/** A narrated walk-through of guest_memfd on the given backend. */
export function demo(kvm: Kvm, out: (s: string) => void): number {
  const say = (s: string) => out(`${s}\n`);
  say(`1. Opened KVM on the ${kvm.backend} backend${kvm.fallbackReason ? ` (auto fell back: ${kvm.fallbackReason})` : ''}, API version ${kvm.apiVersion}.`);
  using vm = kvm.createVm();
  say(`2. Created a ${vm.type} VM. Its memory will come from a guest_memfd: a file whose pages`);
  say(`   belong to the guest, not an ordinary host buffer.`);

  using gmem = vm.createGuestMemfd({ size: 8n * MiB, mmap: true, initShared: true });
  say(`3. Created an 8 MiB guest_memfd (mmap + initShared, so the host may map and touch it).`);

  using low = vm.memslots.add({ guestPhysAddr: 0n, size: 2n * MiB, guestMemfd: gmem, guestMemfdOffset: 0n });
  using high = vm.memslots.add({ guestPhysAddr: 4n * GiB, size: 4n * MiB, guestMemfd: gmem, guestMemfdOffset: 4n * MiB });
  say(`4. Bound two memslots to that one file, around a hole (as a VMM skips the PCI hole):`);
  for (const s of [low, high]) say(`     ${s}`);
  say(`   Each file offset backs at most one guest frame; the kernel refuses a second binding:`);
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

  const ranges = gmem.punchHole(4n * MiB, 2n * MiB);
  say(`6. Punched a hole in file range [${hex(4n * MiB)}, ${hex(6n * MiB)}). KVM must forget the guest frames it backed;`);
  say(`   the library works them out per slot, clamped to the slot:`);
  for (const r of ranges) say(`     slot ${r.slot.id}: gfn [${hex(r.gfnStart)}, ${hex(r.gfnEnd)})  = guest [${hex(r.gfnStart * 4096n)}, ${hex(r.gfnEnd * 4096n)})`);
  const after = vm.memory.read(gpa, text.length);
  say(`   The guest address now reads ${after.every((b) => b === 0) ? 'all zeros' : 'data (unexpected!)'}.`);

  say(`7. Private/shared state changes through memory attributes, not memslot edits:`);
  try {
    vm.setPrivate(4n * GiB, 2n * MiB);
    say(`     set [${hex(4n * GiB)}, +2 MiB) private; attribute ranges: ${JSON.stringify(vm.attributes.ranges(), (_k, v) => (typeof v === 'bigint' ? hex(v) : v))}`);
  } catch (e) {
    if (!(e instanceof KvmError)) throw e;
    say(`     this host refuses KVM_SET_MEMORY_ATTRIBUTES (${e.code}): it has no private memory for this VM type.`);
  }
  say(`8. Done: slots deleted, mappings unmapped, files and VM closed, in that order.`);
  return 0;
}
