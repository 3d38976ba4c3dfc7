#!/usr/bin/env node
// npm's install step for kvm-gmem. Never fails the install: the simulated backend works
// everywhere, so a missing addon is a warning, not an error.
//
//   - not Linux x86-64: nothing to build (the addon is Linux x86-64 only);
//   - an addon that loads already (the package's prebuild, or a local build): done, no compiler;
//   - otherwise: build from source with node-gyp; if that fails, say what backend 'kvm' needs
//     and exit 0.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

if (process.platform !== 'linux' || process.arch !== 'x64') {
  console.log(`kvm-gmem: no native addon for ${process.platform}-${process.arch} (KVM through guest_memfd is Linux x86-64); the simulated backend works here`);
  process.exit(0);
}

/** Whether the addon at `file` loads in a fresh process (the check must not load it into npm). */
function loads(file) {
  if (!existsSync(file)) return false;
  const r = spawnSync(process.execPath, ['-e', 'require(process.argv[1])', file], { stdio: 'ignore' });
  return r.status === 0;
}

const candidates = ['build/Release/kvm_gmem.node', 'prebuilds/linux-x64/kvm_gmem.napi.node'].map((f) => path.join(root, f));
const ready = candidates.find(loads);
if (ready && !process.env.KVM_GMEM_BUILD_FROM_SOURCE) {
  console.log(`kvm-gmem: native addon ready (${path.relative(root, ready)})`);
  process.exit(0);
}

const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'build-addon.mjs'), 'gyp', ...(process.env.KVM_GMEM_WERROR === '1' ? ['--werror'] : [])], {
  cwd: root,
  stdio: 'inherit',
});
if (r.status !== 0) {
  console.warn([
    'kvm-gmem: warning: could not build the native addon from source (node-gyp needs python3, make and a C++17 compiler).',
    "  backend 'kvm' is unavailable until it is built (`npm rebuild kvm-gmem`); backends 'auto' and 'simulated' work.",
  ].join('\n'));
}
process.exit(0);
