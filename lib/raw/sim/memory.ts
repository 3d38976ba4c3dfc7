/**
 * The contents of one simulated guest_memfd: sparse, so memory grows with the pages touched,
 * not with the file size.
 *
 * Unmapped data lives in a map of 4 KiB pages (absent = zero). A host mapping needs one
 * contiguous, detachable ArrayBuffer, and two mappings of the same range must alias (each
 * sees the other's writes, a punch-hole zeroes both), so mapped data lives in *windows*: one
 * ArrayBuffer per run of overlapping mappings, shared by them. A new mapping that overlaps
 * windows merges them into one; unmapping detaches the window's buffer (moved, not copied,
 * to a fresh one for the mappings that remain), so no view outlives its mapping. ArrayBuffers
 * are zero-filled lazily by the OS, so a large window costs only the pages written.
 */
const PAGE = 4096;

interface Window {
  start: number;
  end: number;
  buffer: ArrayBuffer;
  maps: Set<SimMapping>;
}

/** A host mapping of a file range; buffer/byteOffset move when windows merge or detach. */
export class SimMapping {
  constructor(
    readonly address: bigint,
    /** File offset and length the view covers (clamped to the file). */
    readonly offset: number,
    readonly viewLength: number,
    /** Bytes reserved in the simulated address space (the mmap length). */
    readonly length: bigint,
    public window: Window | undefined,
    readonly memory: FileMemory,
  ) {}
  unmapped = false;
  get buffer(): ArrayBuffer {
    return this.window?.buffer ?? EMPTY;
  }
  get byteOffset(): number {
    return this.window ? this.offset - this.window.start : 0;
  }
  view(offset: number, length: number): Uint8Array {
    return new Uint8Array(this.buffer, this.byteOffset + offset, length);
  }
}

const CHUNK = 1 << 30; // typed arrays are limited to 4 GiB: big windows are handled in pieces

/** Calls fn(start, length) for [start, end) in pieces of at most 1 GiB. */
function chunks(start: number, end: number, fn: (at: number, n: number) => void): void {
  for (let at = start; at < end; at += CHUNK) fn(at, Math.min(CHUNK, end - at));
}

const EMPTY = new ArrayBuffer(0);

/** Detaches `b` (every view over it) and returns its contents in a new buffer, zero-copy. */
function move(b: ArrayBuffer): ArrayBuffer {
  return structuredClone(b, { transfer: [b] });
}

export class FileMemory {
  #pages = new Map<number, Uint8Array>();
  #windows: Window[] = [];

  constructor(readonly size: number) {}

  /** Bytes of page storage held outside windows (for the memory benchmark). */
  get storedPages(): number {
    return this.#pages.size;
  }

  #overlapping(start: number, end: number): Window[] {
    return this.#windows.filter((w) => w.start < end && start < w.end);
  }

  /** Maps [offset, offset + length) ∩ file; accessible=false gives an empty view. */
  map(address: bigint, offset: number, length: bigint, accessible: boolean): SimMapping {
    const viewEnd = Math.min(offset + Number(length), this.size);
    if (!accessible || viewEnd <= offset) return new SimMapping(address, offset, 0, length, undefined, this);
    const end = Math.min(Math.ceil(viewEnd / PAGE) * PAGE, this.size); // windows hold whole pages
    const old = this.#overlapping(offset, end);
    const start = Math.min(offset, ...old.map((w) => w.start));
    const stop = Math.max(end, ...old.map((w) => w.end));
    let buffer: ArrayBuffer;
    try {
      buffer = new ArrayBuffer(stop - start);
    } catch {
      throw new RangeError(`the simulator cannot map ${stop - start} bytes at once`);
    }
    for (const w of old) chunks(0, w.end - w.start, (at, n) => new Uint8Array(buffer, w.start - start + at, n).set(new Uint8Array(w.buffer, at, n)));
    this.#pagesIn(start, stop, (page, data) => {
      new Uint8Array(buffer, page * PAGE - start, PAGE).set(data);
      this.#pages.delete(page);
    });
    const win: Window = { start, end: stop, buffer, maps: new Set() };
    for (const w of old) {
      move(w.buffer); // detach: views of the merged windows must be re-taken
      for (const m of w.maps) {
        m.window = win;
        win.maps.add(m);
      }
    }
    this.#windows = this.#windows.filter((w) => !old.includes(w)).concat(win).sort((a, b) => a.start - b.start);
    const m = new SimMapping(address, offset, viewEnd - offset, length, win, this);
    win.maps.add(m);
    return m;
  }

  unmap(m: SimMapping): void {
    if (m.unmapped) return;
    m.unmapped = true;
    const w = m.window;
    m.window = undefined;
    if (!w) return;
    w.maps.delete(m);
    if (w.maps.size) {
      w.buffer = move(w.buffer); // detach this mapping's views; the others re-take theirs
      return;
    }
    // Last mapping of the window: keep the non-zero pages, drop the buffer.
    const perPage = PAGE / 4;
    chunks(0, w.end - w.start, (base, n) => {
      const words = new Int32Array(w.buffer, base, n / 4);
      for (let p = 0; p < words.length; p += perPage) {
        for (let i = p; i < p + perPage; i++) {
          if (words[i] !== 0) {
            const at = base + p * 4;
            this.#pages.set((w.start + at) / PAGE, new Uint8Array(w.buffer.slice(at, at + PAGE)));
            break;
          }
        }
      }
    });
    move(w.buffer);
    this.#windows = this.#windows.filter((x) => x !== w);
  }

  /** Calls fn for each stored (unmapped) page in [start, end), by iterating the cheaper side. */
  #pagesIn(start: number, end: number, fn: (page: number, data: Uint8Array) => void): void {
    const first = Math.floor(start / PAGE);
    const last = Math.ceil(end / PAGE);
    if (last - first <= this.#pages.size) {
      for (let p = first; p < last; p++) {
        const d = this.#pages.get(p);
        if (d) fn(p, d);
      }
    } else {
      for (const [p, d] of [...this.#pages]) if (p >= first && p < last) fn(p, d);
    }
  }

  /** Walks [offset, offset + length) in pieces that lie in one window or one page. */
  #walk(offset: number, length: number, fn: (at: number, n: number, bytes: Uint8Array | undefined, page: number) => void): void {
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const w = this.#windows.find((x) => x.start <= at && at < x.end);
      if (w) {
        const n = Math.min(end, w.end) - at;
        fn(at, n, new Uint8Array(w.buffer, at - w.start, n), -1);
        at += n;
        continue;
      }
      const page = Math.floor(at / PAGE);
      const nextWin = this.#windows.find((x) => x.start > at)?.start ?? Infinity;
      const n = Math.min(end, (page + 1) * PAGE, nextWin) - at;
      fn(at, n, undefined, page);
      at += n;
    }
  }

  read(offset: number, out: Uint8Array): void {
    this.#walk(offset, out.length, (at, n, bytes, page) => {
      const dst = out.subarray(at - offset, at - offset + n);
      if (bytes) dst.set(bytes);
      else {
        const d = this.#pages.get(page);
        if (d) dst.set(d.subarray(at - page * PAGE, at - page * PAGE + n));
        else dst.fill(0);
      }
    });
  }

  write(offset: number, data: Uint8Array): void {
    this.#walk(offset, data.length, (at, n, bytes, page) => {
      const src = data.subarray(at - offset, at - offset + n);
      if (bytes) bytes.set(src);
      else {
        let d = this.#pages.get(page);
        if (!d) this.#pages.set(page, (d = new Uint8Array(PAGE)));
        d.set(src, at - page * PAGE);
      }
    });
  }

  /** Punch-hole: [offset, offset + length) ∩ file reads as zeros, in every mapping. */
  zero(offset: number, length: number): void {
    const end = Math.min(offset + length, this.size);
    if (end <= offset) return;
    for (const w of this.#overlapping(offset, end)) {
      chunks(Math.max(offset, w.start) - w.start, Math.min(end, w.end) - w.start, (at, n) => new Uint8Array(w.buffer, at, n).fill(0));
    }
    this.#pagesIn(offset, end, (p) => this.#pages.delete(p));
  }
}
