// Which guest ranges does a punch-hole invalidate? (Any backend.)
//
//   node examples/invalidation-ranges.mjs
//
// One gmem backs three memslots at file offsets 0, 1 GiB and 3 GiB (the kernel review case).
// Punching [512 MiB, 3.5 GiB) out of the file must zap exactly three guest frame ranges,
// each clamped to its slot; the VM also emits them as an 'invalidate' event.
import { openKvm } from 'kvm-gmem';

const GiB = 1n << 30n;
const MiB = 1n << 20n;
const hex = (v) => `0x${v.toString(16)}`;

const kvm = openKvm();
console.log(`backend: ${kvm.backend}${kvm.fallbackReason ? ` (${kvm.fallbackReason})` : ''}`);
const vm = kvm.createVm();
const gmem = vm.createGuestMemfd({ size: 4n * GiB });
const slots = [
  vm.memslots.add({ guestPhysAddr: 0n, size: 1n * GiB, guestMemfd: gmem, guestMemfdOffset: 0n }),
  vm.memslots.add({ guestPhysAddr: 4n * GiB, size: 2n * GiB, guestMemfd: gmem, guestMemfdOffset: 1n * GiB }),
  vm.memslots.add({ guestPhysAddr: 8n * GiB, size: 1n * GiB, guestMemfd: gmem, guestMemfdOffset: 3n * GiB }),
];
for (const s of slots) console.log(`  ${s}`);

vm.on('invalidate', ({ offset, length, ranges }) => console.log(`invalidate event: file [${hex(offset)}, ${hex(offset + length)}) -> ${ranges.length} ranges`));
const ranges = gmem.punchHole(512n * MiB, 3n * GiB);
for (const r of ranges) {
  console.log(`  slot ${r.slot.id}: gfn [${hex(r.gfnStart)}, ${hex(r.gfnEnd)})  guest [${hex(r.gfnStart << 12n)}, ${hex(r.gfnEnd << 12n)})`);
}
// Both ways: a guest address to its file offset, and back.
const t = vm.memslots.translate(5n * GiB);
console.log(`gpa ${hex(5n * GiB)} -> slot ${t.slot.id}, file offset ${hex(t.offset)} -> gpa ${hex(vm.memslots.reverse(gmem, t.offset).gpa)}`);
for (const s of slots) s.delete();
vm.close();
kvm.close();
