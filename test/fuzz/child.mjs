// The fuzz child: drives the raw and typed APIs with random and hostile arguments
// (fast-check generates them). Before each call it writes the call's description to the file
// named by argv[2], so if the process dies the parent can name the call that killed it.
// Besides wrong values, the arguments fight back (issue 13): getters with side effects (they
// unmap, close, delete slots, close raw fds and reuse their numbers), forged objects of the
// library's prototypes, listeners that throw or call back into their VM, buffers transferred
// away. Their targets are victims renewed every batch, so the fixed targets stay alive.
// Usage: node test/fuzz/child.mjs <lastcall-file> <calls> <seed> <backend>
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import fc from 'fast-check';

const [, , lastFile, callsArg, seedArg, backendArg] = process.argv;
const CALLS = Number(callsArg ?? 100000);
const SEED = Number(seedArg ?? 1);
const lib = await import(new URL('../../dist/index.js', import.meta.url).href);
const { openKvm, raw: rawNs, KvmError, Mapping, GuestMemfd, Memslot, Vcpu, Vm, MemslotTable } = lib;
const lastFd = openSync(lastFile, 'w');

const kvm = openKvm({ backend: backendArg });
const raw = kvm.raw;
const MiB = 1 << 20;

// Where default VMs have host-accessible gmems (mmap + initShared: 6.18 and later), the
// targets are gmem mappings and gmem slots; else (6.12: no guest_memfd slots on default VMs,
// gmems only without flags) shared memory stands in for both.
const caps = kvm.capabilities();
const sharedGmem = caps.guestMemfd && caps.guestMemfdFlags.mmap && caps.guestMemfdFlags.initShared;
const makeGmem = (v, size) => (sharedGmem ? v.createGuestMemfd({ size, mmap: true, initShared: true }) : v.createGuestMemfd({ size }));
const makeMap = (v, g, length) => (sharedGmem ? g.map({ length }) : v.createSharedMemory({ size: length }));

// Live objects to aim at (some closed on purpose).
const vm = kvm.createVm();
const gmem = makeGmem(vm, 2 * MiB);
const map = makeMap(vm, gmem, 2 * MiB);
const closedGmem = vm.createGuestMemfd({ size: 4096 });
closedGmem.close();
const closedMap = makeMap(vm, gmem, 4096);
closedMap.close();

// Victims: a VM with a gmem, mappings, slots and a vCPU, renewed every batch, that the
// side-effecting arguments and the listeners below destroy. Its listeners call back in.
let victims;
const recycled = []; // raw handles closed and (perhaps) given to a new file since
let listenerCalls = 0;
let effectsRun = 0;
function reenter(v, g) {
  switch (listenerCalls++ % 7) {
    case 0: throw new Error('listener');
    case 1: return g.punchHole(0, 4096);
    case 2: return v.setPrivate(4096, 4096);
    case 3: return v.setShared(0, 8192);
    case 4: return v.memslots.list()[0]?.delete();
    case 5: return listenerCalls % 5 === 0 ? v.close() : undefined;
    default: return undefined;
  }
}
// (a Kvm of their own: the raw calls close the fixed targets' fds at random, kvm.fd included)
const victimKvm = openKvm({ backend: backendArg });
function renewVictims() {
  if (victims) tolerate(() => victims.vm.close());
  const v = victimKvm.createVm();
  const g = makeGmem(v, 2 * MiB);
  const m = makeMap(v, g, MiB);
  const shared = v.createSharedMemory({ size: MiB, memfd: true });
  const slot = v.memslots.add(sharedGmem ? { guestPhysAddr: 0, size: MiB, guestMemfd: g } : { guestPhysAddr: 0, size: MiB, userspace: m });
  const slot2 = v.memslots.add({ guestPhysAddr: 16 * MiB, size: MiB, userspace: shared });
  const vcpu = v.createVcpu(0);
  let depth = 0;
  for (const event of ['invalidate', 'convert']) {
    v.on(event, () => {
      if (depth > 1) return;
      depth++;
      try {
        reenter(v, g);
      } finally {
        depth--;
      }
    });
  }
  victims = { vm: v, gmem: g, map: m, shared, slot, slot2, vcpu, vmFd: v.fd, gmemFd: g.fd, vcpuFd: vcpu.fd, memfd: shared.fd };
}
// A close or call that may meet an fd closed behind its back: only the library's errors.
function tolerate(fn) {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof KvmError || e instanceof TypeError || e instanceof RangeError)) throw e;
  }
}
const V = () => victims;
const effects = {
  'unmaps the victim mapping': () => tolerate(() => V().map.close()),
  'unmaps the victim shared memory': () => tolerate(() => V().shared.close()),
  'closes the victim gmem': () => tolerate(() => V().gmem.close()),
  'deletes a victim slot': () => tolerate(() => V().slot.delete()),
  'adds a victim slot': () => tolerate(() => V().vm.memslots.add({ guestPhysAddr: 32 * MiB, size: 4096, userspace: V().shared })),
  'closes the victim vCPU': () => tolerate(() => V().vcpu.close()),
  'closes the victim VM': () => tolerate(() => V().vm.close()),
  'closes the victim gmem fd behind its back': () => tolerate(() => raw.close(V().gmemFd)),
  'closes a raw fd and opens a memfd (perhaps at its number)': () => {
    const h = raw.memfdCreate('kvm-gmem fuzz closed');
    raw.close(h);
    created.push(raw.memfdCreate('kvm-gmem fuzz reuse'));
    recycled.push(h);
  },
};
// An options/struct object whose every field is a getter; reading `key` runs the effect.
const labels = new WeakMap(); // (what show() prints for it: JSON.stringify would run the getters)
function effectful(key, effect, name) {
  const fields = {
    slot: 3, flags: 0, guestPhysAddr: 0x100000, memorySize: 4096, userspaceAddr: 0, size: 4096, offset: 0, length: 4096,
    gpa: 0, address: 0, attributes: 0, guestMemfdOffset: 0, userspace: () => V().map, guestMemfd: () => V().gmem,
  };
  const o = {};
  for (const [k, v] of Object.entries(fields)) {
    Object.defineProperty(o, k, { enumerable: true, get: () => (k === key && (effectsRun++, effect()), typeof v === 'function' ? v() : v) });
  }
  labels.set(o, `{ get ${key}() { ${name} } }`);
  return o;
}
const effectfulArgs = Object.entries(effects).flatMap(([name, effect]) => ['slot', 'guestPhysAddr', 'size', 'userspace', 'guestMemfd', 'gpa', 'address', 'offset'].map((k) => effectful(k, effect, name)));
// Objects of the library's prototypes that the library did not make, and proxies of real ones.
const forged = [
  ...[Mapping, GuestMemfd, Memslot, Vcpu, Vm, MemslotTable].map((C) => Object.create(C.prototype)),
  Object.assign(Object.create(Mapping.prototype), { source: 'guest_memfd', offset: 0n, length: 1n << 40n, guestMemfd: gmem }),
  new Proxy(map, {}), new Proxy(gmem, {}), new Proxy(vm.memslots, {}),
];

// Hostile values: wrong types, NaN, negative, unsafe, 2^64 + 1, huge, detached buffers.
const detached = (() => {
  const b = new ArrayBuffer(8);
  structuredClone(b, { transfer: [b] });
  return b;
})();
const detachedView = (() => {
  const u = new Uint8Array(16);
  structuredClone(u.buffer, { transfer: [u.buffer] });
  return u;
})();
const throwing = { get slot() { throw new Error('getter'); }, get size() { throw new Error('getter'); } };
const hostile = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(
    undefined, null, true, '', 'x', '0', [], {}, () => 1, Symbol('s'), NaN, Infinity, -Infinity,
    -1, -0, 0.5, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 64, -(2 ** 63), Number.MAX_VALUE,
    0n, -1n, 1n << 63n, (1n << 64n) - 1n, (1n << 64n) + 1n, -(1n << 64n), new ArrayBuffer(0), new Uint8Array(4), detached, detachedView, throwing,
    99999, 2 ** 31 - 1, 0x7ffffffff000, 4095, 4097,
  ) },
  { weight: 1, arbitrary: fc.constantFrom(...effectfulArgs, ...forged) },
);
const small = fc.oneof(fc.integer({ min: -2, max: 70 }), fc.constantFrom(4096, 8192, MiB, 2 * MiB, 2 ** 40));
const bigish = fc.oneof(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.constantFrom(0n, 4096n, BigInt(2 * MiB), 1n << 63n, (1n << 64n) - 4096n));
const anyArg = fc.oneof({ weight: 3, arbitrary: hostile }, { weight: 2, arbitrary: small }, { weight: 1, arbitrary: bigish }, { weight: 1, arbitrary: fc.anything() });

const handles = () => [kvm.fd, vm.fd, gmem.fd];
// Handles of the victims and recycled ones, looked up when a batch's arguments are drawn.
const lateHandle = fc.nat(63).map((i) => {
  const pool = [V().vmFd, V().gmemFd, V().vcpuFd, V().memfd, ...recycled.slice(-8)];
  return pool[i % pool.length];
});
const handleArg = fc.oneof({ weight: 2, arbitrary: fc.constantFrom(...handles(), -1, 99999, 0, 1, 2) }, { weight: 1, arbitrary: lateHandle }, { weight: 1, arbitrary: anyArg });
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

// Typed calls: a method of a live or closed object, or one applied to a wrong `this`. The
// victims' methods (close included) are looked up on the victim of the moment.
renewVictims();
const targets = [
  ...[kvm, vm, gmem, map, closedGmem, closedMap, vm.memslots, vm.attributes, vm.memory].map((obj) => [() => obj, obj, false]),
  ...['vm', 'gmem', 'map', 'shared', 'slot', 'vcpu'].map((k) => [() => V()[k], V()[k], true]),
  [() => V().vm.memslots, V().vm.memslots, true],
  [() => V().vm.memory, V().vm.memory, true],
];
const typedCalls = [];
for (const [get, obj, victim] of targets) {
  let proto = Object.getPrototypeOf(obj);
  const names = new Set(Object.keys(obj).filter((k) => typeof obj[k] === 'function'));
  const skip = ['emit', 'on', 'once', 'addListener', 'removeAllListeners', 'setMaxListeners', 'run', ...(victim ? [] : ['close'])];
  while (proto && proto !== Object.prototype) {
    for (const k of Object.getOwnPropertyNames(proto)) {
      const d = Object.getOwnPropertyDescriptor(proto, k);
      if (k !== 'constructor' && typeof d.value === 'function' && !skip.includes(k)) names.add(k);
    }
    proto = Object.getPrototypeOf(proto);
  }
  for (const k of names) typedCalls.push([get, k, obj.constructor?.name ?? 'memory']);
}
const thisArg = fc.oneof({ weight: 4, arbitrary: fc.constant('own') }, { weight: 1, arbitrary: fc.constantFrom({}, null, undefined, kvm, vm, gmem, map, 5, ...forged) });
const typedOptions = fc.record({
  guestPhysAddr: fc.oneof(small, bigish), size: fc.oneof(small, bigish),
  guestMemfd: fc.constantFrom(gmem, closedGmem, undefined, {}, ...forged.slice(0, 3)), userspace: fc.constantFrom(map, closedMap, undefined, {}, forged[0], forged[6]),
  slot: fc.oneof(small, hostile),
}, { requiredKeys: [] });
const typedArb = fc.tuple(fc.nat(typedCalls.length - 1), thisArg, fc.array(fc.oneof(anyArg, typedOptions, fc.constantFrom(...effectfulArgs)), { maxLength: 4 }));

const show = (v) => {
  if (labels.has(v)) return labels.get(v);
  if (forged.includes(v)) return `forged ${Object.getPrototypeOf(v)?.constructor?.name ?? 'Proxy'}`;
  try {
    if (typeof v === 'bigint') return `${v}n`;
    if (typeof v === 'symbol' || typeof v === 'function') return String(v).slice(0, 40);
    if (v instanceof ArrayBuffer) return `ArrayBuffer(${v.byteLength})`;
    return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? `${x}n` : x))?.slice(0, 200) ?? String(v);
  } catch {
    return Object.prototype.toString.call(v);
  }
};

// (userThrown: the error a hostile argument's own getter threw, passed through untouched;
// listenerThrown: errors of the victims' listeners, rethrown asynchronously by their VM;
// transferRefused: DataCloneError from a transfer of a mapping's buffer)
const counts = { calls: 0, ok: 0, kvmError: 0, typeError: 0, rangeError: 0, userThrown: 0, listenerThrown: 0, transferRefused: 0, other: 0 };
const others = new Map();
process.on('uncaughtException', (e) => {
  if (e?.message === 'listener' || e instanceof KvmError || e instanceof TypeError || e instanceof RangeError) counts.listenerThrown++;
  else others.set(`uncaught ${e?.constructor?.name}: ${String(e?.message).slice(0, 80)}`, 'a listener');
});

// Calls that make the victims emit (their listeners then throw or call back in).
let pokeRenewals = 0; // (at most two a batch: a VM is dear on a kernel under TCG)
function pokeOp(i) {
  if ((V().vm.closed || V().gmem.closed) && pokeRenewals++ < 2) renewVictims();
  const v = V();
  const pokes = [
    () => v.gmem.punchHole(0, 4096), () => v.vm.setPrivate(0, 8192), () => v.vm.setShared(0, 8192),
    () => v.vm.convert({ gpa: 4096, size: 4096, toPrivate: i % 2 === 0 }), () => v.gmem.punchHole(4096, 8192),
  ];
  pokes[i % pokes.length]();
  return 'ok';
}

// A mapping's buffer transferred away (structuredClone or postMessage): refused, or copied;
// the mapping must keep working either way.
const channel = new MessageChannel();
function transferOp(i) {
  const sources = [() => map.view(0, 16), () => V().shared.view(0, 16), () => V().map.bytes, () => raw.mmap(-1, 4096, 0, 3, 0x21)];
  const source = sources[i % sources.length];
  let view;
  try {
    view = source();
  } catch (e) {
    if (!(e instanceof KvmError)) throw e;
    return 'kvmError'; // (a victim already closed)
  }
  try {
    const buffer = view instanceof Uint8Array ? view.buffer : view.view(0, 16).buffer;
    if (i % 5 === 0) channel.port1.postMessage(null, [buffer]);
    else structuredClone(buffer, { transfer: [buffer] });
  } catch (e) {
    if (e?.name !== 'DataCloneError') throw e;
    return 'transferRefused';
  } finally {
    if (!(view instanceof Uint8Array)) raw.munmap(view);
  }
  if (view instanceof Uint8Array && view.byteLength === 0) throw new Error('a mapping buffer was transferred away (detached)');
  return 'ok';
}
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
    if (pick >= 98) {
      // (one call in fifty: an event on the victims, or a transfer)
      const [what, op] = pick === 98 ? ['poke', pokeOp] : ['transfer', transferOp];
      ftruncateSync(lastFd, writeSync(lastFd, `${start + i} ${what} #${which}\n`, 0));
      counts.calls++;
      try {
        counts[op(which)]++;
      } catch (e) {
        if (e instanceof KvmError) counts.kvmError++;
        else if (e instanceof TypeError) counts.typeError++;
        else if (e instanceof RangeError) counts.rangeError++;
        else {
          counts.other++;
          others.set(`${e?.constructor?.name}: ${String(e?.message).slice(0, 80)}`, `${what} #${which}`);
        }
      }
      continue;
    }
    if (pick < 55) {
      const name = rawNames[which];
      args = rawArgs.get(name)[i];
      fn = raw[name];
      self = raw;
      desc = `raw.${name}(${args.map(show).join(', ')})`;
    } else {
      const [t, thisPick, a] = typedArgs[i];
      const [get, name, cls] = typedCalls[t];
      const obj = get();
      fn = obj[name];
      self = thisPick === 'own' ? obj : thisPick;
      args = a;
      desc = `${cls}.${name}.call(${thisPick === 'own' ? 'own' : show(thisPick)}, ${args.map(show).join(', ')})`;
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
  recycled.splice(0, recycled.length - 8);
  // New victims (closing the old ones: every step runs even where an fd was closed behind
  // their back), and a turn of the event loop for the listeners' rethrown errors.
  ftruncateSync(lastFd, writeSync(lastFd, `${start + n} renewing the victims\n`, 0));
  pokeRenewals = 0;
  try {
    renewVictims();
  } catch (e) {
    counts.other++;
    others.set(`renewVictims: ${e?.constructor?.name}: ${String(e?.message).slice(0, 80)}`, 'between batches');
  }
  await new Promise((resolve) => setImmediate(resolve));
}
tolerate(() => victims.vm.close());
victimKvm.close();
channel.port1.close();
await new Promise((resolve) => setImmediate(resolve));
ftruncateSync(lastFd, writeSync(lastFd, 'done\n', 0));
closeSync(lastFd);
console.log(JSON.stringify({ ...counts, listenerCalls, effectsRun, gmemSlots: sharedGmem, others: [...others].map(([k, d]) => `${k}  <- ${d}`) }));
