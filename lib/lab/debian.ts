/**
 * Kernels from Debian's archive, fetched with apt's ordinary client (apt-get, apt-cache,
 * dpkg-deb) but with a private configuration and state under the lab's cache: nothing is
 * installed and the machine's own apt sources are neither read nor changed (adding sid to
 * them at normal priority lets apt upgrade the system).
 *
 *   debian:unstable, debian:sid, debian:testing, debian:trixie-backports, debian:trixie, ...
 *       the newest linux-image-amd64 of that suite
 *   debian:7.2, debian:6.12, debian:7.2.13
 *       the newest linux-image-amd64 whose version starts so, in any known suite
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { cachePath } from './cache.js';
import { LabError } from './errors.js';

/** Suites searched for a version spec, newest first. */
export const DEBIAN_SUITES = ['unstable', 'testing', 'trixie-backports', 'trixie', 'bookworm-backports', 'bookworm'] as const;
const SUITE_ALIASES: Record<string, string> = { sid: 'unstable' };
const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';
/** apt's indexes are read again when older than this. */
const INDEX_MAX_AGE_MS = 12 * 3600_000;

export interface DebianKernel {
  /** The package version (7.2.13-1). */
  version: string;
  /** The kernel release, as uname -r prints it (7.2.13+deb14-amd64). */
  release: string;
  /** The bzImage. */
  image: string;
  /** The modules tree (…/lib/modules/<release>). */
  modules: string;
}

export type DebianSpec = { suite: string } | { version: string };

/** Reads the part after 'debian:'; undefined when it is neither a suite nor a version. */
export function parseDebianSpec(rest: string): DebianSpec | undefined {
  if (/^\d+(\.\d+)*$/.test(rest)) return { version: rest };
  const suite = SUITE_ALIASES[rest] ?? rest;
  return /^[a-z][a-z0-9-]*$/.test(suite) ? { suite } : undefined;
}

function tool(name: string, pkg: string): string {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const p = path.join(dir, name);
    if (dir && existsSync(p)) return p;
  }
  throw new LabError('LAB_TOOL', `${name} is not installed: Debian kernels are fetched with apt's client`, `install ${pkg} (it is on every Debian and Ubuntu system), or pass a kernel image path to --kernel`);
}

class Apt {
  readonly root = cachePath('apt');
  readonly #opts: string[];
  constructor(readonly mirror: string) {
    for (const d of ['state/lists/partial', 'cache/archives/partial', 'etc']) mkdirSync(path.join(this.root, d), { recursive: true });
    const status = path.join(this.root, 'state', 'status');
    if (!existsSync(status)) writeFileSync(status, '');
    if (!existsSync(KEYRING)) {
      throw new LabError('LAB_TOOL', `Debian's archive keyring (${KEYRING}) is missing: apt cannot check the packages`, 'install debian-archive-keyring, or pass a kernel image path to --kernel');
    }
    const sources = DEBIAN_SUITES.map((s) => `deb [arch=amd64 signed-by=${KEYRING}] ${mirror} ${s} main\n`).join('');
    // (Rewritten only when it changes: apt rebuilds its binary caches when the file is newer.)
    const list = path.join(this.root, 'etc', 'sources.list');
    if (!existsSync(list) || readFileSync(list, 'utf8') !== sources) writeFileSync(list, sources);
    this.#opts = [
      `Dir::Etc::SourceList=${path.join(this.root, 'etc', 'sources.list')}`, 'Dir::Etc::SourceParts=/dev/null',
      'Dir::Etc::Preferences=/dev/null', 'Dir::Etc::PreferencesParts=/dev/null',
      `Dir::State=${path.join(this.root, 'state')}`, `Dir::State::status=${status}`, `Dir::Cache=${path.join(this.root, 'cache')}`,
      // (Container images often switch apt's binary caches off: every apt-cache call then
      // parses all the indexes again, seconds each.)
      'Dir::Cache::pkgcache=pkgcache.bin', 'Dir::Cache::srcpkgcache=srcpkgcache.bin', 'Acquire::GzipIndexes=false',
      'APT::Architecture=amd64', 'APT::Architectures::=amd64', 'Acquire::Languages=none', 'Acquire::Retries=3',
      ...(process.getuid?.() === 0 ? ['APT::Sandbox::User=root'] : []),
    ].flatMap((o) => ['-o', o]);
  }

  run(cmd: 'apt-get' | 'apt-cache', args: string[], cwd?: string): string {
    const bin = tool(cmd, 'apt');
    const r = spawnSync(bin, [...this.#opts, ...args], { cwd, encoding: 'utf8', maxBuffer: 256 << 20 });
    if (r.error || r.status !== 0) {
      throw new LabError('LAB_FETCH', `${cmd} ${args.join(' ')} failed: ${(r.error?.message ?? r.stderr).trim().split('\n').slice(-3).join(' / ')}`,
        `check that ${this.mirror} is reachable (KVM_GMEM_DEBIAN_MIRROR picks another mirror), or pass a kernel image path to --kernel`);
    }
    return r.stdout;
  }

  /** apt-get update, unless the indexes are fresh. */
  update(force = false): void {
    const stamp = path.join(this.root, 'state', 'updated');
    const fresh = existsSync(stamp) && Date.now() - statSync(stamp).mtimeMs < INDEX_MAX_AGE_MS && readFileSync(stamp, 'utf8') === this.mirror;
    if (fresh && !force) return;
    this.run('apt-get', ['update', '-q']);
    writeFileSync(stamp, this.mirror);
  }

  /** The stanzas `apt-cache show` prints for `pkg`, as field maps. */
  show(pkg: string): Map<string, string>[] {
    let text: string;
    try {
      text = this.run('apt-cache', ['show', pkg]);
    } catch {
      return [];
    }
    return text.split(/\n\n+/).filter((s) => s.trim()).map((stanza) => {
      const fields = new Map<string, string>();
      let last = '';
      for (const line of stanza.split('\n')) {
        if (/^\s/.test(line) && last) fields.set(last, `${fields.get(last)}\n${line.trim()}`);
        else {
          const i = line.indexOf(':');
          if (i > 0) fields.set((last = line.slice(0, i)), line.slice(i + 1).trim());
        }
      }
      return fields;
    });
  }

  /** Every version of `pkg` the indexes offer, with the suites offering it. */
  versions(pkg: string): Map<string, string[]> {
    const out = new Map<string, string[]>();
    for (const line of this.run('apt-cache', ['madison', pkg]).split('\n')) {
      const [, version, source] = line.split('|').map((x) => x.trim());
      const suite = source && /\s(\S+)\/main\s/.exec(` ${source} `)?.[1];
      if (version && suite) out.set(version, [...(out.get(version) ?? []), suite]);
    }
    return out;
  }
}

/** Debian version comparison (dpkg's verrevcmp on epoch, upstream version and revision). */
export function compareDebianVersions(a: string, b: string): number {
  const split = (v: string): [number, string, string] => {
    const colon = v.indexOf(':');
    const epoch = colon >= 0 ? Number(v.slice(0, colon)) : 0;
    const rest = v.slice(colon + 1);
    const dash = rest.lastIndexOf('-');
    return dash >= 0 ? [epoch, rest.slice(0, dash), rest.slice(dash + 1)] : [epoch, rest, ''];
  };
  const isDigit = (c: string | undefined) => c !== undefined && c >= '0' && c <= '9';
  const order = (c: string | undefined) => (c === undefined || isDigit(c) ? 0 : c === '~' ? -1 : /[A-Za-z]/.test(c) ? c.charCodeAt(0) : c.charCodeAt(0) + 256);
  const verrevcmp = (x: string, y: string): number => {
    let i = 0;
    let j = 0;
    while (i < x.length || j < y.length) {
      while ((i < x.length && !isDigit(x[i])) || (j < y.length && !isDigit(y[j]))) {
        const d = order(x[i]) - order(y[j]);
        if (d) return d;
        i++;
        j++;
      }
      const m = /^\d*/.exec(x.slice(i))![0];
      const n = /^\d*/.exec(y.slice(j))![0];
      const d = Number(m || 0) - Number(n || 0);
      if (d) return d;
      i += m.length;
      j += n.length;
    }
    return 0;
  };
  const [ea, ua, ra] = split(a);
  const [eb, ub, rb] = split(b);
  return ea - eb || verrevcmp(ua, ub) || verrevcmp(ra, rb);
}

const depNames = (depends: string | undefined) => (depends ?? '').split(',').map((d) => d.trim().split(/[\s|(]/)[0]!).filter(Boolean);

/** Picks the linux-image-amd64 version that `spec` names: its version and image package. */
function pickVersion(apt: Apt, spec: DebianSpec): { version: string; image: string } {
  const versions = apt.versions('linux-image-amd64');
  const matches = [...versions].filter(([v, suites]) =>
    'version' in spec ? v === spec.version || v.startsWith(`${spec.version}.`) || v.startsWith(`${spec.version}-`) : suites.includes(spec.suite));
  matches.sort(([x], [y]) => compareDebianVersions(y, x));
  const version = matches[0]?.[0];
  const image = version && depNames(apt.show(`linux-image-amd64=${version}`)[0]?.get('Depends')).find((d) => /^linux-image-\d/.test(d));
  if (!version || !image) {
    const known = [...versions.keys()].sort(compareDebianVersions).reverse().join(', ');
    const what = 'version' in spec ? `version ${spec.version}` : `suite ${spec.suite}`;
    throw new LabError('LAB_SPEC', `Debian's archive has no linux-image-amd64 for ${what}`, `known versions: ${known || 'none'} (suites searched: ${DEBIAN_SUITES.join(', ')})`);
  }
  return { version, image };
}

/** Fetches (or finds in the cache) the kernel `spec` names. */
export function fetchDebianKernel(spec: DebianSpec, log: (s: string) => void = () => {}): DebianKernel {
  const specFile = path.join(cachePath('debian'), `${'version' in spec ? spec.version : spec.suite}.json`);
  let apt: Apt;
  try {
    apt = openApt();
  } catch (e) {
    // Offline: a kernel fetched earlier for this spec still serves.
    if (existsSync(specFile)) {
      const k = JSON.parse(readFileSync(specFile, 'utf8')) as DebianKernel;
      if (existsSync(k.image)) {
        log(`lab: ${(e as Error).message}; using the cached ${k.release}`);
        return k;
      }
    }
    throw e;
  }
  const { version, image: imagePkg } = pickVersion(apt, spec);
  const dir = path.join(cachePath('debian'), `${imagePkg}_${version}`);
  const done = path.join(dir, 'kernel.json');
  if (existsSync(done)) {
    const k = JSON.parse(readFileSync(done, 'utf8')) as DebianKernel;
    writeFileSync(specFile, JSON.stringify(k));
    return k;
  }
  log(`lab: fetching ${imagePkg} ${version} from Debian's archive`);
  const stanza = apt.show(`${imagePkg}=${version}`)[0];
  const parts = depNames(stanza?.get('Depends')).filter((d) => /^linux-(binary|modules)-\d/.test(d));
  const tmp = `${dir}.tmp-${process.pid}`;
  downloadAndExtract(apt, [imagePkg, ...parts].map((p) => `${p}=${version}`), path.join(tmp, 'root'));
  const found = findKernelFiles(path.join(tmp, 'root'));
  if (!found) throw new LabError('LAB_FETCH', `${imagePkg} ${version} holds no vmlinuz`, 'pick another version');
  const rel = (p: string) => path.join(dir, path.relative(tmp, p));
  const kernel: DebianKernel = { version, release: found.release, image: rel(found.image), modules: rel(found.modules) };
  writeFileSync(path.join(tmp, 'kernel.json'), JSON.stringify(kernel));
  rmSync(dir, { recursive: true, force: true });
  renameSync(tmp, dir);
  writeFileSync(specFile, JSON.stringify(kernel));
  return kernel;
}

/** Downloads the packages (name=version) and unpacks them all into `root` (created afresh). */
function downloadAndExtract(apt: Apt, packages: string[], root: string): void {
  const debs = `${root}.debs`;
  rmSync(root, { recursive: true, force: true });
  rmSync(debs, { recursive: true, force: true });
  mkdirSync(debs, { recursive: true });
  apt.run('apt-get', ['download', '-q', ...packages], debs);
  const dpkgDeb = tool('dpkg-deb', 'dpkg');
  for (const deb of readdirSync(debs)) {
    const r = spawnSync(dpkgDeb, ['-x', path.join(debs, deb), root], { encoding: 'utf8' });
    if (r.status !== 0) throw new LabError('LAB_FETCH', `dpkg-deb -x ${deb} failed: ${r.stderr.trim()}`, 'remove the lab cache and try again');
  }
  rmSync(debs, { recursive: true, force: true });
}

function openApt(): Apt {
  const apt = new Apt(process.env.KVM_GMEM_DEBIAN_MIRROR || 'http://deb.debian.org/debian');
  apt.update();
  return apt;
}

/**
 * A statically linked busybox for the initramfs, from Debian's busybox-static (the
 * bookworm build: it runs on every kernel the lab boots), cached.
 */
export function fetchBusybox(log: (s: string) => void = () => {}): string {
  const done = path.join(cachePath('busybox'), 'path');
  if (existsSync(done) && existsSync(readFileSync(done, 'utf8'))) return readFileSync(done, 'utf8');
  const apt = openApt();
  const version = [...apt.versions('busybox-static')].find(([, suites]) => suites.includes('bookworm'))?.[0];
  if (!version) throw new LabError('LAB_FETCH', "Debian's archive has no busybox-static for bookworm", 'install busybox-static, or set KVM_GMEM_LAB_BUSYBOX to a static busybox');
  log(`lab: fetching busybox-static ${version}`);
  const root = path.join(cachePath('busybox'), version);
  downloadAndExtract(apt, [`busybox-static=${version}`], root);
  const bin = path.join(root, 'bin', 'busybox');
  if (!existsSync(bin)) throw new LabError('LAB_FETCH', `busybox-static ${version} holds no bin/busybox`, 'set KVM_GMEM_LAB_BUSYBOX to a static busybox');
  writeFileSync(done, bin);
  return bin;
}

/** Debian's linux-source-<major.minor> (newest version), fetched and cached: its tarball. */
export function fetchDebianSource(series: string, log: (s: string) => void = () => {}): { version: string; tarball: string } {
  const pkg = `linux-source-${series}`;
  const apt = openApt();
  const version = [...apt.versions(pkg).keys()].sort(compareDebianVersions).pop();
  if (!version) throw new LabError('LAB_SPEC', `Debian's archive has no ${pkg}`, `suites searched: ${DEBIAN_SUITES.join(', ')}`);
  const root = path.join(cachePath('debian'), `${pkg}_${version}`);
  const find = () => {
    const dir = path.join(root, 'usr', 'src');
    const tar = existsSync(dir) ? readdirSync(dir).find((f) => /^linux-source-.*\.tar\.\w+$/.test(f)) : undefined;
    return tar && path.join(dir, tar);
  };
  let tarball = find();
  if (!tarball) {
    log(`lab: fetching ${pkg} ${version} from Debian's archive`);
    downloadAndExtract(apt, [`${pkg}=${version}`], root);
    tarball = find();
    if (!tarball) throw new LabError('LAB_FETCH', `${pkg} ${version} holds no source tarball`, 'pick another version');
  }
  return { version, tarball };
}

/** vmlinuz and the modules tree in an extracted package root (usr/lib/modules/<rel>/ or boot/). */
function findKernelFiles(root: string): { release: string; image: string; modules: string } | undefined {
  for (const base of ['usr/lib/modules', 'lib/modules']) {
    const d = path.join(root, base);
    if (!existsSync(d)) continue;
    for (const release of readdirSync(d)) {
      const modules = path.join(d, release);
      const image = [path.join(modules, 'vmlinuz'), path.join(root, 'boot', `vmlinuz-${release}`)].find((p) => existsSync(p));
      if (image) return { release, image, modules };
    }
  }
  return undefined;
}
