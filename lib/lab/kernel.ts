/**
 * What `--kernel SPEC` names: a kernel image on disk (with its modules tree, when KVM or 9p
 * are modules), or `debian:<suite-or-version>` fetched from Debian's archive.
 */
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { fetchDebianKernel, parseDebianSpec } from './debian.js';
import { LabError } from './errors.js';

export const DEFAULT_KERNEL = 'debian:unstable';

export interface LabKernel {
  /** The SPEC as given. */
  spec: string;
  image: string;
  /** The modules tree, when the kernel has modules. */
  modules: string | undefined;
  /** uname -r, when known before boot. */
  release: string | undefined;
}

const SPEC_HELP = 'give a bzImage path (with --modules DIR when KVM or 9p are modules), or debian:unstable, debian:trixie-backports, debian:7.2, debian:6.12 ...';

export function resolveKernel(spec: string = DEFAULT_KERNEL, modules?: string, log?: (s: string) => void): LabKernel {
  if (modules !== undefined && !(existsSync(modules) && statSync(modules).isDirectory())) {
    throw new LabError('LAB_SPEC', `--modules ${modules} is not a directory`, 'give the kernel\'s modules tree (lib/modules/<release>)');
  }
  if (spec.startsWith('debian:')) {
    const parsed = parseDebianSpec(spec.slice('debian:'.length));
    if (!parsed) throw new LabError('LAB_SPEC', `cannot read the kernel spec '${spec}'`, SPEC_HELP);
    const k = fetchDebianKernel(parsed, log);
    return { spec, image: k.image, modules: modules ?? k.modules, release: k.release };
  }
  const image = path.resolve(spec);
  if (!existsSync(image) || !statSync(image).isFile()) {
    throw new LabError('LAB_SPEC', `no kernel image at ${image}`, SPEC_HELP);
  }
  return { spec, image, modules: modules && path.resolve(modules), release: undefined };
}
