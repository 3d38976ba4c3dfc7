#!/usr/bin/env node
// The layers of lib/ and the direction of their imports (ARCHITECTURE.md), checked:
//
//   base <- rules <- raw (raw/sim) <- typed (lib/*.ts) <- selftest <- cli
//   lab: imports only lab (and Node); imported only by cli
//
// A file may import from its own layer and the layers below it, never above. No runtime
// import may form a cycle. (Type-only imports are erased when compiled; the typed layer's
// classes name each other's types through them: gmem.vm is a Vm.)
//
//   node scripts/check-layers.mjs            exit 1 and a list of violations, or a summary
//   node scripts/check-layers.mjs --self-test  plants a violation and checks that it is caught
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, mkdirSync, cpSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ORDER = ['base', 'rules', 'raw', 'typed', 'selftest', 'cli'];

export function layerOf(rel) {
  const [top, sub] = rel.split('/');
  if (sub === undefined) return 'typed';
  if (top === 'raw') return 'raw';
  return top;
}

function files(dir, base = dir) {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    return statSync(p).isDirectory() ? files(p, base) : f.endsWith('.ts') ? [path.relative(base, p)] : [];
  });
}

/** The relative imports of a source: [specifier, typeOnly]. */
function importsOf(src) {
  const out = [];
  const re = /^\s*(import|export)\s+(type\s+)?([^'";]*?)\s*from\s*['"](\.[^'"]+)['"]/gm;
  for (const m of src.matchAll(re)) {
    const clause = m[3].trim();
    const typeOnly = Boolean(m[2]) || (/^\{[^}]*\}$/.test(clause) && clause.slice(1, -1).split(',').map((x) => x.trim()).filter(Boolean).every((x) => x.startsWith('type ')));
    out.push([m[4], typeOnly]);
  }
  for (const m of src.matchAll(/^\s*import\s+['"](\.[^'"]+)['"]/gm)) out.push([m[1], false]);
  for (const m of src.matchAll(/import\(\s*['"](\.[^'"]+)['"]\s*\)/g)) out.push([m[1], false]);
  return out;
}

export function check(libDir) {
  const problems = [];
  const graph = new Map();
  const all = files(libDir);
  for (const rel of all) {
    const from = layerOf(rel);
    const src = readFileSync(path.join(libDir, rel), 'utf8');
    const edges = [];
    for (const [spec, typeOnly] of importsOf(src)) {
      const target = path.relative(libDir, path.resolve(path.dirname(path.join(libDir, rel)), spec)).replace(/\.js$/, '.ts');
      if (target.startsWith('..')) {
        problems.push(`${rel}: imports ${spec}, outside lib/`);
        continue;
      }
      const to = layerOf(target);
      if (from === 'lab' && to !== 'lab') problems.push(`${rel} (lab) imports ${target} (${to}): the lab imports nothing of the library`);
      else if (to === 'lab' && from !== 'lab' && from !== 'cli') problems.push(`${rel} (${from}) imports ${target} (lab): only the CLI uses the lab`);
      else if (from !== 'lab' && to !== 'lab' && ORDER.indexOf(to) > ORDER.indexOf(from)) problems.push(`${rel} (${from}) imports ${target} (${to}): against the layer direction`);
      if (!typeOnly) edges.push(target);
    }
    graph.set(rel, edges);
  }
  // Runtime import cycles (depth-first search).
  const state = new Map();
  const stack = [];
  const visit = (f) => {
    if (state.get(f) === 'done') return;
    if (state.get(f) === 'on') {
      problems.push(`runtime import cycle: ${[...stack.slice(stack.indexOf(f)), f].join(' -> ')}`);
      return;
    }
    state.set(f, 'on');
    stack.push(f);
    for (const t of graph.get(f) ?? []) visit(t);
    stack.pop();
    state.set(f, 'done');
  };
  for (const f of graph.keys()) visit(f);
  return { problems, files: all.length };
}

if (process.argv.includes('--self-test')) {
  // A planted violation of each kind must be caught.
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'kvm-gmem-layers-'));
  try {
    const lib = path.join(tmp, 'lib');
    cpSync(path.join(root, 'lib'), lib, { recursive: true });
    const clean = check(lib).problems;
    if (clean.length) throw new Error(`the copy of lib/ is not clean: ${clean.join('; ')}`);
    const plant = (file, line) => {
      const p = path.join(lib, file);
      const before = readFileSync(p, 'utf8');
      writeFileSync(p, `${line}\n${before}`);
      const found = check(lib).problems;
      writeFileSync(p, before);
      return found;
    };
    const cases = [
      ['base/args.ts', "import { Vm } from '../vm.js';", /against the layer direction/],
      ['raw/sim/memory.ts', "import type { Kvm } from '../../kvm.js';", /against the layer direction/],
      ['lab/run.ts', "import { openKvm } from '../kvm.js';", /the lab imports nothing/],
      ['vm.ts', "import { labRun } from './lab/index.js';", /only the CLI uses the lab/],
      ['base/uapi.ts', "import { hex } from './args.js';", /runtime import cycle/],
    ];
    mkdirSync(path.join(lib, 'x'), { recursive: true });
    for (const [file, line, want] of cases) {
      const found = plant(file, line);
      if (!found.some((p) => want.test(p))) throw new Error(`planted '${line}' in ${file}: not caught (${found.join('; ') || 'nothing found'})`);
    }
    console.log(`layers self-test: ${cases.length} planted violations caught`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
} else if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { problems, files: n } = check(path.join(root, 'lib'));
  if (problems.length) {
    console.error(`layers: ${problems.length} violation(s):\n  ${problems.join('\n  ')}`);
    process.exit(1);
  }
  console.log(`layers: ${n} files, imports point down (${ORDER.join(' <- ')}; lab apart), no runtime import cycle`);
}
