/**
 * The memslot rules do their arithmetic on doubles once the values are page-aligned (a BigInt
 * result is an allocation on every memslot call). Near 2^53 and 2^64 a double is not exact:
 * each rule that reads a u64 is checked here against the rule as BigInt arithmetic states it,
 * on values either side of those edges.
 */
import { describe, expect, test } from 'vitest';
import { checkMemslot, isViolation, type MemslotContext, type RegionInput, type SlotView } from '../../lib/rules/memslot.js';
import { MemFlag } from '../../lib/base/uapi.js';

const PAGE = 4096n;
const U64_MAX = (1n << 64n) - 1n;
const USER_MAX = 0x7ffffffff000n;
const GMEM_SIZE = 1n << 62n;

const edges = [0n, 1n << 52n, 1n << 53n, 1n << 60n, 1n << 63n, 1n << 64n].flatMap((e) =>
  [-PAGE - 1n, -PAGE, -PAGE + 1n, -1n, 0n, 1n, PAGE - 1n, PAGE, PAGE + 1n].map((d) => e + d)).filter((x) => x >= 0n && x <= U64_MAX);

function context(): MemslotContext {
  return {
    pageSize: PAGE, readonlyMem: true, guestMemfd: true, addressSpaces: 1, userAddressMax: USER_MAX, maxGfn: (1n << 52n) - 1n,
    gmemBoundCode: 'EINVAL',
    slot: () => undefined,
    overlapping: () => undefined,
    gmem: () => ({ kind: 'ok', size: GMEM_SIZE, boundSlot: (): SlotView | undefined => undefined }),
  };
}

function rule(fields: Partial<RegionInput>): string | undefined {
  const r: RegionInput = { v2: true, slot: 0, flags: 0, guestPhysAddr: 0n, memorySize: PAGE, userspaceAddr: 0n, guestMemfdOffset: 0n, guestMemfd: 3, ...fields };
  const v = checkMemslot(r, context());
  return isViolation(v) ? v.rule : undefined;
}

describe('memslot rules at the edges of a double', () => {
  test.each(edges)('memorySize %s', (x) => {
    const want = x % PAGE !== 0n ? 'memslot.size-align'
      : x > USER_MAX ? 'memslot.userspace-addr' // (userspace_addr 0 + size past the user range)
        : x / PAGE > (1n << 31n) - 1n ? 'memslot.npages'
          : x === 0n ? 'memslot.delete-missing' : undefined;
    expect(rule({ memorySize: x })).toBe(want);
  });

  test.each(edges)('guestPhysAddr %s', (x) => {
    const want = x % PAGE !== 0n ? 'memslot.gpa-align'
      : x + PAGE > U64_MAX ? 'memslot.gpa-wrap'
        : x / PAGE + 1n - 1n > (1n << 52n) - 1n ? 'memslot.max-gfn' : undefined;
    expect(rule({ guestPhysAddr: x })).toBe(want);
  });

  test.each(edges)('userspaceAddr %s', (x) => {
    const want = x % PAGE !== 0n || x + PAGE > U64_MAX || x + PAGE > USER_MAX ? 'memslot.userspace-addr' : undefined;
    expect(rule({ userspaceAddr: x })).toBe(want);
  });

  test.each(edges)('guestMemfdOffset %s of a guest_memfd slot', (x) => {
    const want = x % PAGE !== 0n || x + PAGE > U64_MAX ? 'memslot.gmem-offset'
      : x >= 1n << 63n || x + PAGE > GMEM_SIZE ? 'memslot.gmem-bounds' : undefined;
    expect(rule({ flags: MemFlag.GUEST_MEMFD, guestMemfdOffset: x })).toBe(want);
  });

  test('a decision counts frames and pages as numbers, exact for the highest frame', () => {
    const gpa = U64_MAX - PAGE + 1n - (1n << 40n);
    const v = checkMemslot({ v2: true, slot: 5, flags: 0, guestPhysAddr: gpa, memorySize: 1n << 40n, userspaceAddr: 0n, guestMemfdOffset: 0n, guestMemfd: 0 },
      { ...context(), userAddressMax: U64_MAX, maxGfn: U64_MAX });
    expect(v).toEqual({ op: 'create', asId: 0, id: 5, baseGfn: Number(gpa / PAGE), npages: 2 ** 28 });
    expect(BigInt((v as { baseGfn: number }).baseGfn)).toBe(gpa / PAGE);
  });
});
