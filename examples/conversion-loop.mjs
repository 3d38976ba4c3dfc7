// Private/shared conversions in the simulator (no /dev/kvm needed).
//
//   node examples/conversion-loop.mjs
//
// A sw-protected VM converts pages between private and shared with memory attributes, as a
// confidential guest would ask its VMM to. The library keeps the attribute map merged (one
// entry per run of equal attributes) and reports every change as a 'convert' event; host
// access to a private page is refused with EFAULT.
import { openKvm, KvmError } from 'kvm-gmem';

const PAGE = 4096n;
const MiB = 1n << 20n;

const kvm = openKvm({ backend: 'simulated' });
const vm = kvm.createVm({ type: 'sw-protected' });
vm.on('convert', ({ attributes, changed }) => {
  const to = attributes ? 'private' : 'shared';
  for (const c of changed) console.log(`  convert [${c.start.toString(16)}, ${c.end.toString(16)}) -> ${to}`);
});

// The slot's private side is a guest_memfd; its shared side, shared memory the library maps.
const gmem = vm.createGuestMemfd({ size: 4n * MiB });
const shared = vm.createSharedMemory({ size: 4n * MiB });
const slot = vm.memslots.add({ guestPhysAddr: 0n, size: 4n * MiB, guestMemfd: gmem, userspace: shared });

console.log('the guest converts 4 MiB to private:');
vm.setPrivate(0n, 4n * MiB);
for (let i = 0n; i < 8n; i++) {
  console.log(`round ${i}: page ${i * 2n} shared for I/O, then private again`);
  vm.setShared(i * 2n * PAGE, PAGE);
  vm.memory.write(i * 2n * PAGE, new TextEncoder().encode(`bounce buffer ${i}`));
  vm.setPrivate(i * 2n * PAGE, PAGE);
}
console.log(`attribute ranges now: ${vm.attributes.count} (one merged private range)`);

try {
  vm.memory.read(0n, 16);
} catch (e) {
  if (!(e instanceof KvmError)) throw e;
  console.log(`host read of a private page: ${e.code} (${e.message})`);
}
vm.setShared(0n, 4n * MiB);
console.log(`back to shared: ${vm.attributes.count} ranges; slot ${slot.id} still bound`);
slot.delete();
vm.close(); // its shared memory and guest_memfd with it
kvm.close();
