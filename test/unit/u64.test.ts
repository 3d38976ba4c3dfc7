/** The u64 <-> double conversions of the lookup path (lib/base/args.ts), against BigInt's own. */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { bigOf, checkU64, safeNumber } from '../../lib/base/args.js';

const U64_MAX = (1n << 64n) - 1n;

describe('safeNumber and bigOf', () => {
  test('safeNumber is the exact value up to 2^53 - 1, -1 above it, for bigints and numbers', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: U64_MAX }), (v) => safeNumber(v, 'v') === (v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : -1)),
    );
    for (const v of [0n, 4095n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 53n - 1n]) expect(safeNumber(v, 'v')).toBe(Number(v));
    expect(safeNumber(2n ** 53n, 'v')).toBe(-1);
    fc.assert(fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), (n) => safeNumber(n, 'v') === n));
  });

  test('safeNumber refuses what checkU64 refuses, with the same error', () => {
    for (const bad of [-1n, 2n ** 64n, -1, 1.5, 2 ** 53, NaN, '4096', null, undefined, {}]) {
      const want = (() => {
        try {
          checkU64(bad, 'gpa');
        } catch (e) {
          return e as Error;
        }
        throw new Error(`checkU64 accepted ${String(bad)}`);
      })();
      expect(() => safeNumber(bad, 'gpa')).toThrow(want.constructor as ErrorConstructor);
      expect(() => safeNumber(bad, 'gpa')).toThrow(want.message);
    }
  });

  test('bigOf(n) === BigInt(n) for every non-negative safe integer', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), (n) => bigOf(n) === BigInt(n)));
    for (const n of [0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 52 + 3, Number.MAX_SAFE_INTEGER]) expect(bigOf(n)).toBe(BigInt(n));
  });
});
