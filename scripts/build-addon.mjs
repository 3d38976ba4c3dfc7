#!/usr/bin/env node
// Builds the native addon with node-gyp (default) or cmake-js, offline; or packs the built
// addon as the package's prebuild.
//
// node-gyp: npm's bundled copy (npm_config_node_gyp) or one on PATH. When no nodedir is
// configured, point it at this Node's own headers (<prefix>/include/node) so it never tries
// to download them. cmake-js needs no headers download: package.json "binary.napi_versions"
// makes it use the node-api-headers package.
//
//   node scripts/build-addon.mjs gyp [--werror]     -> build/Release/kvm_gmem.node
//   node scripts/build-addon.mjs cmake [--werror]   -> build-cmake/Release/kvm_gmem.node
//   node scripts/build-addon.mjs prebuild           -> gyp --werror, then prebuilds/linux-x64/kvm_gmem.napi.node
// --werror turns warnings into errors (the project's own builds and CI; never a user's install).
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const which = process.argv[2] ?? 'gyp';
const werror = process.argv.includes('--werror') || which === 'prebuild';

if (process.platform !== 'linux' || process.arch !== 'x64') {
  console.log(`kvm-gmem: the native addon is for Linux x86-64 only (this is ${process.platform}-${process.arch}); the simulated backend works here`);
  process.exit(0);
}

function run(cmd, args) {
  console.log(`> ${[cmd, ...args].join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...process.env, KVM_GMEM_WERROR: werror ? '1' : '0' } });
  if (r.error) throw r.error;
  if (r.status !== 0) process.exit(r.status ?? 1);
}

function localNodedir() {
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  return existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? prefix : undefined;
}

function gyp() {
  // npm sets npm_config_node_gyp in its scripts; run directly, use the copy npm bundles.
  const bundled = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm',
    'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  const nodeGyp = [process.env.npm_config_node_gyp, bundled].find((p) => p && existsSync(p));
  const args = ['rebuild'];
  const nodedir = process.env.npm_config_nodedir || localNodedir();
  if (nodedir) args.push(`--nodedir=${nodedir}`);
  if (nodeGyp) run(process.execPath, [nodeGyp, ...args]);
  else run('node-gyp', args);
}

if (which === 'gyp') {
  gyp();
} else if (which === 'cmake') {
  const require = createRequire(import.meta.url);
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  run(process.execPath, [cmakeJs, 'compile', '--out', 'build-cmake']);
} else if (which === 'prebuild') {
  // One binary serves every Node with Node-API 8 on linux-x64 (glibc): the name says napi.
  gyp();
  const dir = path.join(root, 'prebuilds', 'linux-x64');
  mkdirSync(dir, { recursive: true });
  const out = path.join(dir, 'kvm_gmem.napi.node');
  copyFileSync(path.join(root, 'build', 'Release', 'kvm_gmem.node'), out);
  spawnSync('strip', ['--strip-unneeded', out], { stdio: 'inherit' }); // (smaller when strip is there)
  console.log(`kvm-gmem: prebuild ${path.relative(root, out)}`);
} else {
  console.error('usage: build-addon.mjs gyp|cmake|prebuild [--werror]');
  process.exit(2);
}
