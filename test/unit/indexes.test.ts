/** RangeMap against a naive per-key model, and its merging guarantees. */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { RangeMap } from '../../lib/base/rangemap.js';
import { IntervalIndex } from '../../lib/base/interval.js';
import { BTree } from '../../lib/base/btree.js';

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
        for (let i = 0; i < ivs.length; i += 2) expect(idx.remove(ivs[i]![0], i)).toBeGreaterThanOrEqual(0);
        if (ivs.length > 1) {
          expect(idx.remove(ivs[1]![0], 0)).toBe(-1); // another item starts there: it stays
          expect(idx.containing(ivs[1]![0])).toBe(1);
          expect(idx.firstOverlap(ivs[1]![0], ivs[1]![1])).toBe(1);
        }
        expect(idx.count).toBe(ivs.length - Math.ceil(ivs.length / 2));
      }),
      { numRuns: 200 },
    );
  });
});

describe('IntervalIndex point lookups across its region levels', () => {
  test('containing agrees with a linear scan around 2 MiB, 1 GiB and 512 GiB region edges, through inserts and removes in any order', () => {
    const G = 2 ** 18; // pages in 1 GiB
    const T = 2 ** 27; // pages in 512 GiB
    // Also around 2^31 (where the index stops shifting and divides) and the top of the gfn space.
    const far = (at: number) => fc.integer({ min: at - 2 * T - 700, max: at + 700 });
    const edge = fc.oneof(fc.nat(3000), fc.integer({ min: G - 600, max: G + 600 }), fc.integer({ min: 3 * G - 10, max: 3 * G + 10 }), fc.integer({ min: T - 700, max: T + 700 }),
      far(2 ** 31), fc.integer({ min: 2 ** 31 - 1100, max: 2 ** 31 + 10 }), far(2 ** 52 - 2 * T - 2000));
    const len = fc.oneof(fc.integer({ min: 1, max: 1100 }), fc.integer({ min: G - 2, max: 2 * G + 2 }), fc.integer({ min: T - 2, max: T + 600 }));
    fc.assert(
      fc.property(fc.array(fc.tuple(edge, len), { maxLength: 14 }), fc.array(fc.nat(13), { maxLength: 10 }), (raw, removals) => {
        const idx = new IntervalIndex<number>();
        const ivs: [number, number][] = [];
        for (const [s, l] of raw) {
          if (ivs.some(([a, b]) => s < b && a < s + l)) continue;
          ivs.push([s, s + l]);
          idx.insert(s, s + l, ivs.length - 1);
        }
        const probes = ivs.flatMap(([a, b]) => [a - 1, a, a + 1, b - 1, b, Math.floor((a + b) / 2), a + 511, a + 512]).filter((g) => g >= 0);
        const alive = new Set(ivs.map((_, i) => i));
        const check = () => {
          for (const g of probes) {
            const i = ivs.findIndex(([a, b], k) => alive.has(k) && a <= g && g < b);
            expect(idx.containing(g), `containing(${g})`).toBe(i < 0 ? undefined : i);
          }
        };
        check();
        for (const r of removals) {
          if (!alive.has(r)) continue;
          expect(idx.remove(ivs[r]![0], r)).toBeGreaterThanOrEqual(0);
          alive.delete(r);
          check();
        }
        expect(idx.count).toBe(alive.size);
      }),
      { numRuns: 150 },
    );
  });
});

describe('BTree', () => {
  test('get, floor, ceil, entries and size equal a sorted model after inserts and deletes in any order', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.boolean(), fc.nat(400)), { maxLength: 600 }), fc.array(fc.nat(420), { maxLength: 20 }), (ops, queries) => {
        const t = new BTree<number>();
        const m = new Map<number, number>();
        for (const [add, k] of ops) {
          if (add) {
            t.set(k, k * 3);
            m.set(k, k * 3);
          } else {
            expect(t.delete(k)).toBe(m.get(k)); // the value it held, or undefined
            m.delete(k);
          }
        }
        const keys = [...m.keys()].sort((a, b) => a - b);
        expect([...t.entries()].map(([k]) => k)).toEqual(keys);
        expect(t.size).toBe(m.size);
        for (const q of queries) {
          expect(t.get(q)).toBe(m.get(q));
          expect(t.floor(q)?.[0]).toBe(keys.filter((k) => k <= q).pop());
          expect(t.ceil(q)?.[0]).toBe(keys.find((k) => k >= q));
          // The cursor walks on from a seek through every later key, across leaves.
          const from = keys.findIndex((k) => k >= q);
          const walked: number[] = [];
          for (let ok = t.seekCeil(q); ok; ok = t.advance()) walked.push(t.cursorKey);
          expect(walked).toEqual(from < 0 ? [] : keys.slice(from));
          const below = keys.filter((k) => k <= q);
          expect(t.seekFloor(q)).toBe(below.length > 0);
          if (below.length) expect([t.cursorKey, t.cursorValue]).toEqual([below.at(-1), below.at(-1)! * 3]);
        }
      }),
      { numRuns: 200 },
    );
  });
});
