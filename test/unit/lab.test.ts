/** The lab's parts that need no QEMU: the initramfs format, Debian versions, module order. */
import { spawnSync } from 'node:child_process';
import { describe, expect, test } from 'vitest';
import { cpio } from '../../lib/lab/cpio.js';
import { compareDebianVersions, parseDebianSpec } from '../../lib/lab/debian.js';
import { INIT_SCRIPT } from '../../lib/lab/init.sh.js';
import { runInitramfs, shellQuote } from '../../lib/lab/initramfs.js';
import { moduleDepends, moduleName } from '../../lib/lab/modules.js';

/** Reads a newc archive back: [name, mode, data] per entry (the kernel's own unpacker, in small). */
function unpack(b: Buffer): { name: string; mode: number; rdev: [number, number]; data: Buffer }[] {
  const out = [];
  let at = 0;
  for (;;) {
    expect(b.toString('latin1', at, at + 6)).toBe('070701');
    const field = (i: number) => parseInt(b.toString('latin1', at + 6 + i * 8, at + 14 + i * 8), 16);
    const [mode, size, rmaj, rmin, namesize] = [field(1), field(6), field(9), field(10), field(11)];
    const name = b.toString('latin1', at + 110, at + 110 + namesize - 1);
    at = Math.ceil((at + 110 + namesize) / 4) * 4;
    const data = b.subarray(at, at + size);
    at = Math.ceil((at + size) / 4) * 4;
    if (name === 'TRAILER!!!') return out;
    out.push({ name, mode, rdev: [rmaj, rmin] as [number, number], data });
  }
}

describe('initramfs', () => {
  test('cpio newc: directories, files, symlinks and device nodes read back as written, 4-byte aligned', () => {
    const archive = cpio([
      { kind: 'dir', path: 'lab' },
      { kind: 'file', path: 'lab/x', data: 'abc', mode: 0o755 },
      { kind: 'file', path: '/lab/odd-name-length', data: new Uint8Array([1, 2, 3, 4, 5]) },
      { kind: 'symlink', path: 'bin/sh', target: 'busybox' },
      { kind: 'chardev', path: 'dev/console', major: 5, minor: 1 },
    ]);
    expect(archive.length % 4).toBe(0);
    const e = unpack(archive);
    expect(e.map((x) => x.name)).toEqual(['lab', 'lab/x', 'lab/odd-name-length', 'bin/sh', 'dev/console']);
    expect(e[0]!.mode).toBe(0o040755);
    expect([e[1]!.mode, e[1]!.data.toString()]).toEqual([0o100755, 'abc']);
    expect([...e[2]!.data]).toEqual([1, 2, 3, 4, 5]);
    expect([e[3]!.mode, e[3]!.data.toString()]).toEqual([0o120777, 'busybox']);
    expect([e[4]!.mode, e[4]!.rdev]).toEqual([0o020600, [5, 1]]);
  });

  test('the command, its environment and the shares survive any bytes: quoted for the init shell', () => {
    const argv = ['printf', '%s|', "it's", 'a b', '$HOME', '`x`', '"q"', ''];
    const env = { A: "x'y", B: '$(echo no)', C: 'multi\nline' };
    const files = Object.fromEntries(unpack(runInitramfs({ argv, cwd: "/tmp/a dir/it's", env, shares: [['rw0', '/w dir']], require: 'kvm' })).map((x) => [x.name, x.data.toString()]));
    // What /init does with them, in a shell:
    const r = spawnSync('/bin/sh', ['-c', `${files['lab/env']}\n${files['lab/argv']}\nLAB_CWD=''; ${files['lab/config']!.replace(/^\. .*$/m, '')}\n"$@"; echo; printf '%s|' "$A" "$B" "$C" "$LAB_CWD"`], { encoding: 'utf8' });
    expect(r.stdout).toBe(`it's|a b|$HOME|\`x\`|"q"||\nx'y|$(echo no)|multi\nline|/tmp/a dir/it's|`);
    expect(files['lab/shares']).toBe('rw0 /w dir\n');
    expect(shellQuote("'")).toBe(`''\\'''`);
  });

  test("/init is a valid shell script", () => {
    const r = spawnSync('/bin/sh', ['-n'], { input: INIT_SCRIPT, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
  });
});

describe('kernels', () => {
  test('debian: specs name a suite or a version', () => {
    expect(parseDebianSpec('unstable')).toEqual({ suite: 'unstable' });
    expect(parseDebianSpec('sid')).toEqual({ suite: 'unstable' });
    expect(parseDebianSpec('trixie-backports')).toEqual({ suite: 'trixie-backports' });
    expect(parseDebianSpec('7.2')).toEqual({ version: '7.2' });
    expect(parseDebianSpec('6.12.117')).toEqual({ version: '6.12.117' });
    expect(parseDebianSpec('Bad Spec')).toBeUndefined();
  });

  test("Debian version order (dpkg's): epochs, ~ before anything, numbers by value", () => {
    const sorted = ['6.1.176-1', '6.12.117-1', '7.2.13-1', '7.3.4-1~bpo13+1', '7.3.4-1', '1:0.1-1'];
    expect([...sorted].reverse().sort(compareDebianVersions)).toEqual(sorted);
    expect(compareDebianVersions('7.2.13-1', '7.2.13-1')).toBe(0);
    expect(compareDebianVersions('7.2.9-1', '7.2.13-1')).toBeLessThan(0);
  });

  test('modules: names as the kernel spells them, dependencies from the modinfo string', () => {
    expect(moduleName('/x/kvm-amd.ko.xz')).toBe('kvm_amd');
    expect(moduleName('9pnet_virtio.ko')).toBe('9pnet_virtio');
    const ko = Buffer.concat([Buffer.from('\x7fELF junk\0license=GPL\0'), Buffer.from('depends=kvm,ccp\0'), Buffer.from('name=kvm_amd\0')]);
    expect(moduleDepends(ko)).toEqual(['kvm', 'ccp']);
    expect(moduleDepends(Buffer.from('\0depends=\0name=kvm\0'))).toEqual([]);
  });
});
