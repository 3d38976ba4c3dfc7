// The fuzz child: drives the raw and typed APIs with random and hostile arguments
// (fast-check generates them). Before each call it writes the call's description to the file
// named by argv[2], so if the process dies the parent can name the call that killed it.
// Usage: node test/fuzz/child.mjs <lastcall-file> <calls> <seed> <backend>
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import fc from 'fast-check';

const [, , lastFile, callsArg, seedArg, backendArg] = process.argv;
const CALLS = Number(callsArg ?? 100000);
const SEED = Number(seedArg ?? 1);
const lib = await import(new URL('../../dist/index.js', import.meta.url).href);
const { openKvm, raw: rawNs, KvmError } = lib;
const lastFd = openSync(lastFile, 'w');

const kvm = openKvm({ backend: backendArg });
const raw = kvm.raw;
const MiB = 1 << 20;

// Hostile values: wrong types, NaN, negative, unsafe, 2^64 + 1, huge, detached buffers.
const detached = (() => {
  const b = new ArrayBuffer(8);
  structuredClone(b, { transfer: [b] });
  return b;
})();
const throwing = { get slot() { throw new Error('getter'); }, get size() { throw new Error('getter'); } };
const hostile = fc.constantFrom(
  undefined, null, true, '', 'x', '0', [], {}, () => 1, Symbol('s'), NaN, Infinity, -Infinity,
  -1, -0, 0.5, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 64, -(2 ** 63), Number.MAX_VALUE,
  0n, -1n, 1n << 63n, (1n << 64n) - 1n, (1n << 64n) + 1n, -(1n << 64n), new ArrayBuffer(0), new Uint8Array(4), detached, throwing,
  99999, 2 ** 31 - 1, 0x7ffffffff000, 4095, 4097,
);
const small = fc.oneof(fc.integer({ min: -2, max: 70 }), fc.constantFrom(4096, 8192, MiB, 2 * MiB, 2 ** 40));
const bigish = fc.oneof(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.constantFrom(0n, 4096n, BigInt(2 * MiB), 1n << 63n, (1n << 64n) - 4096n));
const anyArg = fc.oneof({ weight: 3, arbitrary: hostile }, { weight: 2, arbitrary: small }, { weight: 1, arbitrary: bigish }, { weight: 1, arbitrary: fc.anything() });

// Live objects to aim at (some closed on purpose).
const vm = kvm.createVm();
const gmem = vm.createGuestMemfd({ size: 2 * MiB, mmap: true, initShared: true });
const map = gmem.map();
const closedGmem = vm.createGuestMemfd({ size: 4096 });
closedGmem.close();
const closedMap = gmem.map({ length: 4096 });
closedMap.close();
const handles = () => [kvm.fd, vm.fd, gmem.fd];
const handleArg = fc.oneof({ weight: 2, arbitrary: fc.constantFrom(...handles(), -1, 99999, 0, 1, 2) }, { weight: 1, arbitrary: anyArg });
const regionArg = fc.oneof(
  fc.record({ slot: fc.oneof(small, hostile), flags: fc.oneof(small, hostile), guestPhysAddr: fc.oneof(small, bigish, hostile), memorySize: fc.oneof(small, bigish, hostile), userspaceAddr: fc.oneof(small, bigish), guestMemfdOffset: fc.oneof(small, bigish, hostile), guestMemfd: handleArg }, { requiredKeys: [] }),
  anyArg,
);

// Raw calls (every RawBackend function but run: a random guest could spin forever).
const created = [];
const rawCalls = {
  // (fixed paths only: a random string could name a real file that a later call extends)
  open: fc.tuple(fc.oneof(fc.constantFrom('/dev/kvm', '/nonexistent', '/dev/null', '', 'a\0b'), hostile)),
  close: fc.tuple(handleArg),
  getApiVersion: fc.tuple(handleArg),
  checkExtension: fc.tuple(handleArg, fc.oneof(small, anyArg)),
  createVm: fc.tuple(handleArg, fc.oneof(fc.integer({ min: -1, max: 8 }), anyArg)),
  getVcpuMmapSize: fc.tuple(handleArg),
  createVcpu: fc.tuple(handleArg, fc.oneof(small, anyArg)),
  createGuestMemfd: fc.tuple(handleArg, fc.oneof(small, bigish, anyArg), fc.oneof(fc.constantFrom(0, 1, 2, 3, 4n), anyArg)),
  setUserMemoryRegion: fc.tuple(handleArg, regionArg),
  setUserMemoryRegion2: fc.tuple(handleArg, regionArg),
  setMemoryAttributes: fc.tuple(handleArg, fc.oneof(fc.record({ address: fc.oneof(small, bigish), size: fc.oneof(small, bigish), attributes: fc.oneof(small, bigish), flags: fc.oneof(small, hostile) }, { requiredKeys: [] }), anyArg)),
  preFaultMemory: fc.tuple(handleArg, fc.oneof(fc.record({ gpa: fc.oneof(small, bigish), size: fc.oneof(small, bigish), flags: small }, { requiredKeys: [] }), anyArg)),
  fallocate: fc.tuple(handleArg, fc.oneof(fc.integer({ min: -1, max: 0xff }), anyArg), fc.oneof(small, bigish, anyArg), fc.oneof(small, bigish, anyArg)),
  fstat: fc.tuple(handleArg),
  mmap: fc.tuple(handleArg, fc.oneof(small, bigish, anyArg), fc.oneof(small, bigish, anyArg), fc.oneof(fc.integer({ min: 0, max: 7 }), anyArg), fc.oneof(fc.constantFrom(1, 2, 3, 0x10, 0x100000, 0x20), anyArg)),
  munmap: fc.tuple(fc.oneof(fc.record({ address: fc.oneof(bigish, hostile), buffer: hostile }), anyArg)),
  getRegs: fc.tuple(handleArg),
  setRegs: fc.tuple(handleArg, fc.oneof(fc.constantFrom(new Uint8Array(144), new Uint8Array(10)), anyArg)),
  getSregs: fc.tuple(handleArg),
  setSregs: fc.tuple(handleArg, fc.oneof(fc.constantFrom(new Uint8Array(312), new Uint8Array(10)), anyArg)),
};

// Typed calls: a method of a live or closed object, or one applied to a wrong `this`.
const targets = [kvm, vm, gmem, map, closedGmem, closedMap, vm.memslots, vm.attributes, vm.memory];
const typedCalls = [];
for (const obj of targets) {
  let proto = Object.getPrototypeOf(obj);
  const names = new Set(Object.keys(obj).filter((k) => typeof obj[k] === 'function'));
  while (proto && proto !== Object.prototype) {
    for (const k of Object.getOwnPropertyNames(proto)) {
      const d = Object.getOwnPropertyDescriptor(proto, k);
      if (k !== 'constructor' && typeof d.value === 'function' && !['emit', 'on', 'once', 'addListener', 'removeAllListeners', 'setMaxListeners', 'run', 'close'].includes(k)) names.add(k);
    }
    proto = Object.getPrototypeOf(proto);
  }
  for (const k of names) typedCalls.push([obj, k]);
}
const thisArg = fc.oneof({ weight: 4, arbitrary: fc.constant('own') }, { weight: 1, arbitrary: fc.constantFrom({}, null, undefined, kvm, vm, gmem, map, 5) });
const typedArb = fc.tuple(fc.nat(typedCalls.length - 1), thisArg, fc.array(fc.oneof(anyArg, fc.record({ guestPhysAddr: fc.oneof(small, bigish), size: fc.oneof(small, bigish), guestMemfd: fc.constantFrom(gmem, closedGmem, undefined, {}), userspace: fc.constantFrom(map, closedMap, undefined, {}), slot: fc.oneof(small, hostile) }, { requiredKeys: [] })), { maxLength: 4 }));

const show = (v) => {
  try {
    if (typeof v === 'bigint') return `${v}n`;
    if (typeof v === 'symbol' || typeof v === 'function') return String(v).slice(0, 40);
    if (v instanceof ArrayBuffer) return `ArrayBuffer(${v.byteLength})`;
    return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? `${x}n` : x))?.slice(0, 200) ?? String(v);
  } catch {
    return Object.prototype.toString.call(v);
  }
};

// (userThrown: the error a hostile argument's own getter threw, passed through untouched)
const counts = { calls: 0, ok: 0, kvmError: 0, typeError: 0, rangeError: 0, userThrown: 0, other: 0 };
const others = new Map();
const rawNames = Object.keys(rawCalls);
const rng = fc.sample(fc.tuple(fc.nat(99), fc.nat(rawNames.length - 1)), { numRuns: CALLS, seed: SEED });
const BATCH = 1000;
for (let start = 0; start < CALLS; start += BATCH) {
  const n = Math.min(BATCH, CALLS - start);
  const rawArgs = new Map(rawNames.map((name) => [name, fc.sample(rawCalls[name], { numRuns: n, seed: SEED + start + name.length })]));
  const typedArgs = fc.sample(typedArb, { numRuns: n, seed: SEED * 7 + start });
  for (let i = 0; i < n; i++) {
    const [pick, which] = rng[start + i];
    let fn, self, args, desc;
    if (pick < 55) {
      const name = rawNames[which];
      args = rawArgs.get(name)[i];
      fn = raw[name];
      self = raw;
      desc = `raw.${name}(${args.map(show).join(', ')})`;
    } else {
      const [t, thisPick, a] = typedArgs[i];
      const [obj, name] = typedCalls[t];
      fn = obj[name];
      self = thisPick === 'own' ? obj : thisPick;
      args = a;
      desc = `${obj.constructor?.name}.${name}.call(${thisPick === 'own' ? 'own' : show(thisPick)}, ${args.map(show).join(', ')})`;
    }
    const line = `${start + i} ${desc}\n`;
    ftruncateSync(lastFd, writeSync(lastFd, line, 0));
    counts.calls++;
    try {
      const r = fn.apply(self, args);
      counts.ok++;
      if (typeof r === 'number' && r >= 3 && (fn === raw.createVm || fn === raw.createGuestMemfd || fn === raw.createVcpu || fn === raw.open)) created.push(r);
      if (r && typeof r === 'object' && typeof r.address === 'bigint' && fn === raw.mmap) raw.munmap(r);
      if (r && typeof r.then === 'function') r.catch(() => {});
    } catch (e) {
      if (e instanceof KvmError) counts.kvmError++;
      else if (e instanceof TypeError) counts.typeError++;
      else if (e instanceof RangeError) counts.rangeError++;
      else if (e?.message === 'getter') counts.userThrown++;
      else {
        counts.other++;
        const k = `${e?.constructor?.name}: ${String(e?.message).slice(0, 80)}`;
        if (!others.has(k)) others.set(k, desc);
      }
    }
  }
  // Keep the process's fds bounded: close what random calls created.
  for (const fd of created.splice(0)) {
    try {
      raw.close(fd);
    } catch {}
  }
}
ftruncateSync(lastFd, writeSync(lastFd, 'done\n', 0));
closeSync(lastFd);
console.log(JSON.stringify({ ...counts, others: [...others].map(([k, d]) => `${k}  <- ${d}`) }));
