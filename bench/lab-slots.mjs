// 32,764 one-page guest_memfd memslots added and then deleted in ascending order, from a C
// loop of the same KVM_SET_USER_MEMORY_REGION2 calls and through the typed API, in the same
// kernel: the typed API's pre-checks and books must cost <= 1.3x the bare ioctls (target).
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
const PAGE = 4096n;

function cLoop() {
  const r = spawnSync(path.join(here, 'out', 'slots'), [String(N)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bench/out/slots: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

// The same C loop inside this Node process (bench/c/slots-inproc.cc): the kernel's memslot
// ioctl costs more in a Node process than in a small C one under TCG, so this is the
// baseline that isolates the library's own cost.
const inprocPath = path.join(here, 'out', 'slots-inproc.node');
const inproc = existsSync(inprocPath) ? createRequire(import.meta.url)(inprocPath) : undefined;
function cInProcess() {
  return { n: N, ...inproc.run(N) };
}

function typed() {
  const kvm = openKvm({ backend: 'kvm' });
  const vm = kvm.createVm();
  const g = vm.createGuestMemfd({ size: BigInt(N) * PAGE });
  const slots = [];
  const t0 = performance.now();
  for (let i = 0; i < N; i++) slots.push(vm.memslots.add({ slot: i, guestPhysAddr: BigInt(i) * PAGE, size: PAGE, guestMemfd: g, guestMemfdOffset: BigInt(i) * PAGE }));
  const t1 = performance.now();
  for (const s of slots) s.delete();
  const t2 = performance.now();
  vm.close();
  kvm.close();
  return { n: N, addMs: t1 - t0, deleteMs: t2 - t1 };
}

// C, in-process C, typed, twice: each keeps its better round (the machine's load falls on all).
const c = [];
const cIn = [];
const js = [];
for (let round = 0; round < (process.env.BENCH_ROUNDS === '1' ? 1 : 2); round++) {
  c.push(cLoop());
  if (inproc) cIn.push(cInProcess());
  js.push(typed());
}
const total = (x) => x.addMs + x.deleteMs;
const best = (runs) => (runs.length ? runs.reduce((a, b) => (total(a) <= total(b) ? a : b)) : undefined);
const bestC = best(c);
const bestCIn = best(cIn);
const bestJs = best(js);
const ratio = total(bestJs) / total(bestC);
const ratioIn = bestCIn ? total(bestJs) / total(bestCIn) : undefined;
const ok = ratio <= TARGET;
const s = (x) => `add ${(x.addMs / 1000).toFixed(1)} s + delete ${(x.deleteMs / 1000).toFixed(1)} s`;
console.log(`lab slots (${process.env.KVM_GMEM_LAB ?? 'this host'}): ${N} one-page gmem slots, C process ${s(bestC)}; typed API ${s(bestJs)}: ratio ${ratio.toFixed(2)} (target <= ${TARGET}) ${ok ? 'OK' : 'OVER'}`);
if (bestCIn) {
  console.log(`lab slots: the same C loop inside the Node process ${s(bestCIn)} (${(total(bestCIn) / total(bestC)).toFixed(2)}x the C process: the kernel's cost in this process); typed API / in-process C: ${ratioIn.toFixed(2)} (the library's own cost)`);
}
emit({ n: N, c: bestC, cInProcess: bestCIn, typed: bestJs, ratio, ratioInProcess: ratioIn, target: TARGET, ok });
process.exitCode = ok ? 0 : 1;
