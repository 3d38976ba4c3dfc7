// The loop both C baselines of bench/lab-slots.mjs run: N one-page guest_memfd memslots added
// (slot i at page i, file page i) and then deleted in ascending order, as
// KVM_SET_USER_MEMORY_REGION2 calls in a fresh VM.
#pragma once
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <initializer_list>

#include "../../native/kvm_uapi.h"

namespace slots {

struct Result {
  double addMs = 0, deleteMs = 0;
  const char* failed = nullptr;  // the step that failed (errno says why)
};

inline double now_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

inline Result run(long n) {
  using namespace kvmg;
  Result res;
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) return res.failed = "/dev/kvm", res;
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  int g = -1;
  kvm_create_guest_memfd cg = {};
  cg.size = static_cast<uint64_t>(n) * 4096;
  if (vm < 0) res.failed = "KVM_CREATE_VM";
  else if ((g = ioctl(vm, KVM_CREATE_GUEST_MEMFD, &cg)) < 0) res.failed = "KVM_CREATE_GUEST_MEMFD";
  kvm_userspace_memory_region2 r = {};
  r.flags = 4;  // KVM_MEM_GUEST_MEMFD
  r.guest_memfd = g;
  double t0 = now_ms();
  for (long i = 0; i < n && !res.failed; i++) {
    r.slot = static_cast<uint32_t>(i);
    r.guest_phys_addr = static_cast<uint64_t>(i) * 4096;
    r.memory_size = 4096;
    r.guest_memfd_offset = static_cast<uint64_t>(i) * 4096;
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &r) < 0) res.failed = "add";
  }
  double t1 = now_ms();
  for (long i = 0; i < n && !res.failed; i++) {
    r.slot = static_cast<uint32_t>(i);
    r.guest_phys_addr = static_cast<uint64_t>(i) * 4096;
    r.memory_size = 0;
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &r) < 0) res.failed = "delete";
  }
  double t2 = now_ms();
  int saved = errno;
  for (int fd : {g, vm, kvm})
    if (fd >= 0) close(fd);
  errno = saved;
  res.addMs = t1 - t0;
  res.deleteMs = t2 - t1;
  return res;
}

}  // namespace slots
