#!/usr/bin/env node
// npm test: the vitest suite, and its real-kernel half in the lab where this host has no KVM.
//
// On a host whose /dev/kvm opens, every vitest project runs here. Without one, the `kvm`
// project (conformance, data path, guests, differential, selftest cases on the real kernel)
// runs inside the lab instead: Debian unstable's kernel under QEMU (`kvm-gmem lab run`), and
// the other projects run here. Each run prints one line: `<run>: N passed, N failed, N skipped`.
//
//   npm test                          everything
//   npm test -- test/conformance      only those files (here and in the lab)
//   npm test -- --project sim         only that project (the lab runs when kvm is asked for)
// KVM_GMEM_LAB_KERNELS=debian:unstable,/path/bzImage picks the lab's kernels ('off': none);
// KVM_GMEM_TEST_REPORTS=DIR keeps each run's JSON report there.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const vitest = createRequire(import.meta.url).resolve('vitest/vitest.mjs');
const args = process.argv.slice(2);

function kvmUsable() {
  try {
    closeSync(openSync('/dev/kvm', 'r+'));
    return true;
  } catch {
    return false;
  }
}

/** The vitest projects named by --project in args (empty: all). */
function requestedProjects() {
  const out = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--project') out.push(args[++i]);
    else if (args[i].startsWith('--project=')) out.push(args[i].slice(10));
  }
  return out;
}
const withoutProjects = () => args.filter((a, i) => a !== '--project' && args[i - 1] !== '--project' && !a.startsWith('--project='));

function run(cmd, argv, env = {}) {
  return new Promise((resolve) => {
    const child = spawn(cmd, argv, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
    child.on('close', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

/** The count line of a vitest JSON report; a run that wrote none counts as one failure. */
function counts(file, status) {
  if (!existsSync(file)) return { passed: 0, failed: 1, skipped: 0, note: `no report (exit status ${status})` };
  const r = JSON.parse(readFileSync(file, 'utf8'));
  let failed = r.numFailedTests;
  if (!r.success && failed === 0) failed = Math.max(1, r.numFailedTestSuites ?? 0);
  return { passed: r.numPassedTests, failed, skipped: r.numPendingTests + (r.numTodoTests ?? 0) };
}

const reports = process.env.KVM_GMEM_TEST_REPORTS ? path.resolve(process.env.KVM_GMEM_TEST_REPORTS) : mkdtempSync(path.join(os.tmpdir(), 'kvm-gmem-test-'));
mkdirSync(reports, { recursive: true });
const lines = [];
let failed = 0;
const report = (name, c) => {
  failed += c.failed;
  lines.push(`${name}: ${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped${c.note ? ` (${c.note})` : ''}`);
};

const projects = requestedProjects();
const local = kvmUsable();
// Without KVM here, every project but kvm runs here ('!kvm' is vitest's negated filter).
const hostProjects = local ? projects : projects.length ? projects.filter((p) => p !== 'kvm') : ['!kvm'];
const labWanted = !local && (projects.length === 0 || projects.includes('kvm'));

if (local || hostProjects.length) {
  const json = path.join(reports, 'host.json');
  const status = await run(process.execPath, [vitest, 'run', ...hostProjects.flatMap((p) => ['--project', p]), ...withoutProjects(),
    '--reporter=default', '--reporter=json', `--outputFile.json=${json}`]);
  report('host', counts(json, status));
}

if (labWanted) {
  const kernels = (process.env.KVM_GMEM_LAB_KERNELS ?? 'debian:unstable').split(',').map((k) => k.trim()).filter((k) => k && k !== 'off');
  if (!kernels.length) lines.push('lab: not run (KVM_GMEM_LAB_KERNELS=off): the kvm project did not run');
  let lab;
  try {
    lab = await import(path.join(root, 'dist', 'lab', 'index.js'));
  } catch (e) {
    for (const k of kernels) report(`lab ${k}`, { passed: 0, failed: 1, skipped: 0, note: `dist/ is not built (npm run build): ${e.message}` });
    kernels.length = 0;
  }
  for (const spec of kernels) {
    const json = path.join(reports, `lab-${spec.replace(/[^\w.-]+/g, '_')}.json`);
    rmSync(json, { force: true });
    let name = `lab ${spec}`;
    try {
      const kernel = lab.resolveKernel(spec, undefined, (m) => console.log(m));
      if (kernel.release) name += ` (${kernel.release})`;
      console.log(`\n== the kvm project in the lab, on ${spec}: this host has no usable /dev/kvm`);
      const r = await lab.labRun({
        kernel, writable: [reports], log: (m) => console.log(m),
        argv: [process.execPath, vitest, 'run', '--project', 'kvm', ...withoutProjects(), '--reporter=./test/reporters/progress.ts', '--reporter=json', `--outputFile.json=${json}`],
      });
      console.log(`lab: boot ${(r.bootMs / 1000).toFixed(1)} s, suite ${(r.commandMs / 1000).toFixed(0)} s, exit status ${r.status}`);
      report(name, counts(json, r.status));
    } catch (e) {
      if (!(e instanceof lab.LabError)) throw e;
      console.log(`lab: ${e.message}\n  fix: ${e.hint}${e.log ? `\n${e.log}` : ''}`);
      // Without QEMU the lab cannot run here: the kvm project is not run, said as such.
      if (e.code === 'LAB_NO_QEMU') lines.push(`${name}: not run: ${e.message} (${e.hint})`);
      else report(name, { passed: 0, failed: 1, skipped: 0, note: e.message });
    }
  }
}

console.log(`\n${lines.join('\n')}`);
if (!process.env.KVM_GMEM_TEST_REPORTS) rmSync(reports, { recursive: true, force: true });
process.exitCode = failed > 0 || lines.length === 0 ? 1 : 0;
