/**
 * `kvm-gmem lab run` as a user runs it (the built CLI in a child process): a Debian kernel
 * booted under QEMU runs a command with the host's files, directory, environment and a
 * writable share, and every way it can fail gives the error with its fix. Runs where QEMU is
 * installed and this is not already the lab.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { resolveKernel, type LabKernel } from '../../lib/lab/index.js';
import { findQemu } from '../../lib/lab/qemu.js';
import { inLab } from '../helpers.js';

const root = path.resolve(import.meta.dirname, '..', '..');
const cli = path.join(root, 'dist', 'cli', 'main.js');

function qemuMissing(): string | undefined {
  if (inLab) return 'already inside the lab';
  try {
    findQemu();
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}
const missing = qemuMissing();

/** Runs the CLI; resolves with its exit status and output. */
function kvmGmem(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ status: number | null; out: string; err: string; ms: number }> {
  return new Promise((resolve) => {
    const started = performance.now();
    const child = spawn(process.execPath, [cli, ...args], { cwd: root, env });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (status) => resolve({ status, out, err, ms: performance.now() - started }));
  });
}

test('without QEMU: the error names the package to install, exit status 1, nothing on stdout', async () => {
  const r = await kvmGmem(['lab', 'run', '--', 'uname', '-r'], { ...process.env, PATH: '/nonexistent', KVM_GMEM_QEMU: '' });
  expect(r.status).toBe(1);
  expect(r.out).toBe('');
  expect(r.err).toMatch(/qemu-system-x86_64 is not installed/);
  expect(r.err).toMatch(/fix: install it: sudo apt-get install qemu-system-x86/);
});

test('a --kernel that is no kernel: a usage-style error with the accepted forms', async () => {
  const r = await kvmGmem(['lab', 'run', '--kernel', '/nonexistent/bzImage', '--', 'true']);
  expect(r.status).toBe(1);
  expect(r.err).toMatch(/no kernel image at \/nonexistent\/bzImage/);
  expect(r.err).toMatch(/debian:unstable/);
});

describe.skipIf(missing)(`the lab on Debian unstable${missing ? ` (skipped: ${missing})` : ''}`, () => {
  let kernel: LabKernel;
  const debian = () => (kernel ??= resolveKernel('debian:unstable'));

  test("lab run: the command sees the host's files, directory and environment; output, exit status and a writable share come back", async () => {
    const share = mkdtempSync(path.join(os.tmpdir(), 'kvm-gmem-lab-test '));
    writeFileSync(path.join(share, 'from-host'), 'host data\n');
    const script = 'uname -r; pwd; echo "$LAB_TEST_MARK"; cat "$1/from-host"; echo guest > "$1/from-guest"; test -c /dev/kvm && echo kvm; echo to-stderr >&2; exit 7';
    const r = await kvmGmem(['lab', 'run', '--writable', share, '--', 'sh', '-c', script, 'sh', share], { ...process.env, LAB_TEST_MARK: "it's here" });
    expect(r.status, r.err).toBe(7);
    expect(r.out).toBe(`${debian().release}\n${root}\nit's here\nhost data\nkvm\n`);
    expect(r.err).toMatch(/to-stderr/);
    expect(readFileSync(path.join(share, 'from-guest'), 'utf8')).toBe('guest\n');
    console.log(`lab run (boot, command, power off): ${(r.ms / 1000).toFixed(1)} s`);
  });

  test('a kernel without KVM: the error says so and shows the console, exit status 1', async () => {
    // Debian's kernel with its modules tree less KVM's (9p, virtio and overlayfs load; kvm.ko
    // and kvm-amd.ko are not there): the guest boots, and has no /dev/kvm.
    const tree = debian().modules!;
    const withoutKvm = mkdtempSync(path.join(os.tmpdir(), 'kvm-gmem-lab-nokvm-'));
    const link = (dir: string) => {
      for (const e of readdirSync(path.join(tree, dir), { withFileTypes: true })) {
        const rel = path.join(dir, e.name);
        if (e.isDirectory()) {
          mkdirSync(path.join(withoutKvm, rel));
          link(rel);
        } else if (!/^kvm/.test(e.name)) symlinkSync(path.join(tree, rel), path.join(withoutKvm, rel));
      }
    };
    link('.');
    const r = await kvmGmem(['lab', 'run', '--kernel', debian().image, '--modules', withoutKvm, '--', 'true']);
    rmSync(withoutKvm, { recursive: true, force: true });
    expect(r.status).toBe(1);
    expect(r.err).toMatch(/has no usable \/dev\/kvm/);
    expect(r.err).toMatch(/fix: .*--modules/);
  });

  test('--timeout stops a command that does not end: exit status 124', async () => {
    const r = await kvmGmem(['lab', 'run', '--timeout', '5', '--', 'sleep', '1000']);
    expect(r.status).toBe(124);
    expect(r.err).toMatch(/did not end within 5 s/);
  });

  test('a file that is not a kernel: the boot error carries what QEMU said', async () => {
    const junk = path.join(mkdtempSync(path.join(os.tmpdir(), 'kvm-gmem-lab-')), 'bzImage');
    writeFileSync(junk, 'not a kernel\n'.repeat(100));
    const r = await kvmGmem(['lab', 'run', '--kernel', junk, '--', 'true']);
    expect(r.status).toBe(1);
    expect(r.err).toMatch(/did not reach the command/);
    expect(existsSync(junk)).toBe(true);
  });

  test('caps --kernel prints that kernel\'s profile, equal to the one the package ships for it', async () => {
    const r = await kvmGmem(['caps', '--kernel', 'debian:unstable', '--json']);
    expect(r.status, r.err).toBe(0);
    const measured = JSON.parse(r.out).profile;
    expect(measured.release).toBe(debian().release);
    const shipped = spawnSync('ls', [path.join(root, 'profiles')], { encoding: 'utf8' }).stdout.split('\n').filter((f) => f.endsWith('.json'))
      .map((f) => JSON.parse(readFileSync(path.join(root, 'profiles', f), 'utf8')))
      .find((p) => p.release === measured.release);
    expect(shipped, `profiles/ has no profile of ${measured.release}: add this one (kvm-gmem caps --kernel debian:unstable --json)`).toBeDefined();
    expect({ ...measured, name: undefined }).toEqual({ ...shipped, name: undefined });
  });
});
