/** The examples/ scripts run as a user would run them (against the built package). */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { expect, test } from 'vitest';
import { kvmUnavailable, noGmem, noSharedGmem, skipped } from '../helpers.js';

const root = path.resolve(import.meta.dirname, '..', '..');
const run = (file: string) => spawnSync(process.execPath, [path.join(root, 'examples', file)], { cwd: root, encoding: 'utf8', timeout: 30_000 });

// (gmem-guest.mjs runs its guest from an mmap + initShared gmem on a default VM; invalidation-ranges.mjs
// binds gmem slots on a default VM, on the kernel where /dev/kvm opens, else on the simulator.)
const guestSkip = kvmUnavailable ?? noSharedGmem;

test.skipIf(guestSkip)(`gmem-guest.mjs: the guest prints its message from gmem${skipped(noSharedGmem)}`, () => {
  const r = run('gmem-guest.mjs');
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/^Hello from a guest running in guest_memfd!\nguest stopped: hlt/);
});

test('conversion-loop.mjs: conversions merge back to one range; private host access is EFAULT', () => {
  const r = run('conversion-loop.mjs');
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/attribute ranges now: 1 /);
  expect(r.stdout).toMatch(/host read of a private page: EFAULT/);
});

test.skipIf(noGmem)(`invalidation-ranges.mjs: exactly the three clamped ranges${skipped(noGmem)}`, () => {
  const r = run('invalidation-ranges.mjs');
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/slot 0: gfn \[0x20000, 0x40000\)\s+guest/);
  expect(r.stdout).toMatch(/slot 1: gfn \[0x100000, 0x180000\)/);
  expect(r.stdout).toMatch(/slot 2: gfn \[0x200000, 0x220000\)/);
});
