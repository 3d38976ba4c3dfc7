/** The lab from the command line: `lab run`, `lab kernel fetch|build`, and --kernel for caps,
 * selftest and demo (the same command run inside the lab). */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildKernel, labRun, resolveKernel, type LabRunOptions } from '../lab/index.js';
import type { Io } from './main.js';

export const LAB_OPTIONS = {
  kernel: { type: 'string' },
  modules: { type: 'string' },
  cpus: { type: 'string' },
  memory: { type: 'string' },
  timeout: { type: 'string' },
  accel: { type: 'string' },
  writable: { type: 'string', multiple: true },
} as const;

export interface LabFlags {
  kernel?: string;
  modules?: string;
  cpus?: string;
  memory?: string;
  timeout?: string;
  accel?: string;
  writable?: string[];
  'no-kvm-check'?: boolean;
}

function number(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+(\.\d+)?$/.test(v) || !(n > 0)) throw new RangeError(`--${name} must be a positive number, got '${v}'`);
  return n;
}

function labOptions(f: LabFlags, io: Io): Omit<LabRunOptions, 'argv'> {
  if (f.accel !== undefined && !['auto', 'kvm', 'tcg'].includes(f.accel)) throw new RangeError(`--accel must be auto, kvm or tcg, got '${f.accel}'`);
  const cpus = number(f.cpus, 'cpus');
  if (cpus !== undefined && !Number.isInteger(cpus)) throw new RangeError(`--cpus must be an integer, got '${f.cpus}'`);
  return {
    ...(f.kernel !== undefined ? { kernel: f.kernel } : {}),
    ...(f.modules !== undefined ? { modules: f.modules } : {}),
    ...(cpus !== undefined ? { cpus } : {}),
    ...(f.memory !== undefined ? { memory: f.memory } : {}),
    ...(f.timeout !== undefined ? { timeout: number(f.timeout, 'timeout')! } : {}),
    ...(f.accel !== undefined ? { accel: f.accel as 'auto' | 'kvm' | 'tcg' } : {}),
    writable: f.writable ?? [],
    require: f['no-kvm-check'] ? 'none' : 'guest_memfd',
    stdout: { write: (d: Buffer) => io.out(d) },
    stderr: { write: (d: Buffer) => io.err(d) },
    log: (m) => io.err(`${m}\n`),
  };
}

export async function labRunCommand(f: LabFlags, argv: string[], io: Io): Promise<number> {
  const r = await labRun({ ...labOptions(f, io), argv });
  return r.status;
}

/** The built CLI (dist/cli/main.js), which the lab's node runs. */
function builtCli(): string {
  const file = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'cli', 'main.js');
  if (!existsSync(file)) throw new RangeError(`--kernel runs the built CLI (${file}), which is missing: run npm run build`);
  return file;
}

/** Runs `kvm-gmem <args>` inside the lab; its exit status. */
export async function inLab(f: LabFlags, args: string[], io: Io): Promise<number> {
  const r = await labRun({ ...labOptions(f, io), require: 'kvm', argv: [process.execPath, builtCli(), ...args] });
  return r.status;
}

export async function labKernelFetch(spec: string | undefined, io: Io): Promise<number> {
  const k = resolveKernel(spec, undefined, (m) => io.err(`${m}\n`));
  io.out(`image: ${k.image}\nmodules: ${k.modules ?? '(none)'}\nrelease: ${k.release ?? '(unknown until booted)'}\n`);
  return 0;
}

export async function labKernelBuild(v: Record<string, unknown>, io: Io): Promise<number> {
  if (v.config === undefined) throw new RangeError('--config is required (sw-protected)');
  const jobs = number(v.jobs as string | undefined, 'jobs');
  const k = await buildKernel({
    config: v.config as string,
    ...(v.source !== undefined ? { source: v.source as string } : {}),
    ...(jobs !== undefined ? { jobs } : {}),
    log: (m) => io.err(`${m}\n`),
  });
  io.out(`${k}\n`);
  return 0;
}
