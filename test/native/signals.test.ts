/**
 * Signals arriving during KVM calls. KVM_CREATE_VM fails with EINTR when a signal is pending
 * while it registers its MMU notifier (the kernel gives up taking every VMA lock of a process,
 * and a Node process has many): under a CPU profiler (SIGPROF) every createVm failed in the
 * lab until the addon retried it, as QEMU does. Run in a child, whose profiler signals only it.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect, test } from 'vitest';

const root = path.resolve(import.meta.dirname, '..', '..');

test('createVm under a CPU profiler (SIGPROF every 100 us): 20 VMs made and closed, no EINTR', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'kvm-gmem-prof-'));
  try {
    const script = `
      import { openKvm } from ${JSON.stringify(path.join(root, 'dist', 'index.js'))};
      const kvm = openKvm({ backend: 'kvm' });
      let made = 0;
      for (let i = 0; i < 20; i++) {
        const vm = kvm.createVm();
        vm.createVcpu(0);
        vm.close();
        made++;
      }
      kvm.close();
      console.log('made ' + made);
    `;
    const r = spawnSync(process.execPath, ['--cpu-prof', '--cpu-prof-dir', dir, '--cpu-prof-interval', '100', '--input-type=module', '-e', script], {
      cwd: root, encoding: 'utf8', timeout: 600_000,
    });
    expect(r.stderr).not.toMatch(/EINTR/);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe('made 20');
    // The profiler did run (its signals were there to interrupt).
    expect(readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'))).toHaveLength(1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
