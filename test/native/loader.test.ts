/** The addon loader and NODE_DEBUG tracing, observed from child processes (both are per-process). */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { kvmUnavailable as unavailable } from '../helpers.js';

const root = path.resolve(import.meta.dirname, '..', '..');
const dist = path.join(root, 'dist', 'index.js');

function child(script: string, env: Record<string, string>) {
  return spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: root, env: { ...process.env, ...env }, encoding: 'utf8' });
}

describe('addon loader', () => {
  test('the built package exists (npm install runs `npm run build`)', () => {
    expect(existsSync(dist), 'dist/ missing: run npm run build').toBe(true);
  });

  test("KVM_GMEM_ADDON pointing nowhere: 'kvm' throws a KvmError listing what was tried; 'auto' falls back and says why, in full", () => {
    const r = child(
      `import { openKvm, KvmError } from ${JSON.stringify(dist)};
       try { openKvm({ backend: 'kvm' }); } catch (e) { console.log(JSON.stringify({ kvmError: e instanceof KvmError, code: e.code, errno: e.errno, message: e.message })); }
       const kvm = openKvm({ backend: 'auto' }); console.log(JSON.stringify({ backend: kvm.backend, reason: kvm.fallbackReason })); kvm.close();`,
      { KVM_GMEM_ADDON: '/nonexistent/kvm_gmem.node' },
    );
    expect(r.status, r.stderr).toBe(0);
    const [thrown, auto] = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(thrown).toMatchObject({ kvmError: true, code: 'ELIBACC', errno: 79 });
    expect(thrown.message).toMatch(/cannot load the native addon; tried: \/nonexistent\/kvm_gmem\.node: not found/);
    expect(auto.backend).toBe('simulated');
    expect(auto.reason).toMatch(/no native addon: .*\/nonexistent\/kvm_gmem\.node: not found.*KVM_GMEM_ADDON/);
  });

  test.skipIf(unavailable)('NODE_DEBUG=kvm-gmem traces each syscall with arguments and result', () => {
    const r = child(
      `import { openKvm } from ${JSON.stringify(dist)};
       const kvm = openKvm({ backend: 'kvm' }); const vm = kvm.createVm();
       try { vm.createGuestMemfd({ size: 4095 }); } catch {}
       vm.close(); kvm.close();`,
      { NODE_DEBUG: 'kvm-gmem' },
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/KVM-GMEM \d+: kvm\.open\("\/dev\/kvm"\) -> \d+/);
    expect(r.stderr).toMatch(/kvm\.createVm\(\d+, 0\) -> \d+/);
    expect(r.stderr).toMatch(/kvm\.createGuestMemfd\(\d+, 4095n, 0n\) -> EINVAL/);
  });
});
