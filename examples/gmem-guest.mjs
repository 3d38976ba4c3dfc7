// A guest that runs from guest_memfd memory (needs /dev/kvm).
//
//   node examples/gmem-guest.mjs
//
// One 2 MiB gmem (mmap + initShared) backs guest memory at gpa 0. The host writes a tiny
// real-mode program and a message into it through a Mapping; the guest prints the message
// through I/O port 0x10, one exit per byte, then halts.
import { openKvm } from 'kvm-gmem';

const MiB = 1n << 20n;

let kvm;
try {
  kvm = openKvm({ backend: 'kvm' });
} catch (e) {
  // The simulator cannot run guest code: this one needs a kernel.
  console.error(`this example runs a guest: it needs /dev/kvm (${e.code ?? e.message})`);
  console.error('without one here: npx kvm-gmem lab run -- node examples/gmem-guest.mjs   (a real kernel under QEMU)');
  process.exit(1);
}
const vm = kvm.createVm(); // closing the VM closes its gmems, mappings and vCPUs
const gmem = vm.createGuestMemfd({ size: 2n * MiB, mmap: true, initShared: true });
const slot = vm.memslots.add({ guestPhysAddr: 0n, size: 2n * MiB, guestMemfd: gmem });
const mem = gmem.map();

const message = new TextEncoder().encode('Hello from a guest running in guest_memfd!\n');
mem.bytes.set(message, 0x2000);
mem.bytes.set([
  0xbe, 0x00, 0x20, //                 mov si, 0x2000
  0xb9, message.length, 0x00, //       mov cx, message.length
  0xac, //                             lodsb
  0xe6, 0x10, //                       out 0x10, al
  0xe2, 0xfb, //                       loop lodsb
  0xf4, //                             hlt
], 0x1000);

const cpu = vm.createVcpu(0);
cpu.setSregs({ cs: { base: 0n, selector: 0 }, ds: { base: 0n, selector: 0 } });
cpu.setRegs({ rip: 0x1000n, rflags: 2n });

for (;;) {
  const exit = await cpu.run({ timeoutMs: 1000 });
  if (exit.reason === 'io' && exit.port === 0x10) process.stdout.write(Buffer.from(exit.data));
  else {
    console.log(`guest stopped: ${exit.reason} (slot ${slot.id}, rip ${cpu.getRegs().rip.toString(16)})`);
    break;
  }
}
slot.delete();
vm.close();
kvm.close();
