/**
 * `kvm-gmem lab run`: boots a kernel under QEMU and runs one command inside, as root, with
 * the host's filesystem visible (read-only over 9p, made writable by an overlay whose writes
 * are dropped at the end), the host's working directory and environment, a writable scratch
 * directory ($KVM_GMEM_LAB_SCRATCH) and any --writable directories shared read-write at their
 * host paths. The command's stdout and stderr stream out as it runs; the result is its exit
 * status.
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import { appendFileSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fetchBusybox } from './debian.js';
import { LabError } from './errors.js';
import { MARK } from './init.sh.js';
import { baseInitramfs, runInitramfs } from './initramfs.js';
import { resolveKernel, type LabKernel } from './kernel.js';
import { findQemu, pickAccel, qemuArgs, type Accel } from './qemu.js';

export interface LabRunOptions {
  /** The command and its arguments. */
  argv: readonly string[];
  /** Kernel SPEC (default debian:unstable), or an already resolved kernel. */
  kernel?: string | LabKernel;
  /** Modules tree for a kernel image given by path. */
  modules?: string;
  cpus?: number;
  /** QEMU -m value, default '4G'. */
  memory?: string;
  /** Seconds before the command is stopped (default: none). */
  timeout?: number;
  accel?: Accel | 'auto';
  /** Default: the host's working directory. */
  cwd?: string;
  /** Default: the host's environment. */
  env?: NodeJS.ProcessEnv;
  /** Host directories the command may write (shared read-write at the same path). */
  writable?: readonly string[];
  /** What the kernel must offer, checked before the command runs (default 'guest_memfd'). */
  require?: 'guest_memfd' | 'kvm' | 'none';
  /** Where the command's output goes (default: this process's stdout and stderr). */
  stdout?: { write(chunk: Buffer): unknown };
  stderr?: { write(chunk: Buffer): unknown };
  /** Console lines (kernel messages, the lab's warnings). */
  onConsole?: (line: string) => void;
  /** The lab's own progress messages. */
  log?: (message: string) => void;
}

export interface LabRunResult {
  status: number;
  /** uname -r of the kernel that ran. */
  release: string | undefined;
  accel: Accel;
  /** QEMU start to the command's start. */
  bootMs: number;
  /** The command's own run time. */
  commandMs: number;
  totalMs: number;
  /** The console's last lines. */
  consoleTail: string;
}

/** Environment variables that describe the host session rather than the command's needs. */
const HOST_ONLY_ENV = new Set(['_', 'SHLVL', 'PWD', 'OLDPWD', 'TERM_PROGRAM', 'SSH_AUTH_SOCK', 'SSH_CONNECTION', 'SSH_CLIENT', 'SSH_TTY', 'DISPLAY', 'WAYLAND_DISPLAY', 'DBUS_SESSION_BUS_ADDRESS', 'XDG_RUNTIME_DIR']);
/** How long a kernel may take to reach the command (TCG on two busy cores is slow). */
const BOOT_TIMEOUT_MS = 180_000;
const TAIL_LINES = 40;

export function busyboxPath(log?: (s: string) => void): string {
  const given = process.env.KVM_GMEM_LAB_BUSYBOX;
  if (given) {
    if (!existsSync(given)) throw new LabError('LAB_TOOL', `KVM_GMEM_LAB_BUSYBOX=${given} does not exist`, 'point it at a statically linked busybox, or unset it');
    return given;
  }
  for (const p of ['/bin/busybox', '/usr/bin/busybox']) if (existsSync(p) && isStatic(p)) return p;
  return fetchBusybox(log);
}

/** Whether an ELF executable has no program interpreter (PT_INTERP), i.e. is static. */
function isStatic(file: string): boolean {
  const b = readFileSync(file);
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2) return false;
  const phoff = Number(b.readBigUInt64LE(32));
  const phentsize = b.readUInt16LE(54);
  const phnum = b.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) if (b.readUInt32LE(phoff + i * phentsize) === 3) return false;
  return true;
}

function checkOptions(o: LabRunOptions): void {
  if (!Array.isArray(o.argv) || o.argv.length === 0 || !o.argv.every((a) => typeof a === 'string')) throw new TypeError('argv must be a non-empty array of strings');
  if (o.cpus !== undefined && !(Number.isInteger(o.cpus) && o.cpus >= 1 && o.cpus <= 64)) throw new RangeError(`cpus must be an integer in [1, 64], got ${o.cpus}`);
  if (o.memory !== undefined && !/^\d+[MG]?$/i.test(o.memory)) throw new RangeError(`memory must look like 4G or 2048M, got ${o.memory}`);
  if (o.timeout !== undefined && !(o.timeout > 0)) throw new RangeError(`timeout must be a positive number of seconds, got ${o.timeout}`);
  for (const w of o.writable ?? []) {
    if (!path.isAbsolute(w) && !existsSync(w)) throw new RangeError(`writable directory ${w} does not exist`);
    if (!statSync(w).isDirectory()) throw new RangeError(`writable ${w} is not a directory`);
    if (/[\n\r]/.test(w)) throw new RangeError('a writable directory path cannot hold a newline');
  }
}

export async function labRun(options: LabRunOptions): Promise<LabRunResult> {
  checkOptions(options);
  const log = options.log ?? (() => {});
  const qemu = findQemu();
  const kernel = typeof options.kernel === 'object' ? options.kernel : resolveKernel(options.kernel, options.modules, log);
  const busybox = busyboxPath(log);
  const accel = pickAccel(options.accel);
  const work = mkdtempSync(path.join(os.tmpdir(), 'kvm-gmem-lab-'));
  const scratch = path.join(work, 'scratch');
  try {
    const base = baseInitramfs(busybox, kernel.modules);
    const initrd = path.join(work, 'initrd.cpio');
    copyFileSync(base, initrd);
    const writable = [scratch, ...(options.writable ?? []).map((w) => path.resolve(w))];
    mkdirSync(scratch);
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(options.env ?? process.env)) if (v !== undefined && !HOST_ONLY_ENV.has(k)) env[k] = v;
    env.KVM_GMEM_LAB_SCRATCH = scratch;
    env.KVM_GMEM_LAB = kernel.spec;
    appendFileSync(initrd, runInitramfs({
      argv: options.argv,
      cwd: path.resolve(options.cwd ?? process.cwd()),
      env,
      shares: writable.map((w, i) => [`rw${i}`, w] as const),
      require: options.require ?? 'guest_memfd',
    }));
    const args = qemuArgs({
      accel, cpus: options.cpus ?? 2, memory: options.memory ?? '4G', image: kernel.image, initrd,
      shares: [['hostroot', '/', 'ro'], ...writable.map((w, i) => [`rw${i}`, w, 'rw'] as const)],
      serial: [0, 1, 2].map((i) => path.join(work, `ttyS${i}`)) as [string, string, string],
    });
    const ports = await Promise.all([0, 1, 2].map((i) => listen(path.join(work, `ttyS${i}`))));
    try {
      return await boot(qemu, args, kernel, accel, ports, options);
    } finally {
      for (const p of ports) p.close();
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** A serial port's host end: a unix socket QEMU connects to; `data` gets what the guest writes. */
interface Port {
  onData(fn: (d: Buffer) => void): void;
  /** Resolves when QEMU has closed its end (all the guest wrote was read). */
  ended: Promise<void>;
  close(): void;
}

function listen(file: string): Promise<Port> {
  return new Promise((resolve, reject) => {
    let sink: (d: Buffer) => void = () => {};
    let end!: () => void;
    const ended = new Promise<void>((r) => (end = r));
    const server = net.createServer((sock) => {
      sock.on('data', (d) => sink(d));
      sock.on('close', end);
      sock.on('error', end);
      server.close();
    });
    server.on('error', reject);
    server.listen(file, () => resolve({ onData: (fn) => (sink = fn), ended, close: () => server.close() }));
  });
}

function boot(qemu: string, args: string[], kernel: LabKernel, accel: Accel, ports: Port[], o: LabRunOptions): Promise<LabRunResult> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const tail: string[] = [];
    let qemuErr = '';
    let readyAt: number | undefined;
    let status: number | undefined;
    let release = kernel.release;
    let failure: LabError | undefined;
    let partial = '';
    const stdout = o.stdout ?? process.stdout;
    const stderr = o.stderr ?? process.stderr;
    const consoleTail = () => tail.join('\n');
    const fail = (e: LabError) => {
      failure ??= e;
      child.kill('SIGKILL');
    };

    const onMarker = (event: string) => {
      const [what, ...rest] = event.split(' ');
      if (what === 'ready') readyAt = performance.now();
      else if (what === 'exit') status = Number(rest[0]);
      else if (what === 'release') release = rest[0];
      else if (what === 'no-kvm') {
        fail(new LabError('LAB_NO_KVM', `the kernel ${kernel.spec} has no usable /dev/kvm`,
          accel === 'kvm'
            ? "the host's KVM does not pass virtualization on to its guests: enable nested virtualization (kvm_amd/kvm_intel nested=1) or use --accel tcg"
            : 'use a kernel built with KVM and KVM_AMD (for its modules, pass --modules)', consoleTail()));
      } else if (what === 'no-gmem') {
        fail(new LabError('LAB_NO_GMEM', `the kernel ${kernel.spec} has no guest_memfd (CONFIG_KVM_GUEST_MEMFD, Linux 6.8 and later)`, 'use a newer kernel, such as debian:unstable', consoleTail()));
      } else if (what === 'fail') {
        fail(new LabError('LAB_BOOT', `the lab could not set up the guest: ${rest.join(' ')}`, 'the kernel needs 9p over virtio (NET_9P_VIRTIO, 9P_FS) built in or as modules', consoleTail()));
      } else if (what === 'warn') o.log?.(`lab: ${rest.join(' ')}`);
    };
    const onConsoleData = (chunk: Buffer) => {
      const lines = (partial + chunk.toString('utf8')).split('\n');
      partial = lines.pop()!;
      for (const raw of lines) {
        const line = raw.replace(/\r$/, '');
        const at = line.indexOf(MARK);
        if (at >= 0 && line.endsWith('@@')) onMarker(line.slice(at + MARK.length, -2).trim());
        else {
          tail.push(line);
          if (tail.length > TAIL_LINES) tail.shift();
          o.onConsole?.(line);
        }
      }
    };
    child.stdout!.on('data', (d: Buffer) => (qemuErr += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (qemuErr += d.toString()));
    ports[0]!.onData(onConsoleData);
    ports[1]!.onData((d) => stdout.write(d));
    ports[2]!.onData((d) => stderr.write(d));

    const bootTimer = setTimeout(() => {
      if (readyAt === undefined) fail(new LabError('LAB_BOOT', `the kernel did not reach the command within ${BOOT_TIMEOUT_MS / 1000} s`, 'see the console log below; a kernel for x86-64 with virtio and 9p is needed', consoleTail()));
    }, BOOT_TIMEOUT_MS);
    const runTimer = o.timeout === undefined ? undefined : setTimeout(() => {
      fail(new LabError('LAB_TIMEOUT', `the command did not end within ${o.timeout} s`, 'raise --timeout (under TCG everything is 5-50x slower than on hardware)', consoleTail()));
    }, o.timeout * 1000);

    child.on('error', (e) => fail(new LabError('LAB_NO_QEMU', `cannot start ${qemu}: ${e.message}`, 'install qemu-system-x86')));
    child.on('close', async (code, signal) => {
      clearTimeout(bootTimer);
      // (A port QEMU never connected, because it failed at start, has nothing to wait for.)
      await Promise.race([Promise.all(ports.map((p) => p.ended)), new Promise((r) => setTimeout(r, 1000))]);
      clearTimeout(runTimer);
      if (partial) onConsoleData(Buffer.from('\n'));
      const now = performance.now();
      if (failure) return reject(failure);
      if (status === undefined) {
        const why = qemuErr.trim() ? `QEMU: ${qemuErr.trim().split('\n').slice(-3).join(' / ')}` : `QEMU exited (${signal ?? code})`;
        return reject(new LabError('LAB_BOOT', readyAt === undefined ? `the kernel did not reach the command: ${why}` : `the kernel stopped while the command ran: ${why}`,
          readyAt === undefined ? 'see the console log below' : 'the command may have crashed the kernel; see the console log below', consoleTail()));
      }
      resolve({
        status, release, accel,
        bootMs: (readyAt ?? now) - started, commandMs: readyAt === undefined ? 0 : now - readyAt, totalMs: now - started,
        consoleTail: consoleTail(),
      });
    });
  });
}
