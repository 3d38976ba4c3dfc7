#!/usr/bin/env node
// npm run bench: builds the C baseline, then runs each bench/*.mjs in its own process (with --expose-gc) against the
// built package (dist/), prints what each prints, and writes the JSON lines they emit to
// bench/out/results.json. Exit status 1 if any benchmark missed its target.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

// The C baseline, built from source in the same run.
mkdirSync(path.join(root, 'bench', 'out'), { recursive: true });
for (const name of ['baseline', 'slots']) {
  const cc = spawnSync('c++', ['-O2', '-std=c++17', '-pthread', '-o', path.join(root, 'bench', 'out', name), path.join(root, 'bench', 'c', `${name}.cc`)], { stdio: 'inherit' });
  if (cc.status !== 0) {
    console.error(`bench: cannot build the C baseline (bench/c/${name}.cc)`);
    process.exit(1);
  }
}
// The same loop as an N-API module, for bench/lab-slots.mjs to run inside the Node process
// (Node's own headers; where they are missing that baseline is left out, saying so).
const nodeInclude = [path.resolve(process.execPath, '..', '..', 'include', 'node')].find((d) => existsSync(path.join(d, 'node_api.h')));
if (nodeInclude) {
  const cc = spawnSync('c++', ['-O2', '-std=c++17', '-shared', '-fPIC', `-I${nodeInclude}`, '-o', path.join(root, 'bench', 'out', 'slots-inproc.node'), path.join(root, 'bench', 'c', 'slots-inproc.cc')], { stdio: 'inherit' });
  if (cc.status !== 0) {
    console.error('bench: cannot build bench/c/slots-inproc.cc');
    process.exit(1);
  }
} else console.log(`bench: no node_api.h beside ${process.execPath}: lab slots runs without its in-process C baseline`);
const only = process.argv.slice(2);
const files = readdirSync(path.join(root, 'bench')).filter((f) => f.endsWith('.mjs') && (!only.length || only.some((o) => f.includes(o)))).sort();
const results = [];
let failed = 0;
for (const f of files) {
  const r = spawnSync(process.execPath, ['--expose-gc', path.join(root, 'bench', f)], { cwd: root, encoding: 'utf8', env: { ...process.env, BENCH_JSON: '1' } });
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('{')) results.push(JSON.parse(line));
    else if (line) console.log(line);
  }
  if (r.stderr) process.stderr.write(r.stderr);
  if (r.status !== 0) failed++;
}
mkdirSync(path.join(root, 'bench', 'out'), { recursive: true });
writeFileSync(path.join(root, 'bench', 'out', 'results.json'), JSON.stringify(results, null, 2) + '\n');
console.log(`bench: ${files.length} run, ${failed} missed their target; JSON in bench/out/results.json`);
process.exitCode = failed ? 1 : 0;
