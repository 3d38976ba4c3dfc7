/**
 * As an unprivileged user /dev/kvm is EACCES: backend 'kvm' throws a KvmError that says how
 * to get access, and 'auto' falls back to the simulator naming EACCES. Runs a child as
 * nobody (setpriv), which needs root.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { expect, test } from 'vitest';

const root = path.resolve(import.meta.dirname, '..', '..');
const isRoot = process.getuid?.() === 0;
const setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].find(existsSync);
const why = !existsSync('/dev/kvm') ? 'no /dev/kvm on this host' : !isRoot ? 'dropping privileges needs root' : !setpriv ? 'setpriv is not installed' : undefined;

test.skipIf(why)(`an unprivileged user: kvm gives EACCES with advice, auto falls back (${why ?? 'as nobody'})`, () => {
  const script = `
    import { openKvm, KvmError } from ${JSON.stringify(path.join(root, 'dist', 'index.js'))};
    const out = {};
    try { openKvm({ backend: 'kvm' }); out.kvm = 'opened'; }
    catch (e) { out.kvm = { isKvmError: e instanceof KvmError, code: e.code, message: e.message }; }
    const k = openKvm();
    out.auto = { backend: k.backend, fallbackReason: k.fallbackReason };
    k.close();
    console.log(JSON.stringify(out));`;
  const r = spawnSync(setpriv!, ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '--input-type=module', '-e', script], {
    cwd: '/',
    encoding: 'utf8',
    env: { ...process.env, KVM_GMEM_BACKEND: '' }, // 'auto' must decide by itself
  });
  expect(r.status, r.stderr).toBe(0);
  const out = JSON.parse(r.stdout);
  expect(out.kvm).toMatchObject({ isKvmError: true, code: 'EACCES' });
  expect(out.kvm.message).toMatch(/usermod -aG kvm/);
  expect(out.auto).toEqual({ backend: 'simulated', fallbackReason: 'EACCES: /dev/kvm' });
});
