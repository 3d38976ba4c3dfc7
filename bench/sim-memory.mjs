// Memory of the simulator: what it costs follows the pages touched, not the sizes named.
// Targets:
//   a simulated 1 TiB guest_memfd with 1 MiB written grows RSS by < 64 MiB
//   a 16 GiB mmap+initShared guest_memfd mapped whole, 1 MiB written across it, punched and
//     unmapped: <= 2 s and <= 128 MiB of RSS growth
//   a 64 GiB slot on such a guest_memfd is accepted, and reads back what was written at its far end
import { openKvm } from '../dist/index.js';

const MiB = 1n << 20n;
const GiB = 1n << 30n;
const TiB = 1n << 40n;
const PAGE = 4096n;
const rss = () => process.memoryUsage().rss;
const settle = () => {
  globalThis.gc?.();
  globalThis.gc?.();
};
const results = [];
const verdict = (ok) => (ok ? 'OK' : 'OVER');

{
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
  const grew = (rss() - before) / 2 ** 20;
  const ok = grew < 64;
  console.log(`sim memory: 1 TiB gmem, 1 MiB written: RSS grew ${grew.toFixed(1)} MiB (target < 64 MiB) ${verdict(ok)}`);
  results.push({ name: 'sim-memory.1TiB', rssGrowthMiB: Number(grew.toFixed(1)), targetMiB: 64, ok });
  slot.delete();
  map.close();
  vm.close();
  kvm.close();
}

{
  settle();
  const before = rss();
  let peak = before;
  const sample = () => (peak = Math.max(peak, rss()));
  const t0 = performance.now();
  const kvm = openKvm({ backend: 'simulated' });
  const vm = kvm.createVm();
  const size = 16n * GiB;
  const gmem = vm.createGuestMemfd({ size, mmap: true, initShared: true });
  const map = gmem.map(); // whole: 16 GiB
  // 1 MiB written across it: 256 pages, one every 64 MiB.
  const page = new Uint8Array(Number(PAGE)).fill(0x77);
  const stride = size / 256n;
  for (let i = 0n; i < 256n; i++) map.view(Number(i * stride), Number(PAGE)).set(page);
  sample();
  const backOk = map.view(Number(255n * stride), 1)[0] === 0x77;
  gmem.punchHole(0n, size);
  const punchedOk = map.view(Number(255n * stride), 1)[0] === 0;
  sample();
  map.close();
  const ms = performance.now() - t0;
  sample();
  const grew = (peak - before) / 2 ** 20;
  const ok = backOk && punchedOk && ms <= 2000 && grew <= 128;
  console.log(`sim memory: 16 GiB gmem mapped whole, 1 MiB written across it, punched, unmapped: ${ms.toFixed(0)} ms (target <= 2000), RSS peak +${grew.toFixed(1)} MiB (target <= 128) ${verdict(ok)}`);
  results.push({ name: 'sim-memory.16GiB', ms, rssPeakGrowthMiB: Number(grew.toFixed(1)), targetMs: 2000, targetMiB: 128, ok });
  vm.close();
  kvm.close();
}

{
  const t0 = performance.now();
  const kvm = openKvm({ backend: 'simulated' });
  const vm = kvm.createVm();
  const size = 64n * GiB;
  const gmem = vm.createGuestMemfd({ size, mmap: true, initShared: true });
  const slot = vm.memslots.add({ guestPhysAddr: 1n << 36n, size, guestMemfd: gmem }); // its host memory: the gmem's own mapping
  const far = (1n << 36n) + size - 16n;
  vm.memory.write(far, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16));
  const back = [...vm.memory.read(far, 16)];
  const viaMapping = slot.userspace?.view(Number(size - 16n), 1)[0];
  const ok = back.join() === '1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16' && viaMapping === 1;
  const ms = performance.now() - t0;
  console.log(`sim memory: a 64 GiB slot on an mmap+initShared gmem: accepted, its far end reads back what was written (${ms.toFixed(0)} ms) ${verdict(ok)}`);
  results.push({ name: 'sim-memory.64GiB-slot', ms, ok });
  slot.delete();
  vm.close();
  kvm.close();
}

if (process.env.BENCH_JSON) for (const r of results) console.log(JSON.stringify({ bench: 'sim-memory', ...r }));
process.exitCode = results.every((r) => r.ok) ? 0 : 1;
