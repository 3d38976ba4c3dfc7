/**
 * Kernel modules for the lab's initramfs: found by name in a modules tree (a Debian package's
 * usr/lib/modules/<release>, or a user's --modules directory), decompressed (busybox insmod
 * takes plain .ko files), and ordered so that each comes after the modules it depends on
 * (read from the module's own .modinfo "depends=" string: no modules.dep needed).
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { LabError } from './errors.js';

/** A module's name as the kernel spells it ('kvm-amd.ko.xz' -> 'kvm_amd'). */
export const moduleName = (file: string) => path.basename(file).replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_');

/** Every module file under `dir`, by module name. */
export function indexModules(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (/\.ko(\.(xz|zst|gz))?$/.test(e.name)) out.set(moduleName(e.name), p);
    }
  };
  walk(dir);
  return out;
}

/** The module's bytes, decompressed. */
export function readModule(file: string): Buffer {
  const raw = readFileSync(file);
  if (file.endsWith('.gz')) return gunzipSync(raw);
  const tool = file.endsWith('.xz') ? 'xz' : file.endsWith('.zst') ? 'zstd' : undefined;
  if (!tool) return raw;
  const r = spawnSync(tool, ['-dc'], { input: raw, maxBuffer: 1 << 30 });
  if (r.error || r.status !== 0) {
    throw new LabError('LAB_TOOL', `cannot decompress ${file} with ${tool}: ${r.error?.message ?? r.stderr.toString().trim()}`, `install ${tool === 'xz' ? 'xz-utils' : 'zstd'} (apt-get install ${tool === 'xz' ? 'xz-utils' : 'zstd'})`);
  }
  return r.stdout;
}

/** The names in a module's "depends=" modinfo string. */
export function moduleDepends(ko: Buffer): string[] {
  const at = ko.indexOf('\0depends=');
  if (at < 0) return [];
  const end = ko.indexOf(0, at + 9);
  return ko.toString('latin1', at + 9, end).split(',').filter(Boolean).map((n) => n.replace(/-/g, '_'));
}

export interface LoadableModule {
  name: string;
  bytes: Buffer;
}

/**
 * `wanted` and what they depend on, dependencies first. A wanted name that the tree lacks is
 * left out (it may be built in); a dependency that is missing is an error.
 */
export function resolveModules(index: Map<string, string>, wanted: readonly string[]): LoadableModule[] {
  const out: LoadableModule[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (name: string, neededBy?: string) => {
    if (state.get(name) === 'done') return;
    if (state.get(name) === 'visiting') throw new LabError('LAB_MODULES', `module dependency cycle at ${name}`, 'check the modules directory');
    const file = index.get(name);
    if (!file) {
      if (neededBy) throw new LabError('LAB_MODULES', `module ${neededBy} needs ${name}, which the modules directory does not have`, 'pass the whole modules tree of this kernel with --modules');
      return;
    }
    state.set(name, 'visiting');
    const bytes = readModule(file);
    for (const dep of moduleDepends(bytes)) visit(dep, name);
    state.set(name, 'done');
    out.push({ name, bytes });
  };
  for (const w of wanted) visit(w.replace(/-/g, '_'));
  return out;
}
