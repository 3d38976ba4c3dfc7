/** The lab's errors: what went wrong, and the fix, as a user would need them. */
export type LabErrorCode =
  | 'LAB_NO_QEMU' // qemu-system-x86_64 is not installed
  | 'LAB_SPEC' // a --kernel SPEC that names no kernel
  | 'LAB_FETCH' // Debian's archive could not be read
  | 'LAB_TOOL' // a host tool the lab needs is missing (apt-get, dpkg-deb, xz)
  | 'LAB_MODULES' // a module the kernel needs is missing
  | 'LAB_BOOT' // the kernel did not reach the command
  | 'LAB_NO_KVM' // the lab kernel has no usable /dev/kvm
  | 'LAB_NO_GMEM' // the lab kernel has no guest_memfd
  | 'LAB_TIMEOUT' // the command did not end in time
  | 'LAB_BUILD'; // building a kernel failed

export class LabError extends Error {
  readonly code: LabErrorCode;
  /** What to do about it. */
  readonly hint: string;
  /** The tail of the serial console, when the kernel was booted. */
  readonly log: string | undefined;
  constructor(code: LabErrorCode, message: string, hint: string, log?: string) {
    super(message);
    this.name = 'LabError';
    this.code = code;
    this.hint = hint;
    this.log = log;
  }
}
