/** Objects dropped without close() are closed by the FinalizationRegistry (and mappings by
 * their buffer's finalizer). Runs in a child with --expose-gc. */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { expect, test } from 'vitest';
import { kvmUnavailable as unavailable } from '../helpers.js';

const root = path.resolve(import.meta.dirname, '..', '..');

test.skipIf(unavailable)('dropped VMs, gmems and mappings release their fds and mappings after GC', () => {
  const script = `
    import { readdirSync, readFileSync } from 'node:fs';
    import { openKvm } from ${JSON.stringify(path.join(root, 'dist', 'index.js'))};
    const fds = () => readdirSync('/proc/self/fd').length;
    const maps = () => readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.endsWith('[kvm-gmem]')).length;
    const kvm = openKvm({ backend: 'kvm' });
    const base = { fds: fds(), maps: maps() };
    (function drop() {
      for (let i = 0; i < 200; i++) {
        const vm = kvm.createVm();
        const g = vm.createGuestMemfd({ size: 1 << 21, mmap: true, initShared: true });
        g.map().bytes[0] = i;
      }
    })();
    const peak = { fds: fds(), maps: maps() };
    for (let i = 0; i < 20 && (fds() > base.fds || maps() > base.maps); i++) {
      globalThis.gc();
      await new Promise((r) => setTimeout(r, 20));
    }
    console.log(JSON.stringify({ base, peak, after: { fds: fds(), maps: maps() } }));
  `;
  const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { cwd: root, encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  const { base, peak, after } = JSON.parse(r.stdout);
  expect(peak.fds).toBeGreaterThan(base.fds + 100); // they really were open
  expect(peak.maps).toBeGreaterThan(base.maps + 100);
  expect(after).toEqual(base);
});
