/**
 * Fuzzing: >= 100,000 calls of the raw and typed APIs with random and hostile arguments, in a
 * child process that must exit normally. A crash fails the test and names the call that made
 * it. The arguments include getters with side effects (unmapping, closing, deleting slots,
 * closing raw fds and reusing their numbers), forged objects of the library's prototypes and
 * proxies of real ones; the victims' listeners throw or call back into their VM; one call in a
 * hundred transfers a mapping's buffer away. KVM_GMEM_FUZZ_CALLS=<n> (and KVM_GMEM_FUZZ_SEED)
 * run a longer or different fuzz.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect, test } from 'vitest';
import { inLab, simulated, unavailable } from '../helpers.js';

const root = path.resolve(import.meta.dirname, '..', '..');
const CALLS = Number(process.env.KVM_GMEM_FUZZ_CALLS ?? 100_000);
const SEED = Number(process.env.KVM_GMEM_FUZZ_SEED ?? 20261121);

function fuzz(backend: string) {
  const dir = mkdtempSync(path.join(tmpdir(), 'kvm-gmem-fuzz-'));
  const last = path.join(dir, 'lastcall');
  const r = spawnSync(process.execPath, [path.join(root, 'test', 'fuzz', 'child.mjs'), last, String(CALLS), String(SEED), backend], {
    cwd: dir, // nothing of the project's within reach of a relative path
    encoding: 'utf8',
    env: { ...process.env, KVM_GMEM_BACKEND: '' },
    // (Under TCG, with other lab kernels sharing the cores, 100,000 calls can take 10+ minutes.)
    timeout: inLab ? 1_700_000 : 600_000,
    maxBuffer: 1 << 26,
  });
  const lastCall = readFileSync(last, 'utf8').trim();
  const crashed = r.status !== 0 || r.signal !== null;
  expect(crashed, `the fuzz child died (status ${r.status}, signal ${r.signal}) during call: ${lastCall}\n${r.stderr.slice(-2000)}`).toBe(false);
  const counts = JSON.parse(r.stdout.trim().split('\n').pop()!);
  console.log(`fuzz ${backend}: ${JSON.stringify(counts)}`);
  expect(counts.calls).toBe(CALLS);
  // Every failure is one of the library's clear errors.
  expect(counts.others, 'errors that are not KvmError/TypeError/RangeError').toEqual([]);
  // The hostile shapes ran: getters with side effects inside calls, and listeners called back.
  // (Events, and so listener calls, need gmem slots: a kernel without guest_memfd on default
  // VMs, like 6.12, has none to invalidate.)
  if (CALLS >= 10_000) expect([counts.effectsRun > 0, counts.listenerCalls > 0], 'effects run, listener calls').toEqual([true, counts.gmemSlots]);
  return counts;
}

// The backend of this project: the kernel through the addon (kvm), or the simulator.
const backend = simulated ? 'simulated' : 'kvm';
test.skipIf(unavailable)(`fuzz the ${backend === 'kvm' ? 'native' : 'simulated'} backend: ${CALLS} calls, no crash${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  fuzz(backend);
}, 1_800_000);
