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
// vitest's CLI, by its package's bin entry (its exports do not name the file).
const vitestPackage = createRequire(import.meta.url).resolve('vitest/package.json');
const vitest = path.join(path.dirname(vitestPackage), JSON.parse(readFileSync(vitestPackage, 'utf8')).bin.vitest);
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

/** A sink that prefixes each line (lab runs go side by side: one QEMU per host core). */
function prefixed(tag, stream) {
  let partial = '';
  return {
    write(chunk) {
      const text = partial + chunk.toString();
      const parts = text.split('\n');
      partial = parts.pop();
      for (const line of parts) stream.write(`[${tag}] ${line}\n`);
    },
    flush() {
      if (partial) stream.write(`[${tag}] ${partial}\n`);
      partial = '';
    },
  };
}

async function labSuite(lab, spec) {
  const json = path.join(reports, `lab-${spec.replace(/[^\w.-]+/g, '_')}.json`);
  rmSync(json, { force: true });
  const tag = spec.startsWith('debian:') ? spec : path.basename(spec);
  const out = prefixed(tag, process.stdout);
  const err = prefixed(tag, process.stderr);
  // `lab debian:7.2.13 (debian:unstable, 7.2.13+deb14-amd64)`, `lab bzImage-swprot (7.2.13)`
  const label = (release) => {
    if (!release) return `lab ${tag}`;
    return spec.startsWith('debian:') ? `lab debian:${release.split('+')[0]} (${spec}, ${release})` : `lab ${tag} (${release})`;
  };
  let name = label(undefined);
  try {
    const kernel = lab.resolveKernel(spec, undefined, (m) => out.write(`${m}\n`));
    name = label(kernel.release);
    out.write(`the kvm project in the lab, on ${spec}: this host has no usable /dev/kvm\n`);
    const r = await lab.labRun({
      kernel, writable: [reports], stdout: out, stderr: err, log: (m) => out.write(`${m}\n`),
      argv: [process.execPath, vitest, 'run', '--project', 'kvm', ...withoutProjects(), '--reporter=./test/reporters/progress.ts', '--reporter=json', `--outputFile.json=${json}`],
    });
    out.write(`lab: boot ${(r.bootMs / 1000).toFixed(1)} s, suite ${(r.commandMs / 1000).toFixed(0)} s, exit status ${r.status}\n`);
    // A suite that ended without its report was killed (137: SIGKILL, the guest's OOM killer
    // among others): the guest kernel's last console lines say by what.
    if (r.status !== 0 && !existsSync(json)) err.write(`lab: the suite ended with exit status ${r.status} and no report; the guest console's last lines:\n${r.consoleTail}\n`);
    return { name: label(r.release), counts: counts(json, r.status) };
  } catch (e) {
    if (!(e instanceof lab.LabError)) throw e;
    err.write(`lab: ${e.message}\n  fix: ${e.hint}\n${e.log ?? ''}\n`);
    // Without QEMU the lab cannot run here: the kvm project is not run, said as such.
    if (e.code === 'LAB_NO_QEMU') return { name, line: `${name}: not run: ${e.message} (${e.hint})` };
    return { name, counts: { passed: 0, failed: 1, skipped: 0, note: e.message } };
  } finally {
    out.flush();
    err.flush();
  }
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
  // Up to as many at once as this host has cores (each QEMU runs its guest on one thread).
  const parallel = Math.max(1, Math.min(kernels.length, os.availableParallelism()));
  const results = new Array(kernels.length);
  let next = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < kernels.length) {
      const i = next++;
      results[i] = await labSuite(lab, kernels[i]);
    }
  }));
  for (const r of results.filter(Boolean)) {
    if (r.line) lines.push(r.line);
    else report(r.name, r.counts);
  }
}

console.log(`\n${lines.join('\n')}`);
if (!process.env.KVM_GMEM_TEST_REPORTS) rmSync(reports, { recursive: true, force: true });
process.exitCode = failed > 0 || lines.length === 0 ? 1 : 0;
