/**
 * The simulator against hostile callers (issue 13): its own address space and memory stores,
 * which no kernel has, so these run in the sim project only. The hostile cases every backend
 * shares are in test/api/hostile.test.ts; the native addon's in test/native/hostile.test.ts.
 */
import { describe, expect, test } from 'vitest';
import { constants, openKvm, type Kvm, type Mapping } from '../../lib/index.js';
import { defaultProfile, SimBackend } from '../../lib/raw/sim/index.js';
import type { RawMapping } from '../../lib/raw/types.js';
import { attempt, fdCount, MiB, open, outcome, PAGE } from '../helpers.js';

const { Prot, MapFlag } = constants;
const RW = Prot.READ | Prot.WRITE;

describe('simulator: addresses after refused maps; buffers that cannot be transferred away', () => {
  const stores: [string, () => Kvm][] = [
    ['this project’s simulator', () => open()],
    ['the ArrayBuffer store (no addon)', () => openKvm({ raw: new SimBackend(defaultProfile, { memory: 'buffer' }) })],
  ];

  test.each(stores)('%s: after two refused 60 TiB maps, no two live mappings share an address', (_label, make) => {
    using kvm = make();
    const raw = kvm.raw;
    const vm = kvm.createVm();
    const huge = vm.createGuestMemfd({ size: 60n << 40n, mmap: true, initShared: true });
    const live: { address: bigint; length: bigint; close: () => void }[] = [];
    const tries: string[] = [];
    for (let i = 0; i < 2; i++) {
      const o = attempt(() => huge.map());
      tries.push(outcome(o));
      if (o.ok) live.push(o.value as Mapping);
      const a = attempt(() => raw.mmap(-1, 60n << 40n, 0n, RW, MapFlag.SHARED | MapFlag.ANONYMOUS));
      tries.push(outcome(a));
      if (a.ok) {
        const m = a.value as RawMapping;
        live.push({ address: m.address, length: 60n << 40n, close: () => raw.munmap(m) });
      }
    }
    expect(tries.filter((t) => t !== 'ok').length, `refused: ${tries}`).toBeGreaterThanOrEqual(2);
    for (const t of tries) expect(t).toMatch(/^(ok|KvmError ENOMEM)$/);
    const g = vm.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
    for (let i = 0; i < 4; i++) {
      live.push(g.map({ offset: BigInt(i) * PAGE, length: PAGE }), vm.createSharedMemory({ size: PAGE }));
      const m = raw.mmap(-1, PAGE, 0n, RW, MapFlag.SHARED | MapFlag.ANONYMOUS);
      live.push({ address: m.address, length: PAGE, close: () => raw.munmap(m) });
    }
    const sorted = [...live].sort((x, y) => (x.address < y.address ? -1 : 1));
    for (let i = 1; i < sorted.length; i++) {
      expect(sorted[i]!.address, 'mappings overlap').toBeGreaterThanOrEqual(sorted[i - 1]!.address + sorted[i - 1]!.length);
    }
    for (const m of live) m.close();
    vm.close();
  });

  test.each(stores)('%s: transferring a mapping’s buffer away: refused (or copied), or, where the store allows it, the bytes go with it and the next view says so; later maps and close work', (label, make) => {
    using kvm = make();
    const vm = kvm.createVm();
    const g = vm.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
    const m = g.map({ length: 64n * 1024n });
    const bytes = m.bytes;
    bytes[0] = 1;
    bytes[1] = 2;
    const view = m.view(PAGE, 16);
    const raw = kvm.raw.mmap(-1, PAGE, 0n, RW, MapFlag.SHARED | MapFlag.ANONYMOUS);
    const rawView = raw.view(0, 16);
    let lost = false;
    for (const [what, buf] of [['bytes', bytes.buffer], ['view', view.buffer], ['raw view', rawView.buffer]] as const) {
      const o = attempt(() => structuredClone(buf, { transfer: [buf as ArrayBuffer] }));
      expect(`${what}: ${outcome(o)}`).toMatch(/: (ok|DataCloneError|TypeError)$/);
      const channel = new MessageChannel();
      const p = attempt(() => channel.port1.postMessage(buf, [buf as ArrayBuffer]));
      channel.port1.close();
      channel.port2.close();
      expect(`${what} postMessage: ${outcome(p)}`).toMatch(/: (ok|DataCloneError|TypeError)$/);
      // The native store's buffers are untransferable; the ArrayBuffer store's move with the transfer.
      if (buf.byteLength === 0) lost = true;
    }
    expect(lost, 'only the ArrayBuffer store lets a buffer go').toBe(label.includes('ArrayBuffer store'));
    if (lost) {
      expect(outcome(attempt(() => m.view(0, 2))), 'the view after the bytes left').toBe('KvmError EFAULT');
      expect([...m.view(0, 2)], 'zeros from then on').toEqual([0, 0]);
    } else expect([...m.view(0, 2)]).toEqual([1, 2]);
    m.view(0, 2).set([3, 4]);
    // Later maps (the whole file: the ArrayBuffer store merges windows) and unmaps work.
    const whole = g.map();
    expect([...whole.view(0, 2)]).toEqual([3, 4]);
    const again = g.map({ offset: PAGE, length: PAGE });
    m.close();
    again.close();
    kvm.raw.munmap(raw);
    expect([...whole.view(0, 2)]).toEqual([3, 4]);
    whole.close();
    g.close();
    vm.close();
  });

  test('the ArrayBuffer store: a view taken before a merge or an unmap is detached, never a stale copy', () => {
    using kvm = openKvm({ raw: new SimBackend(defaultProfile, { memory: 'buffer' }) });
    const vm = kvm.createVm();
    const g = vm.createGuestMemfd({ size: MiB, mmap: true, initShared: true });
    const m = g.map({ length: PAGE });
    const old = m.view(0, 16);
    const whole = g.map(); // merges m's window into one over the whole file
    whole.view(0, 1)[0] = 7;
    expect(old.byteLength === 0 || old[0] === 7, 'a view that still reads must read what is there').toBe(true);
    const v = whole.view(0, 16);
    whole.close();
    m.close();
    expect(v.byteLength, 'unmapped: detached').toBe(0);
    vm.close();
  });

  test('a refused anonymous map leaks nothing (the store made for it is released)', () => {
    using kvm = open();
    const before = fdCount();
    for (let i = 0; i < 5; i++) attempt(() => kvm.raw.mmap(-1, 100n << 40n, 0n, RW, MapFlag.SHARED | MapFlag.ANONYMOUS));
    expect(fdCount()).toBe(before);
  });
});
