#!/usr/bin/env node
// Builds the native addon with node-gyp (default) or cmake-js, offline.
//
// node-gyp: npm's bundled copy (npm_config_node_gyp) or one on PATH. When no nodedir is
// configured, point it at this Node's own headers (<prefix>/include/node) so it never tries
// to download them. cmake-js needs no headers download: package.json "binary.napi_versions"
// makes it use the node-api-headers package.
//
//   node scripts/build-addon.mjs gyp     -> build/Release/kvm_gmem.node
//   node scripts/build-addon.mjs cmake   -> build-cmake/Release/kvm_gmem.node
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const which = process.argv[2] ?? 'gyp';

if (process.platform !== 'linux') {
  console.log(`kvm-gmem: no native addon on ${process.platform} (KVM is Linux-only); the simulated backend still works`);
  process.exit(0);
}

function run(cmd, args) {
  console.log(`> ${[cmd, ...args].join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.error) throw r.error;
  if (r.status !== 0) process.exit(r.status ?? 1);
}

function localNodedir() {
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  return existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? prefix : undefined;
}

if (which === 'gyp') {
  // npm sets npm_config_node_gyp in its scripts; run directly, use the copy npm bundles.
  const bundled = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm',
    'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  const gyp = [process.env.npm_config_node_gyp, bundled].find((p) => p && existsSync(p));
  const args = ['rebuild'];
  const nodedir = process.env.npm_config_nodedir || localNodedir();
  if (nodedir) args.push(`--nodedir=${nodedir}`);
  if (gyp) run(process.execPath, [gyp, ...args]);
  else run('node-gyp', args);
} else if (which === 'cmake') {
  const require = createRequire(import.meta.url);
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  run(process.execPath, [cmakeJs, 'compile', '--out', 'build-cmake']);
} else {
  console.error(`usage: build-addon.mjs gyp|cmake`);
  process.exit(2);
}
