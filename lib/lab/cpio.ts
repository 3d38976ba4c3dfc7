/**
 * A writer for the kernel's initramfs format: a cpio archive in the "newc" layout
 * (Documentation/driver-api/early-userspace/buffer-format.rst). Headers are ASCII hex, names
 * and data are padded to 4 bytes, and a "TRAILER!!!" entry ends the archive.
 */

export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Uint8Array | string; mode?: number }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'chardev'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

const hex8 = (n: number) => n.toString(16).padStart(8, '0');
const pad4 = (n: number) => (4 - (n % 4)) % 4;

/** The archive holding `entries` in order (a directory must come before what it holds). */
export function cpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  let offset = 0;
  const push = (b: Buffer) => {
    parts.push(b);
    offset += b.length;
  };
  const record = (path: string, mode: number, data: Buffer, rdev: [number, number] = [0, 0]) => {
    const name = Buffer.from(`${path.replace(/^\/+/, '')}\0`);
    const fields = [ino++, mode, 0, 0, mode & S_IFDIR ? 2 : 1, 0, data.length, 0, 0, rdev[0], rdev[1], name.length, 0];
    push(Buffer.from(`070701${fields.map(hex8).join('')}`, 'latin1'));
    push(name);
    push(Buffer.alloc(pad4(offset)));
    push(data);
    push(Buffer.alloc(pad4(offset)));
  };
  for (const e of entries) {
    switch (e.kind) {
      case 'dir':
        record(e.path, S_IFDIR | (e.mode ?? 0o755), Buffer.alloc(0));
        break;
      case 'file':
        record(e.path, S_IFREG | (e.mode ?? 0o644), typeof e.data === 'string' ? Buffer.from(e.data) : Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength));
        break;
      case 'symlink':
        record(e.path, S_IFLNK | 0o777, Buffer.from(e.target));
        break;
      case 'chardev':
        record(e.path, S_IFCHR | (e.mode ?? 0o600), Buffer.alloc(0), [e.major, e.minor]);
        break;
    }
  }
  ino = 0;
  record('TRAILER!!!', 0, Buffer.alloc(0));
  return Buffer.concat(parts);
}
