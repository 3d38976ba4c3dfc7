/**
 * The lab's initramfs: a cached base archive (busybox, /init, the kernel's modules) and a
 * small per-run archive (the command, its environment, the shares), concatenated: the kernel
 * unpacks both into one root.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { cachePath } from './cache.js';
import { cpio, type CpioEntry } from './cpio.js';
import { INIT_SCRIPT } from './init.sh.js';
import { indexModules, resolveModules } from './modules.js';

/** What the lab needs from modules, in load order of need; absent ones are built in. */
export const LAB_MODULES = ['9p', '9pnet_virtio', 'overlay', 'kvm'];
/** Loaded if present, failures ignored: only the one for this CPU's vendor binds. */
export const LAB_OPTIONAL_MODULES = ['kvm_amd', 'kvm_intel'];

/** Shell-quotes one word. */
export const shellQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * The base archive for `busybox` and the modules tree `modulesDir` (none: a kernel with
 * everything built in), cached by their identity.
 */
export function baseInitramfs(busybox: string, modulesDir: string | undefined): string {
  const key = createHash('sha256')
    .update(INIT_SCRIPT)
    .update(`${busybox}:${statSync(busybox).mtimeMs}:${modulesDir ?? ''}:${modulesDir ? statSync(modulesDir).mtimeMs : ''}`)
    .digest('hex')
    .slice(0, 16);
  const file = path.join(cachePath('initramfs'), `base-${key}.cpio`);
  if (existsSync(file)) return file;
  const entries: CpioEntry[] = [
    ...['bin', 'dev', 'proc', 'sys', 'lab', 'lab/modules', 'tmp'].map((p) => ({ kind: 'dir' as const, path: p })),
    { kind: 'chardev', path: 'dev/console', major: 5, minor: 1 },
    { kind: 'chardev', path: 'dev/null', major: 1, minor: 3, mode: 0o666 },
    { kind: 'file', path: 'bin/busybox', data: readFileSync(busybox), mode: 0o755 },
    { kind: 'file', path: 'init', data: INIT_SCRIPT, mode: 0o755 },
  ];
  let required: string[] = [];
  let optional: string[] = [];
  if (modulesDir) {
    const index = indexModules(modulesDir);
    const mods = resolveModules(index, LAB_MODULES);
    required = mods.map((m) => m.name);
    mods.push(...resolveModules(index, LAB_OPTIONAL_MODULES).filter((m) => !required.includes(m.name)));
    optional = mods.slice(required.length).map((m) => m.name);
    for (const m of mods) entries.push({ kind: 'file', path: `lab/modules/${m.name}.ko`, data: m.bytes });
  }
  entries.push({ kind: 'file', path: 'lab/modules.conf', data: `LAB_MODULES="${required.join(' ')}"\nLAB_OPTIONAL_MODULES="${optional.join(' ')}"\n` });
  writeFileSync(file, cpio(entries));
  return file;
}

export interface RunSpec {
  argv: readonly string[];
  cwd: string;
  env: Record<string, string>;
  /** Writable shares: [mount tag, path in the guest (= path on the host)]. */
  shares: readonly (readonly [string, string])[];
  require: 'guest_memfd' | 'kvm' | 'none';
}

/** The per-run archive. */
export function runInitramfs(run: RunSpec): Buffer {
  const env = Object.entries(run.env)
    .filter(([k]) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
    .map(([k, v]) => `export ${k}=${shellQuote(v)}\n`)
    .join('');
  return cpio([
    { kind: 'dir', path: 'lab' },
    { kind: 'file', path: 'lab/config', data: `. /lab/modules.conf\nLAB_REQUIRE=${run.require}\nLAB_CWD=${shellQuote(run.cwd)}\n` },
    { kind: 'file', path: 'lab/shares', data: run.shares.map(([tag, p]) => `${tag} ${p}\n`).join('') },
    { kind: 'file', path: 'lab/env', data: env },
    { kind: 'file', path: 'lab/argv', data: `set -- ${run.argv.map(shellQuote).join(' ')}\n` },
  ]);
}
