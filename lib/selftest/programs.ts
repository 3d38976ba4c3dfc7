/**
 * Tiny real-mode guest programs, as commented byte arrays. The vCPU starts with cs.base = 0,
 * so code at guest-physical address X runs at ip = X.
 */

/** Reads the byte at [src] and reports it on port 0x10, then writes `value` to [dst]; hlt. */
export function readThenWrite(src: number, dst: number, value: number): Uint8Array {
  return Uint8Array.of(
    0xa0, src & 0xff, src >> 8, //       mov al, [src]
    0xe6, 0x10, //                       out 0x10, al
    0xc6, 0x06, dst & 0xff, dst >> 8, value, // mov byte [dst], value
    0xf4, //                             hlt
  );
}

/** Reports the bytes at each address on port 0x10 (one out per address); hlt. */
export function readEach(addrs: number[]): Uint8Array {
  const code: number[] = [];
  for (const a of addrs) code.push(0xa0, a & 0xff, a >> 8, 0xe6, 0x10); // mov al, [a]; out 0x10, al
  code.push(0xf4); // hlt
  return Uint8Array.from(code);
}

/** Loads ds = seg, reads [off] and reports it on port 0x10; hlt. (Reaches up to 1 MiB.) */
export function readFar(seg: number, off: number): Uint8Array {
  return Uint8Array.of(
    0xb8, seg & 0xff, seg >> 8, //      mov ax, seg
    0x8e, 0xd8, //                      mov ds, ax
    0xa0, off & 0xff, off >> 8, //      mov al, [off]
    0xe6, 0x10, //                      out 0x10, al
    0xf4, //                            hlt
  );
}

/** jmp $ : loops forever. */
export const spin = Uint8Array.of(0xeb, 0xfe);

/** Writes the `len` bytes at [addr] to port 0x10, one out each (lodsb; out; loop); hlt. */
export function printString(addr: number, len: number): Uint8Array {
  return Uint8Array.of(
    0xbe, addr & 0xff, addr >> 8, //    mov si, addr
    0xb9, len & 0xff, len >> 8, //      mov cx, len
    0xac, //                            lodsb            (al = [ds:si++])
    0xe6, 0x10, //                      out 0x10, al
    0xe2, 0xfb, //                      loop lodsb       (cx--, back 5 bytes while cx != 0)
    0xf4, //                            hlt
  );
}

// ---- pieces for longer programs ------------------------------------------------------------

const le32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];

/** mov al, [addr]; out 0x10, al */
export const reportByte = (addr: number) => [0xa0, addr & 0xff, addr >> 8, 0xe6, 0x10];
/** mov byte [addr], value */
export const storeByte = (addr: number, value: number) => [0xc6, 0x06, addr & 0xff, addr >> 8, value];
/** out 0x10, al (the low byte of eax: a hypercall's return value) */
export const reportAl = [0xe6, 0x10];
/** hlt */
export const halt = [0xf4];

/**
 * A KVM hypercall from real mode: mov eax, nr; mov ebx, a0; mov ecx, a1; mov edx, a2; vmmcall.
 * (Outside long mode KVM reads the 32-bit registers; on Intel, KVM turns vmmcall into vmcall.)
 */
export function hypercall(nr: number, a0: number, a1: number, a2: number): number[] {
  return [0x66, 0xb8, ...le32(nr), 0x66, 0xbb, ...le32(a0), 0x66, 0xb9, ...le32(a1), 0x66, 0xba, ...le32(a2), 0x0f, 0x01, 0xd9];
}

/** KVM_HC_MAP_GPA_RANGE(gpa, pages, private or shared): the guest asks for a conversion. */
export function mapGpaRange(gpa: number, pages: number, toPrivate: boolean): number[] {
  return hypercall(12, gpa, pages, toPrivate ? 0x10 : 0);
}

/** The pieces, one program. */
export const program = (...pieces: number[][]) => Uint8Array.from(pieces.flat());
