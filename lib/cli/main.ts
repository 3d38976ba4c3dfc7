#!/usr/bin/env node
/**
 * kvm-gmem: the command-line face of the library.
 *   kvm-gmem caps [--json] [--backend B] [--kernel SPEC]   what a host's KVM supports (and its profile)
 *   kvm-gmem selftest [--filter T] [--json] [--kernel SPEC] the kernel selftests' guest_memfd cases, as KTAP
 *   kvm-gmem demo [--backend B] [--kernel SPEC]             a narrated walk-through of guest_memfd
 *   kvm-gmem lab run [--kernel SPEC] ... -- CMD [ARGS...]   a command inside a real kernel under QEMU
 *   kvm-gmem lab kernel fetch|build ...                     kernels for the lab
 * Output goes to stdout, errors to stderr; exit status 0 on success, 1 on failure, 2 on a
 * usage error.
 */
import { readFileSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { KvmError, openKvm, type BackendName, type Kvm } from '../index.js';
import { LabError } from '../lab/index.js';
import { caps } from './caps.js';
import { demo } from './demo.js';
import { inLab, LAB_OPTIONS, labKernelBuild, labKernelFetch, labRunCommand, type LabFlags } from './lab.js';
import { selftest } from './selftest.js';

export interface Io {
  out: (s: string | Uint8Array) => void;
  err: (s: string | Uint8Array) => void;
  /** Whether err is a terminal (progress lines go there). */
  errIsTTY?: boolean;
}

type Options = NonNullable<ParseArgsConfig['options']>;
type Values = Record<string, string | boolean | string[] | undefined>;

interface Command {
  usage: string;
  help: string;
  options: Options;
  /** Takes a command to run after `--`. */
  rest?: boolean;
  run(values: Values, rest: string[], io: Io): Promise<number>;
}

export class UsageError extends Error {}

const BACKEND = { backend: { type: 'string' }, profile: { type: 'string' } } as const satisfies Options;

const BACKEND_HELP = `  --backend auto|kvm|simulated   which backend (default: auto, or $KVM_GMEM_BACKEND)
  --profile NAME|FILE            the simulated host: a shipped profile (pvm-6.18, debian-7.2, ...)
                                 or a JSON file from 'kvm-gmem caps --json' (simulated backend)`;

const LAB_HELP = `  --kernel SPEC     run inside that kernel under QEMU (see 'kvm-gmem help lab run')`;

function openBackend(values: Values): Kvm {
  const backend = (values.backend as string | undefined) ?? process.env.KVM_GMEM_BACKEND ?? 'auto';
  if (!['auto', 'kvm', 'simulated'].includes(backend)) throw new UsageError(`--backend must be auto, kvm or simulated, got '${backend}'`);
  if (values.profile !== undefined && backend === 'kvm') throw new UsageError('--profile applies to the simulated backend, not to --backend kvm');
  return openKvm({ backend: backend as BackendName, ...(values.profile !== undefined ? { profile: values.profile as string } : {}) });
}

/** Runs `fn` on the backend the options name, or the same command inside the lab with --kernel. */
function onBackend(name: string, forward: (values: Values) => string[], fn: (kvm: Kvm, values: Values, io: Io) => Promise<number> | number) {
  return async (values: Values, _rest: string[], io: Io): Promise<number> => {
    if (values.kernel !== undefined) {
      if (values.backend !== undefined && values.backend !== 'kvm') throw new UsageError(`--kernel runs the kernel's own KVM: --backend ${String(values.backend)} does not apply`);
      if (values.profile !== undefined) throw new UsageError('--kernel runs a real kernel: --profile does not apply');
      return inLab(values as LabFlags, [name, '--backend', 'kvm', ...forward(values)], io);
    }
    for (const k of Object.keys(LAB_OPTIONS)) {
      if (k !== 'kernel' && values[k] !== undefined) throw new UsageError(`--${k} applies only with --kernel`);
    }
    const kvm = openBackend(values);
    try {
      return await fn(kvm, values, io);
    } finally {
      kvm.close();
    }
  };
}

const COMMANDS: Record<string, Command> = {
  caps: {
    usage: 'kvm-gmem caps [--json] [--backend auto|kvm|simulated] [--profile P] [--kernel SPEC]',
    help: `Prints the KVM capabilities that matter to guest_memfd (read on a default VM), the VM
types the host can create, and which backend 'auto' picks (and why).
  --json            JSON: the capabilities and the host's complete profile (capabilities on
                    each VM type, guest-physical address width, version-dependent answers),
                    which 'openKvm({ backend: "simulated", profile })' and --profile accept
${BACKEND_HELP}
${LAB_HELP}`,
    options: { json: { type: 'boolean' }, ...BACKEND, ...LAB_OPTIONS },
    run: onBackend('caps', (v) => (v.json ? ['--json'] : []), (kvm, v, io) => caps(kvm, { json: v.json === true }, io.out)),
  },
  selftest: {
    usage: 'kvm-gmem selftest [--filter TEXT] [--json] [--backend B] [--profile P] [--kernel SPEC]',
    help: `Runs the guest_memfd cases of the kernel's KVM selftests (guest_memfd_test.c,
set_memory_region_test.c, private_mem_conversions_test.c, private_mem_kvm_exits_test.c,
pre_fault_memory_test.c) and prints KTAP: 'ok N name', 'not ok N name' with the reason, and
'# SKIP <missing capability>' for a case this backend cannot run. On a terminal, the case
running is shown on stderr. Exit status 1 if a case failed.
  --filter TEXT     only the cases whose name contains TEXT
  --json            one JSON document with every result instead of KTAP
${BACKEND_HELP}
${LAB_HELP}`,
    options: { filter: { type: 'string' }, json: { type: 'boolean' }, ...BACKEND, ...LAB_OPTIONS },
    run: onBackend(
      'selftest',
      (v) => [...(v.filter !== undefined ? ['--filter', v.filter as string] : []), ...(v.json ? ['--json'] : [])],
      (kvm, v, io) => selftest(kvm, io, { filter: v.filter as string | undefined, json: v.json === true }),
    ),
  },
  demo: {
    usage: 'kvm-gmem demo [--backend auto|kvm|simulated] [--profile P] [--kernel SPEC]',
    help: `Walks through guest_memfd step by step, explaining each: a VM, an 8 MiB guest_memfd, two
memslots on it around a hole, host writes seen at guest addresses, a real guest reading them
(on KVM), a punch-hole and the guest ranges it invalidated, and memory attributes.
${BACKEND_HELP}
${LAB_HELP}`,
    options: { ...BACKEND, ...LAB_OPTIONS },
    run: onBackend('demo', () => [], (kvm, _v, io) => demo(kvm, io.out)),
  },
  'lab run': {
    usage: 'kvm-gmem lab run [--kernel SPEC] [--modules DIR] [--cpus N] [--memory SIZE] [--timeout S] [--accel auto|kvm|tcg] [--writable DIR]... -- CMD [ARGS...]',
    help: `Boots a real kernel under QEMU and runs CMD inside as root, with the host's filesystem
visible (read-only, made writable by an overlay whose changes are dropped), the current
directory and environment, a writable scratch directory ($KVM_GMEM_LAB_SCRATCH) and the
--writable directories shared read-write at their host paths. CMD's output streams as it
runs; the exit status is CMD's. QEMU uses KVM where the host has a usable /dev/kvm, else
TCG with -cpu max (emulated AMD SVM with nested paging, so kvm_amd binds inside).
  --kernel SPEC     a kernel image path (bzImage), or debian:unstable (default),
                    debian:trixie-backports, debian:7.2, debian:6.12 ...: fetched from
                    Debian's archive with apt and cached ($KVM_GMEM_LAB_CACHE)
  --modules DIR     the modules tree of a kernel image given by path (when KVM or 9p are modules)
  --cpus N          guest CPUs (default 2)
  --memory SIZE     guest memory, e.g. 4G (default)
  --timeout S       stop the command after S seconds (exit status 124)
  --accel A         auto (default), kvm or tcg
  --writable DIR    a host directory the command may write (repeatable)
  --no-kvm-check    run even on a kernel without KVM or guest_memfd`,
    options: { ...LAB_OPTIONS, 'no-kvm-check': { type: 'boolean' } },
    rest: true,
    run: (v, rest, io) => labRunCommand(v as LabFlags, rest, io),
  },
  'lab kernel fetch': {
    usage: 'kvm-gmem lab kernel fetch [--kernel SPEC]',
    help: `Fetches the kernel SPEC names (default debian:unstable) into the lab's cache and prints
where it is: the image, the modules tree and the release.`,
    options: { kernel: { type: 'string' } },
    run: (v, _r, io) => labKernelFetch(v.kernel as string | undefined, io),
  },
  'lab kernel build': {
    usage: 'kvm-gmem lab kernel build --config sw-protected [--source debian:7.2] [--jobs N]',
    help: `Builds a kernel for the lab from Debian's linux-source package and a config fragment the
project ships, caches it, and prints the SPEC to pass to --kernel. The build takes about 40
minutes on two cores; a cached build is reused.
  --config NAME     sw-protected: KVM_SW_PROTECTED_VM (private memory), KVM, 9p, overlayfs
                    and transparent hugepages, everything built in
  --source SPEC     the kernel source: debian:7.2 (default), or any debian: version
  --jobs N          parallel make jobs (default: the number of CPUs)`,
    options: { config: { type: 'string' }, source: { type: 'string' }, jobs: { type: 'string' } },
    run: (v, _r, io) => labKernelBuild(v, io),
  },
};

const GROUPS: Record<string, string[]> = { lab: ['lab run', 'lab kernel fetch', 'lab kernel build'], 'lab kernel': ['lab kernel fetch', 'lab kernel build'] };

const USAGE = `usage: kvm-gmem <command> [options]

Drive Linux KVM guest_memfd from Node.js (real /dev/kvm, or the simulator where it is absent),
and real kernels under QEMU when this host has no KVM.

commands:
  caps              the host's KVM capabilities and which backend 'auto' picks (--json: its profile)
  selftest          the kernel selftests' guest_memfd cases, as KTAP (exit 1 on a failure)
  demo              a short narrated walk-through: VM, guest_memfd, memslots, a guest, punch-hole
  lab run           run a command inside a real kernel under QEMU
  lab kernel fetch  fetch a Debian kernel for the lab
  lab kernel build  build a kernel for the lab (sw-protected: private memory)
  help [COMMAND]    this text, or a command's

options:
  -h, --help        help (also: kvm-gmem <command> --help)
  --version         the version
`;

export function version(): string {
  const pkg = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'package.json');
  return (JSON.parse(readFileSync(pkg, 'utf8')) as { version: string }).version;
}

function helpOf(name: string): string {
  const c = COMMANDS[name]!;
  return `usage: ${c.usage}\n\n${c.help}\n`;
}

/** The longest command name that argv starts with, and the rest. */
function findCommand(argv: string[]): [string | undefined, string[]] {
  for (let n = 3; n >= 1; n--) {
    const name = argv.slice(0, n).join(' ');
    if (COMMANDS[name] || GROUPS[name]) return [name, argv.slice(n)];
  }
  return [undefined, argv];
}

export async function main(argv: string[], io: Partial<Io> = {}): Promise<number> {
  const out = io.out ?? ((s: string | Uint8Array) => void process.stdout.write(s));
  const err = io.err ?? ((s: string | Uint8Array) => void process.stderr.write(s));
  const errIsTTY = io.err ? io.errIsTTY === true : process.stderr.isTTY === true;
  const usageError = (message: string, usage = USAGE) => {
    err(`kvm-gmem: ${message}\n\n${usage}`);
    return 2;
  };
  if (argv.length === 0) return usageError('no command given');
  if (argv[0] === '--version' || argv[0] === '-V') {
    out(`${version()}\n`);
    return 0;
  }
  if (argv[0] === '-h' || argv[0] === '--help') {
    out(USAGE);
    return 0;
  }
  if (argv[0] === 'help') {
    const [name, extra] = findCommand(argv.slice(1));
    if (argv.length === 1) out(USAGE);
    else if (!name || extra.length) return usageError(`no command '${argv.slice(1).join(' ')}'`);
    else if (GROUPS[name]) out(GROUPS[name]!.map(helpOf).join('\n'));
    else out(helpOf(name));
    return 0;
  }
  const [name, args] = findCommand(argv);
  if (!name) return usageError(`unknown command '${argv[0]}'`);
  if (GROUPS[name] && !COMMANDS[name]) {
    if (args.includes('-h') || args.includes('--help')) {
      out(GROUPS[name]!.map(helpOf).join('\n'));
      return 0;
    }
    return usageError(args.length ? `unknown command '${name} ${args[0]}'` : `'${name}' needs a subcommand: ${GROUPS[name]!.join(', ')}`);
  }
  const cmd = COMMANDS[name]!;
  const dash = cmd.rest ? args.indexOf('--') : -1;
  const own = dash >= 0 ? args.slice(0, dash) : args;
  const rest = dash >= 0 ? args.slice(dash + 1) : [];
  let values: Values;
  try {
    const parsed = parseArgs({ args: own, options: { ...cmd.options, help: { type: 'boolean', short: 'h' } }, allowPositionals: false, strict: true });
    values = parsed.values as Values;
  } catch (e) {
    return usageError((e as Error).message.replace(/\. To specify a positional argument.*$/s, ''), `usage: ${cmd.usage}\n`);
  }
  if (values.help) {
    out(helpOf(name));
    return 0;
  }
  if (cmd.rest && rest.length === 0) return usageError('no command to run: put it after --', `usage: ${cmd.usage}\n`);
  try {
    return await cmd.run(values, rest, { out, err, errIsTTY });
  } catch (e) {
    if (e instanceof UsageError) return usageError(e.message, `usage: ${cmd.usage}\n`);
    if (e instanceof RangeError || e instanceof TypeError) return usageError(e.message, `usage: ${cmd.usage}\n`);
    if (e instanceof LabError) {
      err(`kvm-gmem: ${e.message}\n  fix: ${e.hint}\n`);
      if (e.log) err(`  console (last lines):\n${e.log.split('\n').map((l) => `    ${l}`).join('\n')}\n`);
      return e.code === 'LAB_TIMEOUT' ? 124 : 1;
    }
    if (e instanceof KvmError) {
      err(`kvm-gmem: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

/** Whether this module is the program node was started with (also through a symlink, a
 * path with spaces, or without the .js extension). */
function isMain(): boolean {
  const arg = process.argv[1];
  if (!arg) return false;
  const self = realpathSync(fileURLToPath(import.meta.url));
  for (const candidate of [arg, `${arg}.js`]) {
    try {
      if (realpathSync(candidate) === self) return true;
    } catch {
      // not this candidate
    }
  }
  return false;
}

if (isMain()) {
  // A reader that went away (`kvm-gmem demo | head -1`) ends the program quietly.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw e;
    });
  }
  process.exitCode = await main(process.argv.slice(2));
}
