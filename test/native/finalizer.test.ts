/** Objects dropped without close() are closed by the FinalizationRegistry (and mappings by
 * their buffer's finalizer). Runs in a child with --expose-gc. */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { expect, test } from 'vitest';
import { kvmUnavailable, noSharedGmem, skipped } from '../helpers.js';

const root = path.resolve(import.meta.dirname, '..', '..');

// (The VMs' memory is mmap + initShared gmems, mapped and bound.)
const finalizerSkip = kvmUnavailable ?? noSharedGmem;

test.skipIf(finalizerSkip)(`dropped VMs, gmems, vCPUs and mappings release their fds and mappings after GC${skipped(noSharedGmem)}`, () => {
  const script = `
    import { readdirSync, readFileSync } from 'node:fs';
    import { openKvm } from ${JSON.stringify(path.join(root, 'dist', 'index.js'))};
    const fds = () => readdirSync('/proc/self/fd').length;
    const lines = (tag) => readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.includes(tag)).length;
    const maps = () => lines('[kvm-gmem]');
    const runAreas = () => lines('kvm-vcpu');
    const kvm = openKvm({ backend: 'kvm' });
    const base = { fds: fds(), maps: maps(), runAreas: runAreas() };
    (function drop() {
      for (let i = 0; i < 200; i++) {
        const vm = kvm.createVm();
        const g = vm.createGuestMemfd({ size: 1 << 21, mmap: true, initShared: true });
        g.map().bytes[0] = i;
        vm.createVcpu(0);
      }
    })();
    const peak = { fds: fds(), maps: maps() };
    // vCPUs that ran (their kvm_run area is mapped), in VMs whose memslot has the gmem's own mapping
    // (in a function of its own: the suspended module body must not hold the last VM)
    peak.runAreas = await (async function runAndDrop() {
      const held = []; // until all have run, so that the peak is all of them
      for (let i = 0; i < 20; i++) {
        const vm = kvm.createVm();
        held.push(vm);
        const g = vm.createGuestMemfd({ size: 1 << 21, mmap: true, initShared: true });
        vm.memslots.add({ guestPhysAddr: 0n, size: 1n << 21n, guestMemfd: g });
        vm.memory.write(0x1000n, Uint8Array.of(0xf4)); // hlt
        const cpu = vm.createVcpu(0);
        cpu.setSregs({ cs: { base: 0n, selector: 0 } });
        cpu.setRegs({ rip: 0x1000n, rflags: 2n });
        const exit = await cpu.run({ timeoutMs: 5000 });
        if (exit.reason !== 'hlt') throw new Error('unexpected exit ' + exit.reason);
      }
      return runAreas();
    })();
    for (let i = 0; i < 20 && (fds() > base.fds || maps() > base.maps || runAreas() > base.runAreas); i++) {
      globalThis.gc();
      await new Promise((r) => setTimeout(r, 20));
    }
    console.log(JSON.stringify({ base, peak, after: { fds: fds(), maps: maps(), runAreas: runAreas() } }));
  `;
  const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { cwd: root, encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  const { base, peak, after } = JSON.parse(r.stdout);
  expect(peak.fds).toBeGreaterThan(base.fds + 100); // they really were open
  expect(peak.maps).toBeGreaterThan(base.maps + 100);
  expect(peak.runAreas).toBe(base.runAreas + 20);
  expect(after).toEqual(base);
});
