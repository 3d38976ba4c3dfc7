/**
 * The addon in several worker_threads at once: context-aware (per-environment state, no
 * shared mutable state), correct under concurrency, and a worker's exit closes what it left
 * open (the env cleanup hook).
 */
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { expect, test } from 'vitest';
import { fdCount, kvmUnavailable, mapCount, noSharedGmem, skipped } from '../helpers.js';

const dist = path.resolve(import.meta.dirname, '..', '..', 'dist', 'index.js');

function runWorker(code: string, data: unknown): Promise<unknown> {
  const src = `const { parentPort, workerData } = require('node:worker_threads');
    import(${JSON.stringify(dist)}).then(async (lib) => { ${code} }).catch((e) => parentPort.postMessage({ error: String(e && e.stack || e) }));`;
  return new Promise((resolve, reject) => {
    const w = new Worker(src, { eval: true, workerData: data });
    let result: unknown;
    w.on('message', (m) => (result = m));
    w.on('error', reject);
    w.on('exit', (code) => (code === 0 ? resolve(result) : reject(new Error(`worker exit ${code}`))));
  });
}

// (The workers create, bind and map mmap + initShared gmems.)
const workersSkip = kvmUnavailable ?? noSharedGmem;

test.skipIf(workersSkip)(`4 workers x 1,000 operations each: correct and leak-free${skipped(noSharedGmem)}`, async () => {
  const base = { fds: fdCount(), maps: mapCount() };
  const code = `
    const { openKvm } = lib;
    const MiB = 1n << 20n;
    const kvm = openKvm({ backend: 'kvm' });
    const vm = kvm.createVm();
    let ops = 0, wrong = 0;
    for (let i = 0; i < 125; i++) {
      const g = vm.createGuestMemfd({ size: 2n * MiB, mmap: true, initShared: true });  ops++;
      const slot = vm.memslots.add({ guestPhysAddr: BigInt(i) * 2n * MiB, size: 2n * MiB, guestMemfd: g });  ops++;
      const v = (workerData.id * 16 + i) & 0xff;
      vm.memory.write(slot.guestPhysAddr + 4096n, Uint8Array.of(v));  ops++;
      const m = g.map();  ops++;
      if (m.bytes[4096] !== v) wrong++;  ops++;
      g.punchHole(0, 2n * MiB);  ops++;
      if (vm.memory.read(slot.guestPhysAddr + 4096n, 1)[0] !== 0) wrong++;  ops++;
      slot.delete();  ops++;
      m.close(); g.close();
    }
    vm.close(); kvm.close();
    parentPort.postMessage({ ops, wrong });`;
  const results = (await Promise.all([0, 1, 2, 3].map((id) => runWorker(code, { id })))) as { ops: number; wrong: number; error?: string }[];
  for (const r of results) {
    expect(r.error).toBeUndefined();
    expect(r).toEqual({ ops: 1000, wrong: 0 });
  }
  expect({ fds: fdCount(), maps: mapCount() }).toEqual(base);
});

test.skipIf(workersSkip)(`a worker that exits without closing: its fds and mappings are released by the addon's cleanup hook${skipped(noSharedGmem)}`, async () => {
  const base = { fds: fdCount(), maps: mapCount() };
  const code = `
    const kvm = lib.openKvm({ backend: 'kvm' });
    const vm = kvm.createVm();
    const g = vm.createGuestMemfd({ size: 1n << 21n, mmap: true, initShared: true });
    vm.memslots.add({ guestPhysAddr: 0n, size: 1n << 21n, guestMemfd: g });
    g.map().bytes[0] = 1;
    const fs = require('node:fs');
    parentPort.postMessage({ fds: fs.readdirSync('/proc/self/fd').length });`; // and exit, leaving it all open
  const r = (await runWorker(code, {})) as { fds: number; error?: string };
  expect(r.error).toBeUndefined();
  expect(r.fds).toBeGreaterThan(base.fds); // it really held them
  expect({ fds: fdCount(), maps: mapCount() }).toEqual(base);
});
