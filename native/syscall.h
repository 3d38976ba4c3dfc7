// The addon's system calls, made inline in the Node-API callback rather than through libc's
// wrappers. Same contract as libc: -1 with errno set on failure (MAP_FAILED for mmap).
//
// Why: after the kernel returns, every return above the syscall instruction mispredicts
// (the kernel refills the CPU's return stack buffer on exit, a Spectre mitigation). Measured
// on the 6.18 PVM host: each extra frame between a loop and its syscall adds ~9 ns to a
// ~200 ns KVM_CHECK_EXTENSION, and 0.9 ns without the syscall. A JS call already stacks the
// API-call builtin and Node-API's trampoline over the callback; libc's wrapper would be one
// frame more. The wrappers below are always inlined, so the callback itself is the frame
// the kernel returns to.
//
// Used by addon.cc's per-call functions. Not needed where a wrapper frame cannot show: the
// blocking KVM_RUN thread, the register calls (node-addon-api wrappers, several frames
// already), and the cold paths (open, fstat, fcntl, the environment's cleanup).
#pragma once

#include <errno.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>

namespace kvmg::sys {

#if defined(__x86_64__)
#define KVMG_INLINE inline __attribute__((always_inline))

KVMG_INLINE long Raw(long nr, long a1, long a2, long a3, long a4 = 0, long a5 = 0, long a6 = 0) {
  long r;
  register long r10 __asm__("r10") = a4;
  register long r8 __asm__("r8") = a5;
  register long r9 __asm__("r9") = a6;
  __asm__ volatile("syscall"
                   : "=a"(r)
                   : "0"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return r;
}

// The kernel's -errno convention to libc's (-1, errno).
KVMG_INLINE long Check(long r) {
  if (r < 0 && r > -4096) {
    errno = static_cast<int>(-r);
    return -1;
  }
  return r;
}

KVMG_INLINE int Ioctl(int fd, unsigned long request, unsigned long arg) {
  return static_cast<int>(Check(Raw(SYS_ioctl, fd, static_cast<long>(request), static_cast<long>(arg))));
}
KVMG_INLINE int Ioctl(int fd, unsigned long request, const void* arg) {
  return Ioctl(fd, request, reinterpret_cast<unsigned long>(arg));
}
KVMG_INLINE int Fallocate(int fd, int mode, off_t offset, off_t length) {
  return static_cast<int>(Check(Raw(SYS_fallocate, fd, mode, offset, length)));
}
KVMG_INLINE void* Mmap(void* addr, size_t length, int prot, int flags, int fd, off_t offset) {
  long r = Check(Raw(SYS_mmap, reinterpret_cast<long>(addr), static_cast<long>(length), prot, flags, fd, offset));
  return r == -1 ? MAP_FAILED : reinterpret_cast<void*>(r);
}
KVMG_INLINE int Munmap(void* addr, size_t length) {
  return static_cast<int>(Check(Raw(SYS_munmap, reinterpret_cast<long>(addr), static_cast<long>(length), 0)));
}
KVMG_INLINE int Close(int fd) { return static_cast<int>(Check(Raw(SYS_close, fd, 0, 0))); }

#undef KVMG_INLINE
#else
#error "kvm-gmem's addon targets x86-64 (its KVM UAPI header is the x86 one)"
#endif

}  // namespace kvmg::sys
