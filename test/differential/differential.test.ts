/**
 * Differential test: the kernel (raw native backend) against the simulator built from this
 * host's capabilities, on seeded random operation sequences; every result is compared, and
 * the bytes of every live mapping after each op that can change memory.
 *
 * Replay one seed (prints every op of the run with both answers, and a minimal sequence for
 * each divergence):
 *   KVM_GMEM_DIFF_SEEDS=<seed> KVM_GMEM_DIFF_OPS=<n> npx vitest run --project kvm test/differential
 * KVM_GMEM_DIFF_SEEDS takes a comma list; an entry may be a range (100-199).
 */
import { expect, test } from 'vitest';
import { constants } from '../../lib/index.js';
import { openKvm } from '../../lib/kvm.js';
import { nativeBackend } from '../../lib/raw/native.js';
import { SimBackend } from '../../lib/raw/sim/index.js';
import { fdCount, kvmUnavailable, mapCount } from '../helpers.js';
import { formatDivergence, formatRecord, minimize, runSequence, type Divergence, type SequenceResult } from './engine.js';

function parseSeeds(spec: string | undefined): number[] {
  if (!spec) return Array.from({ length: 20 }, (_, i) => i + 1);
  return spec.split(',').flatMap((part) => {
    const m = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(part);
    if (!m) throw new Error(`KVM_GMEM_DIFF_SEEDS: cannot read '${part}'`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    return Array.from({ length: hi - lo + 1 }, (_, i) => lo + i);
  });
}

const decodeMask = (mask: number) => Array.from({ length: 32 }, (_, t) => t).filter((t) => mask & (1 << t));

const seeds = parseSeeds(process.env.KVM_GMEM_DIFF_SEEDS);
const nOps = Number(process.env.KVM_GMEM_DIFF_OPS ?? 500);
/** Time for shrinking each class of divergence to a minimal sequence. */
const MINIMIZE_MS = 10_000;

test.skipIf(kvmUnavailable)(
  `kernel and simulator agree on ${seeds.length} seeds x ${nOps} random ops${kvmUnavailable ? ` (skipped: ${kvmUnavailable})` : ''}`,
  { timeout: 600_000 },
  () => {
    const kvm = openKvm({ backend: 'kvm' });
    const profile = kvm.profile();
    kvm.close();
    const caps = profile.caps.system;
    const host = { vmTypes: decodeMask(caps[constants.Cap.VM_TYPES] || 1), guestPhysAddrBits: profile.guestPhysAddrBits };
    const native = nativeBackend();
    const sim = () => new SimBackend(profile);

    const fds = fdCount();
    const maps = mapCount();
    const started = performance.now();
    const results: SequenceResult[] = seeds.map((seed) => runSequence(seed, nOps, native, sim, { host }));
    const ms = performance.now() - started;

    const total = results.reduce((s, r) => s + r.executed, 0);
    const all = results.flatMap((r) => r.divergences);
    const count = (p: (a: string) => boolean) => results.reduce((s, r) => s + r.records.filter((x) => p(x.a)).length, 0);
    const skipped = count((a) => a.startsWith('skip'));
    const refused = count((a) => a.startsWith('err') || a === 'type' || a === 'range');
    console.log(
      `differential: ${total} ops over ${seeds.length} seeds (${nOps} each, seeds ${seeds.join(',')}) in ${(ms / 1000).toFixed(1)} s: ` +
        `${total - refused - skipped} succeeded, ${refused} refused, ${skipped} skipped; ` +
        `divergences: ${all.length}${results.some((r) => r.stopped) ? ` (${results.filter((r) => r.stopped).length} seeds stopped early)` : ''}`,
    );

    // One report per class of divergence: the occurrence with the shortest prefix, shrunk.
    const classes = new Map<string, Divergence[]>();
    for (const d of all) classes.set(d.cls, [...(classes.get(d.cls) ?? []), d]);
    for (const [cls, ds] of classes) {
      const rep = ds.reduce((x, y) => (y.prefix.length < x.prefix.length ? y : x));
      minimize(rep, native, sim, MINIMIZE_MS);
      console.log(`\n== ${cls} (${ds.length}x, seeds ${[...new Set(ds.map((d) => d.seed))].join(',')})\n${formatDivergence(rep).join('\n')}`);
    }
    if (seeds.length === 1) {
      const r = results[0]!;
      console.log(`\nseed ${r.seed}: every op with both answers${r.stopped ? ' (up to the divergence that stopped the run)' : ''}:\n${r.records.map(formatRecord).join('\n')}`);
    }

    const cleanupErrors = results.flatMap((r) => r.cleanupErrors.map((e) => `seed ${r.seed}: ${e}`));
    expect(cleanupErrors).toEqual([]);
    expect(fdCount(), 'fds left open').toBe(fds);
    expect(mapCount(), 'gmem mappings left').toBe(maps);
    expect([...classes.keys()]).toEqual([]);
    expect(total).toBe(seeds.length * nOps);
  },
);
