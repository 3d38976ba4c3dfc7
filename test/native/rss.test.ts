/**
 * Memory over 10,000 full cycles (create a gmem, bind a slot, map, write, unmap, delete the
 * slot, close): fds and gmem mappings back to baseline, RSS growth under 10 MiB. Measured in a
 * child with --expose-gc (garbage the program could still collect does not count) and a 1 MiB
 * young generation: at the default size V8 grows its semi-spaces to 16 MiB each under this
 * allocation rate and keeps them (heapTotal 9 -> 43 MiB with heapUsed flat at 4 MiB), which
 * is V8's sizing policy, not memory the library holds.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { expect, test } from 'vitest';
import { kvmUnavailable, noSharedGmem, skipped } from '../helpers.js';

const root = path.resolve(import.meta.dirname, '..', '..');

// (Each cycle creates, binds and maps an mmap + initShared gmem.)
test.skipIf(kvmUnavailable ?? noSharedGmem)(`10,000 create/bind/map/unmap/delete/close cycles: 0 fds, 0 mappings, RSS < 10 MiB${skipped(noSharedGmem)}`, () => {
  const script = `
    import { readdirSync, readFileSync } from 'node:fs';
    import { openKvm } from ${JSON.stringify(path.join(root, 'dist', 'index.js'))};
    const fds = () => readdirSync('/proc/self/fd').length;
    const maps = () => readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.includes('[kvm-gmem]')).length;
    const rss = () => { globalThis.gc(); globalThis.gc(); return process.memoryUsage().rss; };
    const heap = () => process.memoryUsage().heapUsed;
    const kvm = openKvm({ backend: 'kvm' });
    const vm = kvm.createVm();
    const cycle = (i) => {
      const g = vm.createGuestMemfd({ size: 1n << 21n, mmap: true, initShared: true });
      const s = vm.memslots.add({ guestPhysAddr: 1n << 32n, size: 1n << 21n, guestMemfd: g });
      const m = g.map();
      m.bytes[i & 0xfff] = i;
      vm.memory.write(1n << 32n, Uint8Array.of(i & 0xff));
      m.close();
      s.delete();
      g.close();
    };
    // The event loop turns every 500 cycles, as in any real program: Node frees an external
    // buffer's bookkeeping in a setImmediate, which a loop that never yields would pile up.
    const run = async (n) => { for (let i = 0; i < n; i++) { cycle(i); if (i % 500 === 0) await new Promise((r) => setImmediate(r)); } };
    await run(10000); // warm up: JIT, V8 heap pages, allocator pools
    const base = { fds: fds(), maps: maps(), rss: rss(), heap: heap() };
    await run(10000);
    const after = { fds: fds(), maps: maps(), rss: rss(), heap: heap() };
    console.log(JSON.stringify({ base, after, rssGrowthMiB: (after.rss - base.rss) / 2 ** 20 }));
    vm.close(); kvm.close();`;
  const r = spawnSync(process.execPath, ['--expose-gc', '--max-semi-space-size=1', '--input-type=module', '-e', script], { cwd: root, encoding: 'utf8', env: { ...process.env, KVM_GMEM_BACKEND: '' } });
  expect(r.status, r.stderr).toBe(0);
  const { base, after, rssGrowthMiB } = JSON.parse(r.stdout);
  console.log(`10k cycles: fds ${base.fds} -> ${after.fds}, gmem mappings ${base.maps} -> ${after.maps}, RSS ${rssGrowthMiB >= 0 ? "+" : ""}${rssGrowthMiB.toFixed(2)} MiB, JS heap ${(base.heap / 2 ** 20).toFixed(1)} -> ${(after.heap / 2 ** 20).toFixed(1)} MiB`);
  expect(after.fds).toBe(base.fds);
  expect(after.maps).toBe(base.maps);
  expect(rssGrowthMiB).toBeLessThan(10);
});
