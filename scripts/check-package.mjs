#!/usr/bin/env node
// The package as a user gets it: `npm pack` (with the prebuilt addon), publint and
// are-the-types-wrong on it, then installs of the tarball in fresh directories:
//   - with a PATH holding node, npm and sh only (no compiler, make or python): the install
//     succeeds without building, backend 'kvm' loads the prebuild (KvmError ENOENT naming
//     the device where /dev/kvm is absent), 'auto' falls back, the CLI runs;
//   - with --ignore-scripts: the simulator runs.
// Prints one line per check and `package: N passed, N failed`; exit status 1 on a failure.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const work = mkdtempSync(path.join(os.tmpdir(), 'kvm-gmem-package-'));
let passed = 0;
let failed = 0;
function check(name, fn) {
  try {
    const detail = fn();
    passed++;
    console.log(`ok ${name}${detail ? ` (${detail})` : ''}`);
  } catch (e) {
    failed++;
    console.log(`not ok ${name}: ${e.message.split('\n').slice(0, 12).join('\n    ')}`);
  }
}
function assert(cond, message) {
  if (!cond) throw new Error(message);
}
const run = (cmd, args, opts = {}) => spawnSync(cmd, args, { encoding: 'utf8', ...opts });

// npm pack runs prepack: the TypeScript build and the prebuild.
let tarball;
let files = [];
check('npm pack holds dist/, the linux-x64 prebuild, the sources for a fallback build, LICENSE; no source maps', () => {
  const r = run('npm', ['pack', '--json', '--pack-destination', work], { cwd: root });
  assert(r.status === 0, `npm pack failed: ${r.stderr}`);
  const info = JSON.parse(r.stdout.slice(r.stdout.indexOf('[')))[0];
  tarball = path.join(work, info.filename);
  files = info.files.map((f) => f.path);
  for (const f of ['prebuilds/linux-x64/kvm_gmem.napi.node', 'dist/index.js', 'dist/index.d.ts', 'dist/cli/main.js', 'native/addon.cc', 'binding.gyp', 'scripts/install.mjs', 'LICENSE', 'README.md']) {
    assert(files.includes(f), `${f} is not in the package`);
  }
  const maps = files.filter((f) => f.endsWith('.map'));
  assert(maps.length === 0, `source maps in the package: ${maps.slice(0, 3).join(', ')}`);
  const outside = files.filter((f) => /^(test|bench|lib|node_modules|build)\//.test(f));
  assert(outside.length === 0, `not for the package: ${outside.slice(0, 3).join(', ')}`);
  return `${files.length} files, ${(info.size / 1024).toFixed(0)} KiB packed, ${(info.unpackedSize / 1024).toFixed(0)} KiB unpacked`;
});

check('the published .d.ts has no @internal or _-prefixed members', () => {
  const bad = [];
  for (const f of files.filter((x) => x.endsWith('.d.ts'))) {
    const text = readFileSync(path.join(root, f), 'utf8');
    if (text.includes('@internal')) bad.push(`${f}: @internal`);
    const m = /^\s+(?:readonly\s+|static\s+|get\s+|set\s+)*(_\w+)[?(:]/m.exec(text);
    if (m) bad.push(`${f}: ${m[1]}`);
  }
  assert(bad.length === 0, bad.join('; '));
});

check('publint', () => {
  const r = run(path.join(root, 'node_modules', '.bin', 'publint'), ['run', '--strict', tarball], { cwd: root });
  assert(r.status === 0, `${r.stdout}${r.stderr}`);
  return r.stdout.trim().split('\n').pop();
});

check('are the types wrong (ESM-only package: node16 and bundler resolution)', () => {
  const r = run(path.join(root, 'node_modules', '.bin', 'attw'), [tarball, '--profile', 'esm-only', '--format', 'ascii'], { cwd: root });
  assert(r.status === 0, `${r.stdout}${r.stderr}`);
});

/** A directory with a package.json, for an install of the tarball. */
function project(name) {
  const dir = path.join(work, name);
  mkdirSync(dir);
  writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name, private: true, type: 'module' }));
  return dir;
}

// A PATH with node and npm only (and sh, which npm runs scripts with).
const bare = path.join(work, 'bin');
mkdirSync(bare);
symlinkSync(process.execPath, path.join(bare, 'node'));
symlinkSync(realpathSync('/bin/sh'), path.join(bare, 'sh'));
const npmCli = realpathSync(execFileSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim());
symlinkSync(npmCli, path.join(bare, 'npm'));
const bareEnv = { ...process.env, PATH: bare, npm_config_audit: 'false', npm_config_fund: 'false', npm_config_prefer_offline: 'true' };
for (const tool of ['cc', 'gcc', 'c++', 'g++', 'make', 'python3', 'python']) {
  assert(run('sh', ['-c', `command -v ${tool}`], { env: bareEnv }).status !== 0, `${tool} is on the bare PATH`);
}

const probe = `
import { openKvm, KvmError } from 'kvm-gmem';
const out = {};
try { const k = openKvm({ backend: 'kvm' }); out.kvm = { opened: k.backend }; k.close(); }
catch (e) { out.kvm = { kvmError: e instanceof KvmError, code: e.code, message: e.message }; }
const auto = openKvm({ backend: 'auto' });
const vm = auto.createVm();
const g = vm.createGuestMemfd({ size: 1n << 20n, mmap: true, initShared: true });
vm.memslots.add({ guestPhysAddr: 0n, size: 1n << 20n, guestMemfd: g });
vm.memory.write(0x10n, Uint8Array.of(1, 2, 3));
out.auto = { backend: auto.backend, reason: auto.fallbackReason, read: [...vm.memory.read(0x10n, 3)] };
vm.close(); auto.close();
console.log(JSON.stringify(out));`;

const kvmHere = existsSync('/dev/kvm');
check('installed with node and npm only on PATH: no build, the prebuild loads, auto falls back, the CLI runs', () => {
  const dir = project('bare');
  const r = run('npm', ['install', tarball], { cwd: dir, env: bareEnv });
  assert(r.status === 0, `npm install failed:\n${r.stdout}${r.stderr}`);
  const pkg = path.join(dir, 'node_modules', 'kvm-gmem');
  assert(!existsSync(path.join(pkg, 'build')), 'the install built the addon from source');
  const p = run('node', ['--input-type=module', '-e', probe], { cwd: dir, env: bareEnv });
  assert(p.status === 0, `probe failed: ${p.stderr}`);
  const out = JSON.parse(p.stdout);
  if (kvmHere) assert(out.kvm.opened === 'kvm' || out.kvm.code === 'EACCES', `backend kvm: ${JSON.stringify(out.kvm)}`);
  else {
    assert(out.kvm.kvmError && out.kvm.code === 'ENOENT' && out.kvm.message.includes('/dev/kvm'), `backend kvm without /dev/kvm: ${JSON.stringify(out.kvm)}`);
    assert(out.auto.backend === 'simulated' && /ENOENT/.test(out.auto.reason), `auto: ${JSON.stringify(out.auto)}`);
  }
  assert(JSON.stringify(out.auto.read) === '[1,2,3]', `read back ${JSON.stringify(out.auto.read)}`);
  const v = run(path.join(dir, 'node_modules', '.bin', 'kvm-gmem'), ['--version'], { cwd: dir, env: bareEnv });
  const version = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')).version;
  assert(v.status === 0 && v.stdout.trim().endsWith(version), `kvm-gmem --version: ${v.stdout}${v.stderr}`);
  return `kvm: ${out.kvm.opened ?? out.kvm.code}; auto: ${out.auto.backend}`;
});

check('a source build that cannot run (no compiler on PATH) warns and the install still succeeds', () => {
  const dir = project('nocompiler');
  const r = run('npm', ['install', '--foreground-scripts', tarball], { cwd: dir, env: { ...bareEnv, KVM_GMEM_BUILD_FROM_SOURCE: '1' } });
  assert(r.status === 0, `npm install failed:\n${r.stdout}${r.stderr}`);
  assert(/could not build the native addon from source/.test(r.stdout + r.stderr), `no warning:\n${r.stdout}${r.stderr}`);
});

check('installed with --ignore-scripts: the simulator runs', () => {
  const dir = project('noscripts');
  const r = run('npm', ['install', '--ignore-scripts', tarball], { cwd: dir, env: bareEnv });
  assert(r.status === 0, `npm install failed:\n${r.stdout}${r.stderr}`);
  const p = run('node', ['--input-type=module', '-e', probe.replace("backend: 'auto'", "backend: 'simulated'")], { cwd: dir, env: bareEnv });
  assert(p.status === 0, `probe failed: ${p.stderr}`);
  const out = JSON.parse(p.stdout);
  assert(out.auto.backend === 'simulated' && JSON.stringify(out.auto.read) === '[1,2,3]', JSON.stringify(out.auto));
});

rmSync(work, { recursive: true, force: true });
console.log(`package: ${passed} passed, ${failed} failed`);
process.exitCode = failed ? 1 : 0;
