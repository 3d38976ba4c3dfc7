// The loop both C baselines of bench/lab-slots.mjs run: N one-page guest_memfd memslots added
// (slot i at page i, file page i) and then deleted in ascending order, as
// KVM_SET_USER_MEMORY_REGION2 calls in one VM (the bench runs it twice). In steps (add or
// delete slots [from, to)), so that the bench can interleave them with the typed API's: under
// emulation the machine's speed drifts by 2x within a minute, and only runs side by side see
// the same machine.
#pragma once
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <initializer_list>

#include "../../native/kvm_uapi.h"

namespace slots {

inline double now_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

class Loop {
 public:
  // A VM with an n-page gmem; failed() names the step that failed (errno says why).
  explicit Loop(long n) {
    using namespace kvmg;
    kvm_ = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm_ < 0) {
      failed_ = "/dev/kvm";
      return;
    }
    vm_ = ioctl(kvm_, KVM_CREATE_VM, 0);
    if (vm_ < 0) {
      failed_ = "KVM_CREATE_VM";
      return;
    }
    kvm_create_guest_memfd cg = {};
    cg.size = static_cast<uint64_t>(n) * 4096;
    gmem_ = ioctl(vm_, KVM_CREATE_GUEST_MEMFD, &cg);
    if (gmem_ < 0) failed_ = "KVM_CREATE_GUEST_MEMFD";
  }
  ~Loop() {
    int saved = errno;
    for (int fd : {gmem_, vm_, kvm_})
      if (fd >= 0) close(fd);
    errno = saved;
  }
  const char* failed() const { return failed_; }

  // Adds (size 4096) or deletes (size 0) slots [from, to); the milliseconds it took.
  double Step(long from, long to, bool add) {
    kvmg::kvm_userspace_memory_region2 r = {};
    r.flags = 4;  // KVM_MEM_GUEST_MEMFD
    r.guest_memfd = gmem_;
    double t0 = now_ms();
    for (long i = from; i < to && !failed_; i++) {
      r.slot = static_cast<uint32_t>(i);
      r.guest_phys_addr = static_cast<uint64_t>(i) * 4096;
      r.memory_size = add ? 4096 : 0;
      r.guest_memfd_offset = static_cast<uint64_t>(i) * 4096;
      if (ioctl(vm_, kvmg::KVM_SET_USER_MEMORY_REGION2, &r) < 0) failed_ = add ? "add" : "delete";
    }
    return now_ms() - t0;
  }

 private:
  int kvm_ = -1, vm_ = -1, gmem_ = -1;
  const char* failed_ = nullptr;
};

}  // namespace slots
