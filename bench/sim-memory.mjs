// Memory of the simulator: a simulated 1 TiB guest_memfd with 1 MiB written must grow RSS by
// less than 64 MiB (its cost follows the pages touched, not the file size).
import { openKvm } from '../dist/index.js';

const MiB = 1n << 20n;
const TiB = 1n << 40n;
const rss = () => process.memoryUsage().rss;
const settle = () => {
  globalThis.gc?.();
  globalThis.gc?.();
};

settle();
const before = rss();
const kvm = openKvm({ backend: 'simulated' });
const vm = kvm.createVm();
const gmem = vm.createGuestMemfd({ size: TiB, mmap: true, initShared: true });
// Half of it through a mapping in the middle of the file, half through a memslot at its end.
const map = gmem.map({ offset: TiB / 2n, length: MiB / 2n });
map.bytes.fill(0xa5);
const slot = vm.memslots.add({ guestPhysAddr: 1n << 32n, size: 2n * MiB, guestMemfd: gmem, guestMemfdOffset: TiB - 2n * MiB });
vm.memory.write(1n << 32n, new Uint8Array(Number(MiB / 2n)).fill(0x5a));
gmem.allocate(0n, 64n * MiB); // allocation alone stores nothing
gmem.punchHole(TiB / 4n, TiB / 4n); // a punch over a quarter terabyte touches nothing
settle();
const after = rss();
const grew = (after - before) / 2 ** 20;
const ok = grew < 64;
console.log(`sim memory: 1 TiB gmem, 1 MiB written: RSS grew ${grew.toFixed(1)} MiB (target < 64 MiB) ${ok ? 'OK' : 'OVER'}`);
slot.delete();
map.close();
vm.close();
kvm.close();
export const result = { name: 'sim-memory', rssGrowthMiB: Number(grew.toFixed(1)), targetMiB: 64, ok };
if (process.env.BENCH_JSON) console.log(JSON.stringify(result));
process.exitCode = ok ? 0 : 1;
