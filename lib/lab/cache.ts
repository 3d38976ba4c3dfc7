/**
 * Where the lab keeps what it fetched and built (kernels, initramfs images, apt's indexes):
 * $KVM_GMEM_LAB_CACHE, else $XDG_CACHE_HOME/kvm-gmem/lab, else ~/.cache/kvm-gmem/lab.
 */
import { mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KVM_GMEM_LAB_CACHE) return path.resolve(env.KVM_GMEM_LAB_CACHE);
  const base = env.XDG_CACHE_HOME ? path.resolve(env.XDG_CACHE_HOME) : path.join(os.homedir(), '.cache');
  return path.join(base, 'kvm-gmem', 'lab');
}

/** A subdirectory of the cache, created. */
export function cachePath(...parts: string[]): string {
  const p = path.join(cacheDir(), ...parts);
  mkdirSync(p, { recursive: true });
  return p;
}
