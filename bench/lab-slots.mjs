// 32,764 one-page guest_memfd memslots added and then deleted in ascending order, from a C
// loop of the same KVM_SET_USER_MEMORY_REGION2 calls and through the typed API, in the same
// kernel: the typed API's pre-checks and books must cost <= 1.3x the bare ioctls (target).
// The runs are interleaved, 2,048 slots at a time (C process, the C loop inside this Node
// process, the raw backend from JS, the typed API over a backend whose ioctl does nothing, the
// typed API), because under TCG the machine's speed drifts by up to 2x within a
// minute: whole runs one after another measured the drift as much as the library. Two
// passes; the second is the figure (the first also pays for compiling the typed path, which
// TCG makes slow).
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

const { openKvm } = await import('../dist/index.js');
const { SimBackend } = await import('../dist/raw/sim/index.js');
class NoopMemslots extends SimBackend {
  setUserMemoryRegion2() {}
  setUserMemoryRegions2() {}
}
const { spawn } = await import('node:child_process');
const { createInterface } = await import('node:readline');
const PAGE = 4096n;
const CHUNK = 2048;

/** The C process (bench/c/slots.cc), stepped over its stdin. */
function cProcess() {
  const child = spawn(path.join(here, 'out', 'slots'), [String(N)], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  return {
    async step(from, to, add) {
      child.stdin.write(`${add ? 'add' : 'delete'} ${from} ${to}\n`);
      const r = await lines.next();
      if (r.done) throw new Error(`bench/out/slots: ${stderr}`);
      return Number(r.value);
    },
    close: () => new Promise((resolve) => (child.stdin.end(), child.on('exit', resolve))),
  };
}

/** The same C loop inside this Node process (bench/c/slots-inproc.cc). */
const inprocPath = path.join(here, 'out', 'slots-inproc.node');
const inproc = existsSync(inprocPath) ? createRequire(import.meta.url)(inprocPath) : undefined;
function cInProcess() {
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
function typed(noop = false, many = false) {
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

/** One pass: every participant adds all slots, then deletes them, a chunk each in turn. */
async function pass() {
  const runs = { c: cProcess(), ...(inproc ? { cIn: cInProcess() } : {}), raw: rawLoop(), noop: typed(true), js: typed(), noopMany: typed(true, true), jsMany: typed(false, true) };
  const out = Object.fromEntries(Object.keys(runs).map((k) => [k, { n: N, addMs: 0, deleteMs: 0 }]));
  for (const add of [true, false]) {
    for (let from = 0; from < N; from += CHUNK) {
      for (const [k, run] of Object.entries(runs)) out[k][add ? 'addMs' : 'deleteMs'] += await run.step(from, Math.min(N, from + CHUNK), add);
    }
  }
  for (const run of Object.values(runs)) await run.close();
  return out;
}

const total = (x) => x.addMs + x.deleteMs;
const s = (x) => `add ${(x.addMs / 1000).toFixed(1)} s + delete ${(x.deleteMs / 1000).toFixed(1)} s`;
const first = await pass();
const second = await pass();
const { c: bestC, cIn: bestCIn, js: bestJs, jsMany: bestMany } = second;
const ratio = total(bestMany) / total(bestC);
const ratioOne = total(bestJs) / total(bestC);
const ratioIn = bestCIn ? total(bestMany) / total(bestCIn) : undefined;
const ok = ratio <= TARGET;
console.log(`lab slots (${process.env.KVM_GMEM_LAB ?? 'this host'}, interleaved): ${N} one-page gmem slots, C process ${s(bestC)}; typed API in batches (addMany/deleteMany, ${CHUNK} a call) ${s(bestMany)}: ratio ${ratio.toFixed(2)} (target <= ${TARGET}) ${ok ? 'OK' : 'OVER'} [first pass, with compiling: ${(total(first.jsMany) / total(first.c)).toFixed(2)}]`);
console.log(`lab slots, one call per slot (add/delete): typed API ${s(bestJs)}: ratio ${ratioOne.toFixed(2)} (no target met: under TCG the JavaScript between two memslot ioctls costs more than it does alone) [first pass: ${(total(first.js) / total(first.c)).toFixed(2)}]`);
const perPair = (x) => `${((total(x) * 1000) / N).toFixed(0)} us`;
console.log(`lab slots, per slot added and deleted: C process ${perPair(bestC)}${bestCIn ? `, C in Node ${perPair(bestCIn)}` : ''}, raw backend from JS ${perPair(second.raw)}; typed API with a no-op ioctl (the layer's own work) ${perPair(second.noop)} one by one, ${perPair(second.noopMany)} in batches; typed API ${perPair(bestJs)} one by one, ${perPair(bestMany)} in batches`);
if (bestCIn) {
  console.log(`lab slots: the same C loop inside the Node process ${s(bestCIn)} (${(total(bestCIn) / total(bestC)).toFixed(2)}x the C process: the kernel's cost in this process); typed API in batches / in-process C: ${ratioIn.toFixed(2)} (the library's own cost)`);
}
emit({ n: N, c: bestC, cInProcess: bestCIn, raw: second.raw, typedNoop: second.noop, typedNoopMany: second.noopMany, typed: bestJs, typedMany: bestMany, ratio, ratioOneByOne: ratioOne, ratioInProcess: ratioIn, firstPassRatio: total(first.jsMany) / total(first.c), target: TARGET, ok });
process.exitCode = ok ? 0 : 1;
