/**
 * The contents of the simulator's files (guest_memfds, memfds) and its host mappings of them.
 * Two stores, one interface:
 *
 * - MemfdStore (Linux, with the native addon): each file's bytes live in an OS memfd of the
 *   file's size, and a host mapping is a real MAP_SHARED mmap of it. Mappings of one range
 *   alias for free, a punch-hole is FALLOC_FL_PUNCH_HOLE on the memfd (the pages are freed and
 *   read as zeros in every mapping), and everything costs what was written: mapping, unmapping
 *   and punching touch no page.
 *
 * - BufferStore (anywhere: no addon needed): a mapping's bytes must be one ArrayBuffer that
 *   other mappings of the same range share, so mapped data lives in windows, one ArrayBuffer per
 *   run of overlapping mappings. A window outlives its last mapping as the stored contents of
 *   its range. Limits: a new mapping that extends past the windows it overlaps copies them into
 *   a larger one, and a punch-hole fills zeros into the windows it overlaps; both touch (and,
 *   on a kernel without a shared zero page, commit) the bytes involved.
 *
 * Either way the library never hands out a view that would fault: a view covers only the part
 * of a mapping inside the file, and nothing of a file whose pages the host may not touch.
 */
import { markAsUntransferable } from 'node:worker_threads';
import { kvmError } from '../../base/errors.js';
import type { RawMapping } from '../types.js';

const PAGE = 4096;

/** A simulated host mapping. */
export interface SimMapping extends RawMapping {
  readonly unmapped: boolean;
  /** File offset of the first byte. */
  readonly offset: number;
  /** Bytes of the mapping that views may cover (inside the file, and host-accessible). */
  readonly viewLength: number;
}

/** The bytes of one simulated file. */
export interface FileStore {
  readonly size: number;
  /** Maps [offset, offset + length) shared at an address the store picks; `accessible`: whether
   * views may cover it (a gmem without INIT_SHARED: no); `rw`: whether it is mapped readable
   * and writable (views are writable: none over anything else, EACCES, as the addon). */
  map(offset: number, length: bigint, accessible: boolean, rw?: boolean): SimMapping;
  unmap(m: SimMapping): void;
  /** Punch-hole: [offset, offset + length) ∩ file reads as zeros, in every mapping. */
  zero(offset: number, length: number): void;
  /** The file's new size (ftruncate, fallocate past the end): bytes past it are dropped. */
  resize(size: number): void;
  /** The file is gone (its last reference dropped): free its storage. */
  release(): void;
}

/** The part of the native addon the memfd store uses. */
export interface MemfdOps {
  memfdCreate(name: string): number;
  ftruncate(fd: number, length: bigint | number): void;
  fallocate(fd: number, mode: number, offset: bigint | number, length: bigint | number): void;
  close(fd: number): void;
  /** mmap of `fd` (or anonymous memory with fd -1), shared, read-write. */
  mmap(fd: number, length: bigint | number, offset: bigint | number, prot: number, flags: number): RawMapping;
  munmap(m: RawMapping): void;
}

const FALLOC_PUNCH = 0x01 | 0x02; // KEEP_SIZE | PUNCH_HOLE
const PROT_RW = 0x1 | 0x2;
const MAP_SHARED = 0x01;

function unmappedError(): Error {
  return kvmError('EBADF', { syscall: 'munmap' }, 'this mapping is unmapped');
}

/** The checks every view makes (the addon's, for the same calls). */
function checkView(m: SimMapping & { rw: boolean }, offset: number, length: number): void {
  if (m.unmapped) throw unmappedError();
  if (!m.rw) throw kvmError('EACCES', { syscall: 'mmap' }, 'the mapping is not readable and writable: no buffer over it');
  if (offset + length > m.viewLength) throw new RangeError(`view [${offset}, ${offset + length}) is outside the mapping's accessible ${m.viewLength} bytes`);
}

/** A view the caller cannot transfer away (which would detach it under its mapping). */
function untransferable(u: Uint8Array): Uint8Array {
  markAsUntransferable(u.buffer);
  return u;
}

// ---- MemfdStore ---------------------------------------------------------------------------

class MemfdMapping implements SimMapping {
  unmapped = false;
  constructor(
    readonly native: RawMapping,
    readonly offset: number,
    readonly viewLength: number,
    readonly length: bigint,
    readonly rw: boolean,
  ) {}
  get address(): bigint {
    return this.native.address;
  }
  view(offset: number, length: number): Uint8Array {
    checkView(this, offset, length);
    return untransferable(this.native.view(offset, length));
  }
}

export class MemfdStore implements FileStore {
  #fd: number | undefined;
  constructor(
    public size: number,
    readonly ops: MemfdOps,
    readonly name: string,
  ) {}

  /** The memfd, made on first use (a file never mapped needs none). */
  #memfd(): number {
    if (this.#fd === undefined) {
      const fd = this.ops.memfdCreate(this.name);
      try {
        this.ops.ftruncate(fd, this.size);
      } catch (e) {
        this.ops.close(fd);
        throw e;
      }
      this.#fd = fd;
    }
    return this.#fd;
  }

  map(offset: number, length: bigint, accessible: boolean, rw = true): SimMapping {
    const native = this.ops.mmap(this.#memfd(), length, offset, PROT_RW, MAP_SHARED);
    const viewLength = accessible ? Math.max(0, Math.min(offset + Number(length), this.size) - offset) : 0;
    return new MemfdMapping(native, offset, viewLength, length, rw);
  }

  unmap(m: SimMapping): void {
    const mm = m as MemfdMapping;
    if (mm.unmapped) return;
    this.ops.munmap(mm.native);
    mm.unmapped = true;
  }

  zero(offset: number, length: number): void {
    const end = Math.min(offset + length, this.size);
    if (this.#fd === undefined || end <= offset) return;
    this.ops.fallocate(this.#fd, FALLOC_PUNCH, offset, end - offset);
  }

  resize(size: number): void {
    if (this.#fd !== undefined) this.ops.ftruncate(this.#fd, size);
    this.size = size;
  }

  release(): void {
    if (this.#fd !== undefined) this.ops.close(this.#fd);
    this.#fd = undefined;
  }
}

// ---- BufferStore --------------------------------------------------------------------------

interface Window {
  start: number;
  end: number;
  buffer: ArrayBuffer;
  maps: Set<BufferMapping>;
}

class BufferMapping implements SimMapping {
  unmapped = false;
  constructor(
    readonly address: bigint,
    readonly offset: number,
    readonly viewLength: number,
    readonly length: bigint,
    public window: Window | undefined,
    readonly rw: boolean,
  ) {}
  view(offset: number, length: number): Uint8Array {
    checkView(this, offset, length);
    if (length === 0) return new Uint8Array(0);
    const w = this.window!;
    if (restore(w)) {
      throw kvmError('EFAULT', { syscall: 'mmap' }, "this mapping's memory was transferred away (structuredClone or postMessage with transfer: its bytes went with it); the range reads as zeros from now on");
    }
    // (Not marked untransferable: this store detaches views by transferring the buffer itself.)
    return new Uint8Array(w.buffer, this.offset - w.start + offset, length);
  }
}

const CHUNK = 1 << 30; // typed arrays are limited to 4 GiB: big windows are handled in pieces

/** Calls fn(start, length) for [start, end) in pieces of at most 1 GiB. */
function chunks(start: number, end: number, fn: (at: number, n: number) => void): void {
  for (let at = start; at < end; at += CHUNK) fn(at, Math.min(CHUNK, end - at));
}

/**
 * A window whose buffer a caller transferred away gets a zeroed one (the bytes went with the
 * transfer). Whether it had to.
 */
function restore(w: Window): boolean {
  if (w.buffer.byteLength === w.end - w.start) return false;
  w.buffer = new ArrayBuffer(w.end - w.start);
  return true;
}

/** Detaches `b` (every view over it) and returns its contents in a new buffer, zero-copy. */
function move(b: ArrayBuffer): ArrayBuffer {
  return structuredClone(b, { transfer: [b] });
}

/** Simulated addresses: handed out upward from 16 TiB, never reused while the store lives. */
export class AddressSpace {
  #next: bigint;
  constructor(
    readonly base: bigint,
    readonly limit: bigint,
  ) {
    this.#next = base;
  }
  /** An address for `span` bytes, or undefined when the space is used up. */
  take(span: bigint): bigint | undefined {
    const a = this.#next;
    if (a + span > this.limit) return undefined;
    this.#next += span + BigInt(PAGE); // a guard page between mappings
    return a;
  }
}

export class BufferStore implements FileStore {
  #windows: Window[] = [];

  constructor(
    public size: number,
    readonly addresses: AddressSpace,
  ) {}

  #overlapping(start: number, end: number): Window[] {
    return this.#windows.filter((w) => w.start < end && start < w.end);
  }

  map(offset: number, length: bigint, accessible: boolean, rw = true): SimMapping {
    const span = ((length + BigInt(PAGE) - 1n) / BigInt(PAGE)) * BigInt(PAGE);
    const address = () => {
      const a = this.addresses.take(span);
      if (a === undefined) throw kvmError('ENOMEM', { syscall: 'mmap' }, 'the simulated address space is used up');
      return a;
    };
    const viewEnd = Math.min(offset + Number(length), this.size);
    if (!accessible || viewEnd <= offset) return new BufferMapping(address(), offset, 0, length, undefined, rw);
    const end = Math.min(Math.ceil(viewEnd / PAGE) * PAGE, this.size); // windows hold whole pages
    const old = this.#overlapping(offset, end);
    if (old.length === 1 && old[0]!.start <= offset && end <= old[0]!.end) {
      const m = new BufferMapping(address(), offset, viewEnd - offset, length, old[0], rw); // inside one window: shared, nothing copied
      old[0]!.maps.add(m);
      return m;
    }
    const start = Math.min(offset, ...old.map((w) => w.start));
    const stop = Math.max(end, ...old.map((w) => w.end));
    let buffer: ArrayBuffer;
    try {
      buffer = new ArrayBuffer(stop - start);
    } catch {
      throw kvmError('ENOMEM', { syscall: 'mmap' }, `the simulator cannot hold ${stop - start} bytes in one buffer (without the native addon, a mapping is an ArrayBuffer)`);
    }
    const at = address(); // (taken only once the mapping can be made: a refused one uses none)
    for (const w of old) restore(w);
    for (const w of old) chunks(0, w.end - w.start, (p, n) => new Uint8Array(buffer, w.start - start + p, n).set(new Uint8Array(w.buffer, p, n)));
    const win: Window = { start, end: stop, buffer, maps: new Set() };
    for (const w of old) {
      move(w.buffer); // detach: views of the merged windows must be re-taken
      for (const m of w.maps) {
        m.window = win;
        win.maps.add(m);
      }
    }
    this.#windows = this.#windows.filter((w) => !old.includes(w)).concat(win).sort((a, b) => a.start - b.start);
    const m = new BufferMapping(at, offset, viewEnd - offset, length, win, rw);
    win.maps.add(m);
    return m;
  }

  unmap(m: SimMapping): void {
    const bm = m as BufferMapping;
    if (bm.unmapped) return;
    bm.unmapped = true;
    const w = bm.window;
    bm.window = undefined;
    if (!w) return;
    w.maps.delete(bm);
    // Detach this mapping's views (zero-copy); the window keeps the contents, for the other
    // mappings (which take their views again) or as the stored bytes of its range.
    restore(w);
    w.buffer = move(w.buffer);
  }

  zero(offset: number, length: number): void {
    const end = Math.min(offset + length, this.size);
    if (end <= offset) return;
    for (const w of this.#overlapping(offset, end)) {
      if (w.maps.size === 0 && offset <= w.start && w.end <= end) {
        this.#windows = this.#windows.filter((x) => x !== w); // stored bytes punched whole: dropped
        continue;
      }
      restore(w);
      chunks(Math.max(offset, w.start) - w.start, Math.min(end, w.end) - w.start, (at, n) => new Uint8Array(w.buffer, at, n).fill(0));
    }
  }

  resize(size: number): void {
    if (size < this.size) this.zero(size, this.size - size); // (a mapped store only grows: the backend refuses the rest)
    this.size = size;
  }

  release(): void {
    this.#windows = [];
  }
}
