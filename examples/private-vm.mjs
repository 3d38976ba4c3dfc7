// A private VM set up as a VMM sets it up, with conversions the guest drives.
//
//   node examples/private-vm.mjs               (the kernel where it has a sw-protected VM type,
//                                               else the simulator)
//   kvm-gmem lab run --kernel <sw-protected bzImage> -- node examples/private-vm.mjs
//
// Each RAM block has two sides (QEMU gives each a guest_memfd beside ordinary memory): a
// guest_memfd for private pages and shared memory for shared ones, one memslot over both.
// Memory attributes say which side a guest page is on. The guest asks for conversions with the
// KVM_HC_MAP_GPA_RANGE hypercall; KVM hands each to the VMM as an exit; vm.convert() sets the
// attributes, frees the side the page left and answers the guest.
import { openKvm } from 'kvm-gmem';

const MiB = 1n << 20n;
const CODE = 0x1000;
const DATA = 0x8000;

const kvm = openKvm();
if (!kvm.capabilities().vmTypes.includes('sw-protected')) {
  console.error(`this example needs a VM type with private memory (KVM_X86_SW_PROTECTED_VM); ${kvm.backend === 'kvm' ? 'this kernel has none' : 'the simulator has one: unset KVM_GMEM_PROFILE'}`);
  console.error('a kernel with it: kvm-gmem lab kernel build --config sw-protected, then kvm-gmem lab run --kernel <image> -- node examples/private-vm.mjs');
  process.exit(1);
}
const vm = kvm.createVm({ type: 'sw-protected' });
const gmem = vm.createGuestMemfd({ size: 2n * MiB }); // private side
const shared = vm.createSharedMemory({ size: 2n * MiB }); // shared side
vm.memslots.add({ guestPhysAddr: 0n, size: 2n * MiB, guestMemfd: gmem, userspace: shared });
vm.on('convert', ({ attributes, changed }) => {
  for (const c of changed) console.log(`  attributes: [0x${c.start.toString(16)}, 0x${c.end.toString(16)}) -> ${attributes ? 'private' : 'shared'}`);
});
vm.on('invalidate', ({ ranges }) => {
  for (const r of ranges) console.log(`  invalidated guest frames [0x${r.gfnStart.toString(16)}, 0x${r.gfnEnd.toString(16)})`);
});

const le32 = (v) => [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff];
// mov eax, 12 (KVM_HC_MAP_GPA_RANGE); mov ebx, gpa; mov ecx, pages; mov edx, attrs; vmmcall
const mapGpaRange = (gpa, toPrivate) => [0x66, 0xb8, ...le32(12), 0x66, 0xbb, ...le32(gpa), 0x66, 0xb9, ...le32(1), 0x66, 0xba, ...le32(toPrivate ? 0x10 : 0), 0x0f, 0x01, 0xd9];
const report = (addr) => [0xa0, addr & 0xff, addr >> 8, 0xe6, 0x10]; // mov al, [addr]; out 0x10, al
const store = (addr, v) => [0xc6, 0x06, addr & 0xff, addr >> 8, v]; // mov byte [addr], v

shared.bytes[DATA] = 0xaa;
shared.bytes.set([
  ...report(DATA), // shared: 0xaa
  ...mapGpaRange(DATA, true),
  ...store(DATA, 0x55), ...report(DATA), // private: 0x55
  ...mapGpaRange(DATA, false),
  ...report(DATA), // shared again: 0 (its shared page was freed when it went private)
  0xf4, // hlt
], CODE);

if (kvm.backend === 'kvm') {
  vm.enableHypercallExits();
  const cpu = vm.createVcpu(0);
  cpu.setSregs({ cs: { base: 0n, selector: 0 }, ds: { base: 0n, selector: 0 } });
  cpu.setRegs({ rip: BigInt(CODE), rflags: 2n });
  for (;;) {
    const exit = await cpu.run({ timeoutMs: 20_000 });
    if (exit.reason === 'io') console.log(`guest read 0x${exit.data[0].toString(16)} at 0x${DATA.toString(16)}`);
    else if (exit.reason === 'hypercall' && exit.nr === 'map-gpa-range') {
      console.log(`guest asks: [0x${exit.gpa.toString(16)}, +${exit.pages} pages) -> ${exit.toPrivate ? 'private' : 'shared'}`);
      vm.convert(exit, { vcpu: cpu });
    } else {
      console.log(`guest stopped: ${exit.reason}`);
      break;
    }
  }
} else {
  console.log(`(the simulator cannot run the guest: the VMM's side of its two conversions follows)`);
  vm.convert({ gpa: DATA, size: 4096n, toPrivate: true });
  console.log(`host read of the private page: ${(() => { try { vm.memory.read(DATA, 1); return 'allowed?'; } catch (e) { return e.code; } })()}`);
  vm.convert({ gpa: DATA, size: 4096n, toPrivate: false });
  console.log(`shared again, and zero: 0x${vm.memory.read(DATA, 1)[0].toString(16)}`);
}
vm.close();
kvm.close();
