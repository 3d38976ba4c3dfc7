/**
 * `kvm-gmem lab kernel build`: a kernel for the lab built from Debian's linux-source package
 * and a config fragment the project ships (kernel-configs/<name>.config), on top of
 * x86_64_defconfig and kvm_guest.config. The result is cached by source version and fragment;
 * the SPEC to pass to --kernel is the bzImage's path.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cachePath } from './cache.js';
import { fetchDebianSource, parseDebianSpec } from './debian.js';
import { LabError } from './errors.js';

const CONFIGS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'kernel-configs');

export function kernelConfigs(): string[] {
  return existsSync(CONFIGS_DIR) ? readdirSync(CONFIGS_DIR).filter((f) => f.endsWith('.config')).map((f) => f.slice(0, -7)) : [];
}

/** What building a kernel needs on the host: [program or header, Debian package]. */
const BUILD_NEEDS: [string, string][] = [
  ['make', 'make'], ['gcc', 'gcc'], ['flex', 'flex'], ['bison', 'bison'], ['bc', 'bc'], ['perl', 'perl'], ['tar', 'tar'], ['xz', 'xz-utils'],
  ['/usr/include/gelf.h', 'libelf-dev'], ['/usr/include/openssl/opensslv.h', 'libssl-dev'],
];

function checkBuildTools(): void {
  const onPath = (p: string) => (process.env.PATH ?? '').split(':').some((d) => d && existsSync(path.join(d, p)));
  const missing = BUILD_NEEDS.filter(([what]) => (what.startsWith('/') ? !existsSync(what) : !onPath(what))).map(([, pkg]) => pkg);
  if (missing.length) {
    throw new LabError('LAB_BUILD', `building a kernel needs ${missing.join(', ')}`, `install them: sudo apt-get install ${[...new Set(missing)].join(' ')}`);
  }
}

function run(cmd: string, args: string[], cwd: string, log: (s: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    log(`lab: ${cmd} ${args.join(' ')}`);
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    const tail: string[] = [];
    const keep = (d: Buffer) => {
      tail.push(...d.toString().split('\n'));
      tail.splice(0, Math.max(0, tail.length - 30));
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.on('error', (e) => reject(new LabError('LAB_BUILD', `cannot run ${cmd}: ${e.message}`, 'install the build tools (make, gcc)')));
    child.on('close', (code) => {
      if (code === 0) resolve();
      else reject(new LabError('LAB_BUILD', `${cmd} ${args.join(' ')} failed (exit ${code})`, 'see the output above; remove the lab cache\'s build directory to start again', tail.join('\n')));
    });
  });
}

export interface BuildKernelOptions {
  /** A fragment name in kernel-configs/ ('sw-protected'). */
  config: string;
  /** debian:<version> whose linux-source package to build (default debian:7.2). */
  source?: string;
  jobs?: number;
  log?: (message: string) => void;
}

/** Builds (or finds in the cache) the kernel; returns its bzImage path. */
export async function buildKernel(o: BuildKernelOptions): Promise<string> {
  const log = o.log ?? (() => {});
  const fragmentFile = path.join(CONFIGS_DIR, `${o.config}.config`);
  if (!/^[\w-]+$/.test(o.config) || !existsSync(fragmentFile)) {
    throw new RangeError(`no kernel config '${o.config}' (known: ${kernelConfigs().join(', ')})`);
  }
  const sourceSpec = o.source ?? 'debian:7.2';
  const parsed = sourceSpec.startsWith('debian:') ? parseDebianSpec(sourceSpec.slice(7)) : undefined;
  if (!parsed || !('version' in parsed) || !/^\d+\.\d+$/.test(parsed.version)) {
    throw new RangeError(`--source must be debian:<major>.<minor> (a linux-source package), got '${sourceSpec}'`);
  }
  const fragment = readFileSync(fragmentFile, 'utf8');
  const src = fetchDebianSource(parsed.version, log);
  const key = createHash('sha256').update(fragment).update(src.version).digest('hex').slice(0, 12);
  const outDir = path.join(cachePath('kernels'), `${o.config}-${src.version}-${key}`);
  const image = path.join(outDir, 'bzImage');
  if (existsSync(image)) {
    log(`lab: ${o.config} kernel from linux-source ${src.version} is cached`);
    return image;
  }
  checkBuildTools();
  const work = path.join(cachePath('build'), `${o.config}-${src.version}-${key}`);
  const tree = path.join(work, path.basename(src.tarball).replace(/\.tar\.\w+$/, ''));
  if (!existsSync(path.join(tree, 'Makefile'))) {
    rmSync(work, { recursive: true, force: true });
    mkdirSync(work, { recursive: true });
    await run('tar', ['-xf', src.tarball, '-C', work], work, log);
  }
  const jobs = String(o.jobs ?? os.availableParallelism());
  await run('make', ['x86_64_defconfig'], tree, log);
  await run('make', ['kvm_guest.config'], tree, log);
  const options = fragment.split('\n').map((l) => /^CONFIG_(\w+)=(\S+)/.exec(l)).filter((m) => m !== null);
  const args = options.flatMap((m) => (m![2] === 'y' ? ['--enable', m![1]!] : m![2] === 'm' ? ['--module', m![1]!] : ['--set-val', m![1]!, m![2]!]));
  await run('scripts/config', args, tree, log);
  await run('make', ['olddefconfig'], tree, log);
  const config = readFileSync(path.join(tree, '.config'), 'utf8');
  const lost = options.filter((m) => !config.includes(`CONFIG_${m![1]}=${m![2]}`)).map((m) => m![1]);
  if (lost.length) throw new LabError('LAB_BUILD', `olddefconfig dropped ${lost.join(', ')} (a dependency is off in this source)`, `check kernel-configs/${o.config}.config against linux-source ${src.version}`);
  await run('make', [`-j${jobs}`, 'bzImage'], tree, log);
  const tmp = `${outDir}.tmp`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  copyFileSync(path.join(tree, 'arch/x86/boot/bzImage'), path.join(tmp, 'bzImage'));
  copyFileSync(path.join(tree, '.config'), path.join(tmp, 'config'));
  renameSync(tmp, outDir);
  rmSync(work, { recursive: true, force: true });
  return image;
}
