// 32,764 one-page guest_memfd memslots added and then deleted in ascending order, from a C
// loop of the same KVM_SET_USER_MEMORY_REGION2 calls and through the typed API, in the same
// kernel: the typed API's pre-checks and books must cost <= 1.3x the bare ioctls (target).
// The runs are interleaved, 2,048 slots at a time (C process, the C loop inside a Node
// process, the raw backend from JS, the typed API over a backend whose ioctl does nothing, the
// typed API one call per slot and in batches), because under TCG the machine's speed drifts by
// up to 2x within a minute: whole runs one after another measured the drift as much as the
// library. Each runs in a process of its own with one VM, stepped over its stdin. Three
// passes over the same processes and VMs (BENCH_LAB_PASSES): the last is the figure, the
// per-slot cost of a running VMM. The first ones also pay for compiling the typed path, once
// per process, which TCG makes slow: a fresh Node process spends its first ~10,000 slots in
// V8's interpreter, and the optimising compiler, emulated too, is still at work in the second
// pass (measured in the lab, the layer alone over a no-op ioctl, per slot added and deleted:
// 130 us in a fresh process's first pass, 40 in its second, 23-26 from the third on). The
// first pass's ratio, fresh processes compiling, is printed beside the figure.
// Deletes are the kernel's costliest memslot call, and this is the kernel's own
// set_memory_region_test shape. Needs a real kernel: where /dev/kvm does not open, this
// runs itself inside the lab (Debian unstable under QEMU; several minutes under TCG).
// BENCH_LAB=0 skips it; BENCH_SLOTS=N changes the count.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');
const N = Number(process.env.BENCH_SLOTS ?? 32_764);
const TARGET = 1.3;

function emit(result) {
  if (process.env.BENCH_JSON) console.log(JSON.stringify({ bench: 'lab-slots', ...result }));
}

if (process.env.BENCH_LAB === '0') {
  console.log('lab slots: skipped (BENCH_LAB=0)');
  process.exit(0);
}

const { hostKvmUsable } = await import('../dist/lab/index.js');
if (!hostKvmUsable()) {
  if (process.env.KVM_GMEM_LAB) {
    console.log('lab slots: no /dev/kvm even in the lab');
    process.exit(1);
  }
  // Inside the lab: this same script, its output passed through.
  const r = spawnSync(process.execPath, [path.join(root, 'dist', 'cli', 'main.js'), 'lab', 'run', '--kernel', process.env.BENCH_LAB_KERNEL ?? 'debian:unstable', '--timeout', '3600', ...(process.env.BENCH_LAB_CPUS ? ['--cpus', process.env.BENCH_LAB_CPUS] : []), '--', process.execPath, fileURLToPath(import.meta.url)], {
    cwd: root, encoding: 'utf8', env: process.env, stdio: ['ignore', 'pipe', 'inherit'],
  });
  process.stdout.write(r.stdout);
  process.exit(r.status ?? 1);
}

const { spawn } = await import('node:child_process');
const { createInterface } = await import('node:readline');
const PAGE = 4096n;
const CHUNK = 2048;
const SERVE = process.argv.indexOf('--serve');

/**
 * A participant in a process of its own, stepped over its stdin as the C process is: one VM,
 * as a VMM process has. (Side by side in one process, each typed participant's garbage
 * collections also walked the other participants' 32,764 slots: a cost no VMM has.) Between
 * its steps a participant is stopped (SIGSTOP): an idle Node process still collects garbage
 * and runs timers on V8's threads, which would land on whichever participant is running.
 */
function child(command, args) {
  const proc = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => (stderr += d));
  const lines = createInterface({ input: proc.stdout })[Symbol.asyncIterator]();
  let first = true;
  return {
    async step(from, to, add) {
      proc.kill('SIGCONT');
      proc.stdin.write(`${add ? 'add' : 'delete'} ${from} ${to}\n`);
      const r = await lines.next();
      if (r.done) throw new Error(`${path.basename(args[0] ?? command)}: ${stderr}`);
      proc.kill('SIGSTOP');
      first = false;
      return Number(r.value);
    },
    close: () => new Promise((resolve) => {
      proc.on('exit', resolve);
      proc.kill('SIGCONT');
      proc.stdin.end();
    }),
    get started() {
      return !first;
    },
  };
}

/** The C process (bench/c/slots.cc). */
const cProcess = () => child(path.join(here, 'out', 'slots'), [String(N)]);
/** A Node participant: this script with --serve KIND. */
const nodeProcess = (kind) => child(process.execPath, [fileURLToPath(import.meta.url), '--serve', kind]);

if (SERVE > 0) {
  // A participant's side: make it, then answer "add|delete FROM TO" with the milliseconds.
  const run = await participant(process.argv[SERVE + 1]);
  for await (const line of createInterface({ input: process.stdin })) {
    const [op, from, to] = line.split(' ');
    process.stdout.write(`${(await run.step(Number(from), Number(to), op === 'add')).toFixed(3)}\n`);
  }
  await run.close();
  process.exit(0);
}

async function participant(kind) {
  const { openKvm } = await import('../dist/index.js');
  const { SimBackend } = await import('../dist/raw/sim/index.js');
  class NoopMemslots extends SimBackend {
    setUserMemoryRegion2() {}
    setUserMemoryRegions2() {}
  }

  /** The C loop of slots-loop.h inside a Node process (bench/c/slots-inproc.cc). */
  function cInProcess() {
    const inproc = createRequire(import.meta.url)(path.join(here, 'out', 'slots-inproc.node'));
    const h = inproc.open(N);
    return { step: async (from, to, add) => inproc.step(h, from, to, add), close: async () => inproc.close(h) };
  }

  /** The raw backend's call from JS, with the region objects the typed API passes. */
  function rawLoop() {
    const kvm = openKvm({ backend: 'kvm' });
    const vm = kvm.createVm();
    const g = vm.createGuestMemfd({ size: BigInt(N) * PAGE });
    const raw = kvm.raw;
    const region = (i, add) => ({
      v2: true, slot: i, flags: add ? 4 : 0, guestPhysAddr: add ? BigInt(i) * PAGE : 0n, memorySize: add ? PAGE : 0n,
      userspaceAddr: 0n, guestMemfdOffset: add ? BigInt(i) * PAGE : 0n, guestMemfd: add ? g.fd : 0,
    });
    return {
      async step(from, to, add) {
        const t0 = performance.now();
        for (let i = from; i < to; i++) raw.setUserMemoryRegion2(vm.fd, region(i, add));
        return performance.now() - t0;
      },
      close: async () => (vm.close(), kvm.close()),
    };
  }

  /** `noop`: over the simulator with KVM_SET_USER_MEMORY_REGION2 doing nothing (the layer's own
   * work). `many`: addMany()/deleteMany() per chunk, else add() and delete() per slot. */
  function typed(noop, many) {
    const kvm = noop ? openKvm({ raw: new NoopMemslots() }) : openKvm({ backend: 'kvm' });
    const vm = kvm.createVm();
    const g = vm.createGuestMemfd({ size: BigInt(N) * PAGE });
    const slots = new Array(N);
    const options = (i) => ({ slot: i, guestPhysAddr: BigInt(i) * PAGE, size: PAGE, guestMemfd: g, guestMemfdOffset: BigInt(i) * PAGE });
    return {
      async step(from, to, add) {
        const t0 = performance.now();
        if (many && add) {
          const list = [];
          for (let i = from; i < to; i++) list.push(options(i));
          const made = vm.memslots.addMany(list);
          for (let i = from; i < to; i++) slots[i] = made[i - from];
        } else if (many) {
          vm.memslots.deleteMany(slots.slice(from, to));
        } else if (add) {
          for (let i = from; i < to; i++) slots[i] = vm.memslots.add(options(i));
        } else {
          for (let i = from; i < to; i++) slots[i].delete();
        }
        return performance.now() - t0;
      },
      close: async () => (vm.close(), kvm.close()),
    };
  }

  switch (kind) {
    case 'cIn': return cInProcess();
    case 'raw': return rawLoop();
    case 'noop': return typed(true, false);
    case 'js': return typed(false, false);
    case 'noopMany': return typed(true, true);
    case 'jsMany': return typed(false, true);
  }
  throw new Error(`no participant ${kind}`);
}

const inproc = existsSync(path.join(here, 'out', 'slots-inproc.node'));

const only = process.env.BENCH_LAB_ONLY?.split(',');
const runs = { c: cProcess(), ...Object.fromEntries(['cIn', 'raw', 'noop', 'js', 'noopMany', 'jsMany'].filter((k) => (k !== 'cIn' || inproc) && (!only || only.includes(k))).map((k) => [k, nodeProcess(k)])) };

/** One pass: every participant adds all slots, then deletes them, a chunk each in turn. */
async function pass() {
  const out = Object.fromEntries(Object.keys(runs).map((k) => [k, { n: N, addMs: 0, deleteMs: 0 }]));
  for (const add of [true, false]) {
    for (let from = 0; from < N; from += CHUNK) {
      for (const [k, run] of Object.entries(runs)) out[k][add ? 'addMs' : 'deleteMs'] += await run.step(from, Math.min(N, from + CHUNK), add);
    }
  }
  return out;
}

const total = (x) => x.addMs + x.deleteMs;
const s = (x) => `add ${(x.addMs / 1000).toFixed(1)} s + delete ${(x.deleteMs / 1000).toFixed(1)} s`;
const passes = [];
for (let k = Math.max(1, Number(process.env.BENCH_LAB_PASSES ?? 3)); k > 0; k--) passes.push(await pass());
const first = passes[0];
const last = passes[passes.length - 1];
for (const run of Object.values(runs)) await run.close();
if (process.env.BENCH_LAB_ONLY) {
  // A subset (BENCH_LAB_ONLY=cIn,jsMany, say): each participant's cost per slot added and deleted.
  for (const [k, x] of passes.entries()) {
    const name = k === 0 ? 'first' : k === passes.length - 1 ? 'last' : `#${k + 1}`;
    console.log(`lab slots, ${name} pass, per slot added and deleted: ${Object.entries(x).map(([k, v]) => `${k} ${((total(v) * 1000) / N).toFixed(0)} us`).join(', ')}`);
  }
  process.exit(0);
}
const { c: bestC, cIn: bestCIn, js: bestJs, jsMany: bestMany } = last;
// The baseline is the faster of the two C loops: the C process, or the same loop inside a Node
// process (in this lab the C process has measured 1.1-1.5x slower than the same loop in Node,
// for reasons not found; comparing with the slower one would flatter the library).
const base = bestCIn && total(bestCIn) < total(bestC) ? bestCIn : bestC;
const baseName = base === bestC ? 'C process' : 'C loop in a Node process';
const ratio = total(bestMany) / total(base);
const ratioOne = total(bestJs) / total(base);
const ok = ratio <= TARGET;
const firstRatio = total(first.jsMany) / total(base === bestC ? first.c : first.cIn);
const vs = (x, c) => (c ? (total(x) / total(c)).toFixed(2) : '-');
console.log(`lab slots (${process.env.KVM_GMEM_LAB ?? 'this host'}, interleaved): ${N} one-page gmem slots added and deleted; baseline the ${baseName} (${s(base)}); typed API in batches (addMany/deleteMany, ${CHUNK} a call) ${s(bestMany)}: ratio ${ratio.toFixed(2)} (target <= ${TARGET}) ${ok ? 'OK' : 'OVER'} [vs the C process ${vs(bestMany, bestC)}, vs the C loop in Node ${vs(bestMany, bestCIn)}; first pass, fresh processes compiling the library ${firstRatio.toFixed(2)}]`);
console.log(`lab slots, one call per slot (add/delete): typed API ${s(bestJs)}: ratio ${ratioOne.toFixed(2)} [vs the C process ${vs(bestJs, bestC)}, vs the C loop in Node ${vs(bestJs, bestCIn)}] (no target: under TCG the JavaScript between two memslot ioctls costs more than it does alone)`);
const perPair = (x) => `${((total(x) * 1000) / N).toFixed(0)} us`;
console.log(`lab slots, per slot added and deleted: C process ${perPair(bestC)}${bestCIn ? `, C loop in Node ${perPair(bestCIn)}` : ''}, raw backend from JS ${perPair(last.raw)}; typed API with a no-op ioctl (the layer's own work) ${perPair(last.noop)} one by one, ${perPair(last.noopMany)} in batches; typed API ${perPair(bestJs)} one by one, ${perPair(bestMany)} in batches`);
emit({ n: N, passes: passes.length, c: bestC, cInProcess: bestCIn, raw: last.raw, typedNoop: last.noop, typedNoopMany: last.noopMany, typed: bestJs, typedMany: bestMany, baseline: baseName, ratio, ratioOneByOne: ratioOne, ratioFirstPass: firstRatio, target: TARGET, ok });
process.exitCode = ok ? 0 : 1;
