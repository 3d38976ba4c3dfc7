/** RangeMap against a naive per-key model, and its merging guarantees. */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { RangeMap } from '../../lib/base/rangemap.js';
import { IntervalIndex } from '../../lib/base/interval.js';
import { GfnRadix } from '../../lib/base/gfnradix.js';

describe('RangeMap', () => {
  test('equals a per-key model after any sequence of sets; adjacent equal ranges are merged', () => {
    const N = 64;
    const op = fc.record({ start: fc.integer({ min: 0, max: N }), len: fc.integer({ min: 0, max: 20 }), value: fc.integer({ min: 0, max: 2 }) });
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
        const m = new RangeMap<number>(0);
        const model = new Array<number>(N + 21).fill(0);
        for (const { start, len, value } of ops) {
          const before = [...model];
          const changed = m.set(start, start + len, value);
          for (let k = start; k < start + len; k++) model[k] = value;
          // changed = exactly the keys whose value changed, with their old values
          const expected: number[] = [];
          for (let k = 0; k < model.length; k++) if (before[k] !== model[k]) expected.push(k);
          expect(changed.flatMap((c) => Array.from({ length: c.end - c.start }, (_, i) => c.start + i))).toEqual(expected);
          for (const c of changed) for (let k = c.start; k < c.end; k++) expect(before[k]).toBe(c.value);
        }
        for (let k = 0; k < model.length; k++) expect(m.get(k)).toBe(model[k]);
        const entries = [...m.entries()];
        for (let i = 0; i < entries.length; i++) {
          expect(entries[i]!.value).not.toBe(0);
          if (i > 0) {
            expect(entries[i]!.start).toBeGreaterThanOrEqual(entries[i - 1]!.end);
            if (entries[i]!.start === entries[i - 1]!.end) expect(entries[i]!.value).not.toBe(entries[i - 1]!.value);
          }
        }
      }),
      { numRuns: 300 },
    );
  });

  test('one entry for a huge range; alternating pages then one value collapse to one entry', () => {
    const m = new RangeMap<bigint>(0n);
    m.set(0, 2 ** 28, 8n); // 1 TiB of 4 KiB pages
    expect(m.count).toBe(1);
    const n = 4096;
    for (let i = 0; i < n; i += 2) m.set(i, i + 1, 0n);
    expect(m.count).toBe(n / 2); // pages 1, 3, ..., n-3 alone; n-1 merges with [n, 2^28)
    m.set(0, 2 ** 28, 8n);
    expect(m.count).toBe(1);
    expect([...m.entries()]).toEqual([{ start: 0, end: 2 ** 28, value: 8n }]);
  });
});

describe('IntervalIndex', () => {
  test('containing / overlapping agree with a linear scan', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 0, max: 50 }), { maxLength: 20 }), fc.integer({ min: 0, max: 210 }), fc.integer({ min: 1, max: 30 }), (slots, q, qlen) => {
        const idx = new IntervalIndex<number>();
        const ivs = slots.map((s) => [s * 4, s * 4 + 1 + (s % 3)] as const); // disjoint
        ivs.forEach(([a, b], i) => idx.insert(a, b, i));
        for (let k = 0; k < 210; k++) {
          const want = ivs.findIndex(([a, b]) => a <= k && k < b);
          expect(idx.containing(k)).toBe(want < 0 ? undefined : want);
        }
        const want = ivs.map((iv, i) => [iv, i] as const).filter(([[a, b]]) => a < q + qlen && q < b).sort((x, y) => x[0][0] - y[0][0]).map(([, i]) => i);
        expect([...idx.overlapping(q, q + qlen)]).toEqual(want);
        for (let i = 0; i < ivs.length; i += 2) idx.remove(i);
        expect(idx.count).toBe(ivs.length - Math.ceil(ivs.length / 2));
      }),
      { numRuns: 200 },
    );
  });
});

describe('GfnRadix', () => {
  test('get agrees with a linear scan across leaf and chunk boundaries; remove restores', () => {
    const CH = 2 ** 18;
    // interval starts/lengths chosen around 512-page leaves and 2^18-page chunks
    const edge = fc.oneof(fc.nat(2000), fc.integer({ min: CH - 600, max: CH + 600 }), fc.integer({ min: 3 * CH - 10, max: 3 * CH + 10 }));
    const len = fc.oneof(fc.integer({ min: 1, max: 1100 }), fc.integer({ min: CH - 2, max: 2 * CH + 2 }));
    fc.assert(
      fc.property(fc.array(fc.tuple(edge, len), { maxLength: 12 }), (raw) => {
        const r = new GfnRadix<number>();
        const ivs: [number, number][] = [];
        for (const [s, l] of raw) {
          if (ivs.some(([a, b]) => s < b && a < s + l)) continue;
          ivs.push([s, s + l]);
          r.insert(s, s + l, ivs.length - 1);
        }
        const probes = ivs.flatMap(([a, b]) => [a - 1, a, a + 1, b - 1, b, (a + b) >> 1, a + 511, a + 512]);
        const expectAt = (g: number, alive: Set<number>) => {
          const i = ivs.findIndex(([a, b], k) => alive.has(k) && a <= g && g < b);
          expect(r.get(g)).toBe(i < 0 ? undefined : i);
        };
        const alive = new Set(ivs.map((_, i) => i));
        for (const g of probes) expectAt(g, alive);
        for (let i = 0; i < ivs.length; i += 2) {
          r.remove(i);
          alive.delete(i);
        }
        for (const g of probes) expectAt(g, alive);
      }),
      { numRuns: 150 },
    );
  });
});
