// kvm-gmem native addon: one exported function per system call.
//
// Conventions:
//   - fds are JS numbers (int32); u32 fields are numbers; u64 values are BigInt (lossless) or
//     a non-negative safe-integer number. A wrong type is a TypeError, a value that does not
//     fit is a RangeError; nothing reaches the kernel in either case.
//   - errno is captured right after the syscall and thrown as KvmError.
//   - Every fd returned is FD_CLOEXEC (the kernel leaves it off guest_memfd fds), lives in the
//     environment's own range of fd numbers, and is recorded in its registry (with its kind)
//     until close().
//   - Every argument is read before any fd is checked (Args::Done()): a getter cannot swap
//     the file behind a checked fd.
//   - Mappings are identified by address; their ArrayBuffer is made only when asked for.
//   - The functions are plain Node-API callbacks created with the addon instance as their
//     data: on calls as cheap as KVM_CHECK_EXTENSION, a heavier wrapper would show.
#include "addon.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <string>

#include "args.h"
#include "kvm_uapi.h"
#include "syscall.h"

namespace kvmg {
namespace {

napi_value Undefined(napi_env env) {
  napi_value v;
  napi_get_undefined(env, &v);
  return v;
}

napi_value Int(napi_env env, int32_t n) {
  napi_value v;
  napi_create_int32(env, n, &v);
  return v;
}

napi_value BigU64(napi_env env, uint64_t n) {
  napi_value v;
  napi_create_bigint_uint64(env, n, &v);
  return v;
}

// Throws for a failed syscall and returns nullptr (the value a failed callback returns).
napi_value Fail(Args& a, const char* syscall, const char* request) {
  int err = errno;
  a.addon()->ThrowErrno(a.env, err, syscall, request);
  return nullptr;
}

// An ioctl whose result is an int (or -1/errno).
napi_value IoctlInt(napi_env env, napi_callback_info info, unsigned long request, const char* name, bool withArg) {
  Args a(env, info, 2);
  int fd = a.Fd(0, "fd");
  int32_t arg = withArg ? a.Int32(1, "arg") : 0;
  if (!a.Done()) return nullptr;
  int r = sys::Ioctl(fd, request, static_cast<unsigned long>(arg));  // (sign-extended, as libc passes an int)
  if (r >= 0 && request == KVM_GET_VCPU_MMAP_SIZE) a.addon()->vcpuMmapSize = r;
  return r < 0 ? Fail(a, "ioctl", name) : Int(env, r);
}

// setErrorClass(KvmError): the class the addon throws.
napi_value SetErrorClass(napi_env env, napi_callback_info info) {
  Args a(env, info);
  napi_valuetype t;
  napi_typeof(env, a.arg(0), &t);
  if (t != napi_function) {
    a.Fail(true, "setErrorClass expects a constructor");
    return nullptr;
  }
  if (a.addon()->errorClassSet) {
    a.Fail(true, "setErrorClass: the error class is set once, by the loader (lib/raw/native.ts)");
    return nullptr;
  }
  a.addon()->errorClass = Napi::Persistent(Napi::Function(env, a.arg(0)));
  a.addon()->errorClassSet = true;
  return Undefined(env);
}

// open(path: string): fd, opened O_RDWR | O_CLOEXEC.
napi_value Open(napi_env env, napi_callback_info info) {
  Args a(env, info);
  size_t len;
  if (napi_get_value_string_utf8(env, a.arg(0), nullptr, 0, &len) != napi_ok) {
    a.Fail(true, "path must be a string");
    return nullptr;
  }
  std::string path(len, '\0');
  napi_get_value_string_utf8(env, a.arg(0), path.data(), len + 1, &len);
  if (path.find('\0') != std::string::npos) {
    a.Fail(true, "path must not contain NUL");
    return nullptr;
  }
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return Fail(a, "open", nullptr);
  // /dev/kvm is the misc device 10:232; anything else is a file the kernel may refuse.
  struct stat st;
  bool kvm = ::fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && major(st.st_rdev) == 10 && minor(st.st_rdev) == 232;
  return a.addon()->NewFd(env, fd, kvm ? Kind::System : Kind::File);
}

// Whether `fd` is still the file the addon opened at that number: an fd closed behind the
// addon's back (fs.closeSync on its number) may since name another file, which the call
// would then change (or describe). One fstat, asked before the calls that reach a file as a
// file (fallocate, ftruncate, mmap, fstat, close), not per ioctl: KVM's ioctl numbers (type 0xAE) mean nothing to
// other drivers (ENOTTY). A number that is not ours any more is forgotten: EBADF from then on.
bool StillOurs(Args& a, int fd, const char* syscall) {
  Registry& r = *a.addon()->registry;
  auto it = r.info.find(fd);
  struct stat st;
  if (it != r.info.end() && ::fstat(fd, &st) == 0 && st.st_dev == it->second.dev && st.st_ino == it->second.ino) return true;
  r.Remove(fd);
  a.addon()->ThrowErrno(a.env, EBADF, syscall, nullptr, "this fd was closed behind kvm-gmem's back (its number names another file now, or none): forgotten");
  return false;
}

// close(fd): closes an fd this environment opened through the addon. Any other fd is EBADF
// without a syscall: closing the process's own fds (stdio, Node's pipes, another worker's
// VM) from JavaScript would break the process, and a worker's exit hook must never close a
// number that another owner has since reused.
napi_value Close(napi_env env, napi_callback_info info) {
  Args a(env, info, 1);
  int fd = a.Int32(0, "fd");
  if (!a.ok) return nullptr;
  if (!a.addon()->registry->Owns(fd)) {
    a.addon()->ThrowErrno(env, EBADF, "close", nullptr, "not an fd that kvm-gmem opened in this thread");
    return nullptr;
  }
  if (!StillOurs(a, fd, "close")) return nullptr;
  a.addon()->registry->Remove(fd);
  return sys::Close(fd) < 0 ? Fail(a, "close", nullptr) : Undefined(env);
}

napi_value GetApiVersion(napi_env env, napi_callback_info info) {
  return IoctlInt(env, info, KVM_GET_API_VERSION, "KVM_GET_API_VERSION", false);
}

// checkExtension(fd, cap): the kernel's raw answer (on /dev/kvm or a VM fd).
napi_value CheckExtension(napi_env env, napi_callback_info info) {
  return IoctlInt(env, info, KVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", true);
}

napi_value GetVcpuMmapSize(napi_env env, napi_callback_info info) {
  return IoctlInt(env, info, KVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE", false);
}

// createVm(fd, type) / createVcpu(vmFd, id): the new fd (O_CLOEXEC from the kernel).
napi_value CreateFd(napi_env env, napi_callback_info info, unsigned long request, const char* name) {
  Args a(env, info);
  int fd = a.Fd(0, "fd");
  uint32_t arg = a.Uint32(1, request == KVM_CREATE_VM ? "type" : "vcpuId");
  if (!a.Done()) return nullptr;
  int r;
  // KVM_CREATE_VM fails with EINTR when any signal arrives while it registers its MMU
  // notifier (mm_take_all_locks gives up on a pending signal; a Node process has many VMAs,
  // so this takes a while): a profiler's SIGPROF made it fail every time in the lab. Nothing
  // was created, so it is retried, as QEMU does.
  do r = sys::Ioctl(fd, request, static_cast<unsigned long>(arg));
  while (r < 0 && errno == EINTR && request == KVM_CREATE_VM);
  return r < 0 ? Fail(a, "ioctl", name) : a.addon()->NewFd(env, r, request == KVM_CREATE_VM ? Kind::Vm : Kind::Vcpu);
}

napi_value CreateVm(napi_env env, napi_callback_info info) {
  return CreateFd(env, info, KVM_CREATE_VM, "KVM_CREATE_VM");
}

napi_value CreateVcpu(napi_env env, napi_callback_info info) {
  return CreateFd(env, info, KVM_CREATE_VCPU, "KVM_CREATE_VCPU");
}

// createGuestMemfd(vmFd, size, flags): the new gmem fd, made FD_CLOEXEC.
napi_value CreateGuestMemfd(napi_env env, napi_callback_info info) {
  Args a(env, info);
  kvm_create_guest_memfd gmem = {};
  int fd = a.Fd(0, "vmFd");
  gmem.size = a.Uint64(1, "size");
  gmem.flags = a.Uint64(2, "flags");
  if (!a.Done()) return nullptr;
  int g = sys::Ioctl(fd, KVM_CREATE_GUEST_MEMFD, &gmem);
  if (g < 0) return Fail(a, "ioctl", "KVM_CREATE_GUEST_MEMFD");
  // The kernel creates gmem fds without O_CLOEXEC; a child exec'd later must not inherit one
  // (it would pin the VM). F_SETFD cannot fail on a valid fd.
  fcntl(g, F_SETFD, FD_CLOEXEC);
  return a.addon()->NewFd(env, g, Kind::Gmem, gmem.flags);
}

// The fields v1 and v2 share (kvm_userspace_memory_region2 starts as the v1 struct does).
template <typename Region>
void ReadRegion(Args& a, napi_value o, Region* r) {
  r->slot = a.Uint32Prop(o, "slot", true);
  r->flags = a.Uint32Prop(o, "flags", false);
  r->guest_phys_addr = a.Uint64Prop(o, "guestPhysAddr", true);
  r->memory_size = a.Uint64Prop(o, "memorySize", true);
  r->userspace_addr = a.Uint64Prop(o, "userspaceAddr", false);
}

// setUserMemoryRegion(vmFd, { slot, flags, guestPhysAddr, memorySize, userspaceAddr }).
napi_value SetUserMemoryRegion(napi_env env, napi_callback_info info) {
  Args a(env, info, 2);
  kvm_userspace_memory_region r = {};
  int fd = a.Fd(0, "vmFd");
  napi_value o = a.Object(1, "region");
  ReadRegion(a, o, &r);
  if (!a.Done()) return nullptr;
  return sys::Ioctl(fd, KVM_SET_USER_MEMORY_REGION, &r) < 0 ? Fail(a, "ioctl", "KVM_SET_USER_MEMORY_REGION") : Undefined(env);
}

// setUserMemoryRegion2(vmFd, slot, flags, guestPhysAddr, memorySize, userspaceAddr,
//                      guestMemfdOffset, guestMemfd): the fields flat, so that the call reads
// no properties (lib/raw/native.ts takes them from the region object, in this order). It is
// the hot call of a VMM that changes memslots; each property read here cost as much as a
// cheap ioctl.
napi_value SetUserMemoryRegion2(napi_env env, napi_callback_info info) {
  Args a(env, info, 8);
  kvm_userspace_memory_region2 r = {};
  int fd = a.Fd(0, "vmFd");
  r.slot = a.Uint32Field(1, "slot", true);
  r.flags = a.Uint32Field(2, "flags", false);
  r.guest_phys_addr = a.Uint64Field(3, "guestPhysAddr", true);
  r.memory_size = a.Uint64Field(4, "memorySize", true);
  r.userspace_addr = a.Uint64Field(5, "userspaceAddr", false);
  r.guest_memfd_offset = a.Uint64Field(6, "guestMemfdOffset", false);
  r.guest_memfd = a.Uint32Field(7, "guestMemfd", false);
  if (!a.Done()) return nullptr;
  return sys::Ioctl(fd, KVM_SET_USER_MEMORY_REGION2, &r) < 0 ? Fail(a, "ioctl", "KVM_SET_USER_MEMORY_REGION2") : Undefined(env);
}

// setUserMemoryRegions2(vmFd, records): KVM_SET_USER_MEMORY_REGION2 for each record of a
// BigUint64Array, in order, stopping at the first refusal: its KvmError carries `index`, the
// records before it were applied. A record is six u64 words: slot (low half) and flags (high
// half), guest_phys_addr, memory_size, userspace_addr, guest_memfd_offset, guest_memfd (low
// half). lib/raw/native.ts packs them from region objects, checked there: reading seven
// properties per region here cost more than the JavaScript that packs them (under emulation,
// a tenth of a memslot call). The batch path of a VMM that sets up or tears down many slots:
// one call into the addon, the ioctls back to back.
napi_value SetUserMemoryRegions2(napi_env env, napi_callback_info info) {
  Args a(env, info, 2);
  int fd = a.Fd(0, "vmFd");
  napi_typedarray_type type = napi_int8_array;
  size_t length = 0;
  void* data = nullptr;
  bool isTyped = false;
  if (a.ok) napi_is_typedarray(env, a.arg(1), &isTyped);
  if (a.ok && isTyped) napi_get_typedarray_info(env, a.arg(1), &type, &length, &data, nullptr, nullptr);
  if (a.ok && (!isTyped || type != napi_biguint64_array)) a.Fail(true, "records must be a BigUint64Array");
  if (a.ok && length % 6 != 0) a.Fail(false, "records must hold six words per region");
  if (!a.Done()) return nullptr;
  const uint64_t* w = static_cast<const uint64_t*>(data);
  kvm_userspace_memory_region2 r = {};
  for (size_t i = 0; i < length / 6; i++, w += 6) {
    r.slot = static_cast<uint32_t>(w[0]);
    r.flags = static_cast<uint32_t>(w[0] >> 32);
    r.guest_phys_addr = w[1];
    r.memory_size = w[2];
    r.userspace_addr = w[3];
    r.guest_memfd_offset = w[4];
    r.guest_memfd = static_cast<uint32_t>(w[5]);
    if (sys::Ioctl(fd, KVM_SET_USER_MEMORY_REGION2, &r) == 0) continue;
    Fail(a, "ioctl", "KVM_SET_USER_MEMORY_REGION2");
    napi_value error, index;
    if (napi_get_and_clear_last_exception(env, &error) == napi_ok) {
      napi_create_uint32(env, static_cast<uint32_t>(i), &index);
      napi_set_named_property(env, error, "index", index);
      napi_throw(env, error);
    }
    return nullptr;
  }
  return Undefined(env);
}

// setMemoryAttributes(vmFd, { address, size, attributes, flags }).
napi_value SetMemoryAttributes(napi_env env, napi_callback_info info) {
  Args a(env, info);
  kvm_memory_attributes m = {};
  int fd = a.Fd(0, "vmFd");
  napi_value o = a.Object(1, "attributes");
  m.address = a.Uint64Prop(o, "address", true);
  m.size = a.Uint64Prop(o, "size", true);
  m.attributes = a.Uint64Prop(o, "attributes", true);
  m.flags = a.Uint64Prop(o, "flags", false);
  if (!a.Done()) return nullptr;
  return sys::Ioctl(fd, KVM_SET_MEMORY_ATTRIBUTES, &m) < 0 ? Fail(a, "ioctl", "KVM_SET_MEMORY_ATTRIBUTES") : Undefined(env);
}

// A one-shot timer that sends this thread the kick signal after `ms`: KVM_PRE_FAULT_MEMORY
// checks for signals between its page faults, so a call that makes no progress returns
// EINTR instead of blocking the thread forever (Linux 6.12 retries a fault on a stale MMU
// root without end once a memslot was deleted).
class Watchdog {
 public:
  explicit Watchdog(uint32_t ms) : ms_(ms) {
    if (ms == 0) return;
    InstallKickHandler();
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = KickSignal();
    sev._sigev_un._tid = static_cast<pid_t>(syscall(SYS_gettid));
    armed_ = timer_create(CLOCK_MONOTONIC, &sev, &timer_) == 0;
  }
  ~Watchdog() {
    if (armed_) timer_delete(timer_);
  }
  void Start() {
    if (!armed_) return;
    struct itimerspec t = {};
    t.it_value.tv_sec = ms_ / 1000;
    t.it_value.tv_nsec = static_cast<long>(ms_ % 1000) * 1000000L;
    timer_settime(timer_, 0, &t, nullptr);
  }
  // Whether the timer went off since Start() (it is disarmed either way).
  bool Fired() {
    if (!armed_) return false;
    struct itimerspec left = {}, zero = {};
    timer_settime(timer_, 0, &zero, &left);
    return left.it_value.tv_sec == 0 && left.it_value.tv_nsec == 0;
  }

 private:
  uint32_t ms_;
  timer_t timer_{};
  bool armed_ = false;
};

// preFaultMemory(vcpuFd, { gpa, size, flags, watchdogMs }): { gpa, size } as the kernel left
// them (the range not yet faulted in). Throws on error, as the ioctl does when no page was
// mapped. `watchdogMs` (default 2000, 0: none): the longest the kernel may go without
// mapping a page; then the call is interrupted and fails with EINTR. Interruptions by the
// watchdog after progress, or by other signals before it, are retried.
napi_value PreFaultMemory(napi_env env, napi_callback_info info) {
  Args a(env, info);
  kvm_pre_fault_memory p = {};
  int fd = a.Fd(0, "vcpuFd");
  napi_value o = a.Object(1, "range");
  p.gpa = a.Uint64Prop(o, "gpa", true);
  p.size = a.Uint64Prop(o, "size", true);
  p.flags = a.Uint64Prop(o, "flags", false);
  uint32_t watchdogMs = a.Uint32PropOr(o, "watchdogMs", 2000);
  if (!a.Done()) return nullptr;
  Watchdog dog(watchdogMs);
  int r;
  for (;;) {
    dog.Start();
    r = sys::Ioctl(fd, KVM_PRE_FAULT_MEMORY, &p);
    bool fired = dog.Fired();
    if (r == 0 && p.size != 0 && fired) continue;  // progress, cut short by the watchdog: go on
    if (r < 0 && errno == EINTR && !fired) continue;  // another signal, before the watchdog
    break;
  }
  if (r < 0) return Fail(a, "ioctl", "KVM_PRE_FAULT_MEMORY");
  napi_value out;
  napi_create_object(env, &out);
  napi_set_named_property(env, out, "gpa", BigU64(env, p.gpa));
  napi_set_named_property(env, out, "size", BigU64(env, p.size));
  return out;
}

// fallocate(fd, mode, offset, length). offset/length are u64 here and loff_t in the kernel:
// values >= 2^63 arrive negative, exactly as a C caller's would.
napi_value Fallocate(napi_env env, napi_callback_info info) {
  Args a(env, info);
  int fd = a.Fd(0, "fd");
  int32_t mode = a.Int32(1, "mode");
  uint64_t offset = a.Uint64(2, "offset");
  uint64_t length = a.Uint64(3, "length");
  if (!a.Done() || !StillOurs(a, fd, "fallocate")) return nullptr;
  return sys::Fallocate(fd, mode, static_cast<off_t>(offset), static_cast<off_t>(length)) < 0 ? Fail(a, "fallocate", nullptr) : Undefined(env);
}

// enableCap(fd, cap, args?): KVM_ENABLE_CAP with args[0..3] (u64s, missing ones 0), flags 0.
napi_value EnableCap(napi_env env, napi_callback_info info) {
  Args a(env, info, 3);
  kvm_enable_cap c = {};
  int fd = a.Fd(0, "fd");
  c.cap = a.Uint32(1, "cap");
  napi_valuetype t;
  napi_typeof(env, a.arg(2), &t);
  if (a.ok && t != napi_undefined) {
    bool array = false;
    napi_is_array(env, a.arg(2), &array);
    uint32_t n = 0;
    if (array) napi_get_array_length(env, a.arg(2), &n);
    if (!array || n > 4) a.Fail(true, "args must be an array of at most 4 u64s");
    for (uint32_t i = 0; a.ok && i < n; i++) {
      napi_value v;
      if (napi_get_element(env, a.arg(2), i, &v) != napi_ok) {
        a.ok = false;  // a throwing getter
        break;
      }
      c.args[i] = a.Uint64Value(v, "args[i]");
    }
  }
  if (!a.Done()) return nullptr;
  return sys::Ioctl(fd, KVM_ENABLE_CAP, &c) < 0 ? Fail(a, "ioctl", "KVM_ENABLE_CAP") : Undefined(env);
}

// memfdCreate(name): a memfd (MFD_CLOEXEC), shared memory that is not gmem: the host half of
// a private VM's memory, and the simulator's store for the contents of its gmem files.
napi_value MemfdCreate(napi_env env, napi_callback_info info) {
  Args a(env, info, 1);
  size_t len;
  char name[64];
  if (napi_get_value_string_utf8(env, a.arg(0), name, sizeof name, &len) != napi_ok) {
    a.Fail(true, "name must be a string");
    return nullptr;
  }
  int fd = static_cast<int>(syscall(SYS_memfd_create, name, MFD_CLOEXEC));
  return fd < 0 ? Fail(a, "memfd_create", nullptr) : a.addon()->NewFd(env, fd, Kind::Memfd);
}

// ftruncate(fd, length): sets a memfd's size (sparse: no page is allocated). Shrinking a
// file below what a mapping of it may touch is EBUSY: its views would fault.
napi_value Ftruncate(napi_env env, napi_callback_info info) {
  Args a(env, info, 2);
  int fd = a.Fd(0, "fd");
  uint64_t length = a.Uint64(1, "length");
  if (!a.Done() || !StillOurs(a, fd, "ftruncate")) return nullptr;
  for (const auto& [addr, m] : a.addon()->registry->mappings) {
    if (a.addon()->registry->Maps(m, fd) && m.accessible > 0 && m.offset + m.accessible > length) {
      errno = EBUSY;
      a.addon()->ThrowErrno(env, EBUSY, "ftruncate", nullptr, "the file is mapped past that length: unmap it first");
      return nullptr;
    }
  }
  return ::ftruncate(fd, static_cast<off_t>(length)) < 0 ? Fail(a, "ftruncate", nullptr) : Undefined(env);
}

// fstat(fd): { size, mode, blksize, blocks, ino } (size/blocks/ino as bigint).
napi_value Fstat(napi_env env, napi_callback_info info) {
  Args a(env, info);
  int fd = a.Fd(0, "fd");
  if (!a.Done() || !StillOurs(a, fd, "fstat")) return nullptr;
  struct stat st;
  if (::fstat(fd, &st) < 0) return Fail(a, "fstat", nullptr);
  Napi::Object out = Napi::Object::New(env);
  out.Set("size", Napi::BigInt::New(env, static_cast<int64_t>(st.st_size)));
  out.Set("mode", Napi::Number::New(env, st.st_mode));
  out.Set("blksize", Napi::Number::New(env, static_cast<double>(st.st_blksize)));
  out.Set("blocks", Napi::BigInt::New(env, static_cast<int64_t>(st.st_blocks)));
  out.Set("ino", Napi::BigInt::New(env, static_cast<uint64_t>(st.st_ino)));
  return out;
}

// mmap(fd, length, offset, prot, flags): the mapping's address (a number). mappingBuffer()
// gives its bytes; munmap(address) unmaps it (like C: the raw layer does not unmap for you;
// the typed Mapping does, also when collected). The kernel chooses the address: MAP_FIXED
// and MAP_FIXED_NOREPLACE are refused, since they could replace memory Node is using.
napi_value Mmap(napi_env env, napi_callback_info info) {
  Args a(env, info, 5);
  int32_t flags = a.Int32(4, "flags");
  // fd -1 with MAP_ANONYMOUS: anonymous memory (no file).
  bool anonymous = a.ok && (flags & MAP_ANONYMOUS) && a.Int32(0, "fd") == -1;
  int fd = anonymous ? -1 : a.Fd(0, "fd");
  uint64_t length = a.Uint64(1, "length");
  uint64_t offset = a.Uint64(2, "offset");
  int32_t prot = a.Int32(3, "prot");
  if (a.ok && (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE))) a.Fail(false, "mmap: MAP_FIXED and MAP_FIXED_NOREPLACE are not supported");
  if (!a.Done() || (!anonymous && !StillOurs(a, fd, "mmap"))) return nullptr;
  Addon* addon = a.addon();
  Kind kind = anonymous ? Kind::None : addon->registry->KindOf(fd);
  void* p = sys::Mmap(nullptr, length, prot, flags, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) return Fail(a, "mmap", nullptr);
  size_t accessible = addon->Accessible(fd, kind, offset, length, anonymous);
  auto [it, added] = addon->registry->mappings.try_emplace(p, Mapping{p, static_cast<size_t>(length), static_cast<size_t>(offset), fd, prot, flags, kind, accessible});
  if (added && !anonymous) {
    const FdInfo& id = addon->registry->info[fd];
    it->second.dev = id.dev;
    it->second.ino = id.ino;
  }
  // A number: user addresses are below 2^47, exact in a double, and a number costs no heap
  // allocation (the raw layer makes a bigint only when asked for one).
  napi_value out;
  napi_create_double(env, static_cast<double>(reinterpret_cast<uintptr_t>(p)), &out);
  return out;
}

Mapping* MappingArg(Args& a) {
  uint64_t addr = a.Uint64(0, "address");
  if (!a.ok) return nullptr;
  Mapping* m = FindMapping(a.addon()->registry.get(), addr);
  if (!m) a.Fail(false, "address is not a mapping made by mmap() (or it was unmapped)");
  return m;
}

// mappingBuffer(address[, offset, length]): an external ArrayBuffer over the mapping
// (zero-copy): all of it that can be touched (the same buffer each time; up to 4 GiB, the
// most Node puts in one buffer), or a window [offset, offset + length) of it (a new buffer
// each call). munmap detaches them all. No buffer reaches bytes that would fault (past a
// file's end, a guest_memfd without INIT_SHARED, a file the addon did not make) or a mapping
// that is not readable and writable: EFAULT / EACCES instead.
napi_value MappingBuffer(napi_env env, napi_callback_info info) {
  Args a(env, info, 3);
  Mapping* m = MappingArg(a);
  if (!m) return nullptr;
  napi_valuetype t;
  napi_typeof(env, a.arg(1), &t);
  bool whole = t == napi_undefined;
  uint64_t offset = whole ? 0 : a.Uint64(1, "offset");
  uint64_t length = whole ? m->accessible : a.Uint64(2, "length");
  if (a.ok && (offset > m->length || length > m->length - offset)) a.Fail(false, "window is outside the mapping");
  if (a.ok && length > (uint64_t{1} << 32)) a.Fail(false, "a buffer holds at most 4 GiB: take a window (offset, length)");
  if (!a.ok) return nullptr;
  // A buffer is writable: only over memory that is mapped readable and writable, and only
  // over bytes that cannot fault (a guest_memfd without INIT_SHARED, a file past its end, a
  // file the addon knows nothing of: SIGBUS on the first touch).
  if ((m->prot & (PROT_READ | PROT_WRITE)) != (PROT_READ | PROT_WRITE)) {
    a.addon()->ThrowErrno(env, EACCES, "mmap", nullptr, "the mapping is not readable and writable: no buffer over it");
    return nullptr;
  }
  if (offset + length > m->accessible || (whole && m->accessible == 0)) {
    a.addon()->ThrowErrno(env, EFAULT, "mmap", nullptr, "those bytes of the mapping would fault (past the file's end, or not host-accessible): no buffer over them");
    return nullptr;
  }
  napi_value buffer;
  if (whole && m->buffer && napi_get_reference_value(env, m->buffer, &buffer) == napi_ok && buffer) return buffer;
  if (napi_create_external_arraybuffer(env, static_cast<uint8_t*>(m->addr) + offset, length, nullptr, nullptr, &buffer) != napi_ok) {
    a.Fail(false, "cannot make a buffer of that size");
    return nullptr;
  }
  napi_ref ref;
  napi_create_reference(env, buffer, whole ? 1 : 0, &ref);  // windows: weak (detached if still alive)
  if (whole) {
    m->buffer = ref;
  } else {
    // Forget windows that were collected. The next sweep waits until the list has doubled
    // past what survived this one: amortized O(1) a call however many windows stay alive.
    if (m->windows.size() >= m->compactAt) {
      std::vector<napi_ref> live;
      for (napi_ref w : m->windows) {
        napi_value v = nullptr;
        if (napi_get_reference_value(env, w, &v) == napi_ok && v) live.push_back(w);
        else napi_delete_reference(env, w);
      }
      m->windows.swap(live);
      m->compactAt = std::max<size_t>(64, 2 * m->windows.size());
    }
    m->windows.push_back(ref);
  }
  return buffer;
}

// madvise(address, offset, length, advice) within a mapping made by mmap(): MADV_DONTNEED,
// MADV_REMOVE (frees the pages of shared memory: they read as zeros after), MADV_FREE,
// MADV_WILLNEED, MADV_NORMAL. No other advice: some (MADV_DONTFORK, MADV_HWPOISON...) change
// the process in ways JavaScript should not reach.
napi_value Madvise(napi_env env, napi_callback_info info) {
  Args a(env, info, 4);
  Mapping* m = MappingArg(a);
  uint64_t offset = a.Uint64(1, "offset");
  uint64_t length = a.Uint64(2, "length");
  int32_t advice = a.Int32(3, "advice");
  if (!m || !a.ok) return nullptr;
  if (offset > m->length || length > m->length - offset) a.Fail(false, "range is outside the mapping");
  if (a.ok && advice != MADV_DONTNEED && advice != MADV_REMOVE && advice != MADV_FREE && advice != MADV_WILLNEED && advice != MADV_NORMAL)
    a.Fail(false, "advice must be MADV_NORMAL, MADV_WILLNEED, MADV_DONTNEED, MADV_FREE or MADV_REMOVE");
  if (!a.ok) return nullptr;
  return ::madvise(static_cast<uint8_t*>(m->addr) + offset, length, advice) < 0 ? Fail(a, "madvise", nullptr) : Undefined(env);
}

// munmap(address): detaches the mapping's buffer (every view over it) and unmaps. Unmapping
// an address that is no longer mapped is a no-op, so a second munmap is harmless.
napi_value Munmap(napi_env env, napi_callback_info info) {
  Args a(env, info, 1);
  uint64_t addr = a.Uint64(0, "address");
  if (!a.ok) return nullptr;
  Registry* reg = a.addon()->registry.get();
  Mapping* m = FindMapping(reg, addr);
  if (!m) return Undefined(env);
  if (m->busy) {
    errno = EBUSY;  // a vCPU thread is in KVM_RUN with it
    return Fail(a, "munmap", nullptr);
  }
  if (sys::Munmap(m->addr, m->length) < 0) return Fail(a, "munmap", nullptr);
  if (m->buffer) m->windows.push_back(m->buffer);
  for (napi_ref ref : m->windows) {
    napi_value buffer = nullptr;
    if (napi_get_reference_value(env, ref, &buffer) == napi_ok && buffer) napi_detach_arraybuffer(env, buffer);
    napi_delete_reference(env, ref);
  }
  reg->mappings.erase(m->addr);  // (m goes with it)
  return Undefined(env);
}

}  // namespace

bool Args::Owned(int fd) const { return addon()->registry->Owns(fd); }

void Args::NotOurFd(const char* name) {
  ok = false;
  errno = EBADF;
  addon()->ThrowErrno(env, EBADF, name, nullptr, "not an fd that kvm-gmem opened in this thread");
}

Addon::Addon(Napi::Env env, Napi::Object exports) {
  DefineAddon(exports,
              {
                  InstanceMethod("getRegs", &Addon::GetRegs),
                  InstanceMethod("setRegs", &Addon::SetRegs),
                  InstanceMethod("getSregs", &Addon::GetSregs),
                  InstanceMethod("setSregs", &Addon::SetSregs),
                  InstanceMethod("run", &Addon::Run),
                  InstanceMethod("kick", &Addon::Kick),
                  InstanceValue("pageSize", Napi::Number::New(env, static_cast<double>(sysconf(_SC_PAGESIZE))), napi_enumerable),
              });
  const std::pair<const char*, napi_callback> functions[] = {
      {"setErrorClass", SetErrorClass},
      {"open", Open},
      {"close", Close},
      {"getApiVersion", GetApiVersion},
      {"checkExtension", CheckExtension},
      {"createVm", CreateVm},
      {"getVcpuMmapSize", GetVcpuMmapSize},
      {"createVcpu", CreateVcpu},
      {"createGuestMemfd", CreateGuestMemfd},
      {"setUserMemoryRegion", SetUserMemoryRegion},
      {"setUserMemoryRegion2", SetUserMemoryRegion2},
      {"setUserMemoryRegions2", SetUserMemoryRegions2},
      {"setMemoryAttributes", SetMemoryAttributes},
      {"preFaultMemory", PreFaultMemory},
      {"fallocate", Fallocate},
      {"fstat", Fstat},
      {"memfdCreate", MemfdCreate},
      {"ftruncate", Ftruncate},
      {"madvise", Madvise},
      {"enableCap", EnableCap},
      {"mmap", Mmap},
      {"munmap", Munmap},
      {"mappingBuffer", MappingBuffer},
  };
  for (const auto& [name, cb] : functions) {
    napi_value f;
    napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, this, &f);
    exports.Set(name, f);
  }
  // When this environment ends (process exit or worker exit), release what it still holds.
  std::shared_ptr<Registry> reg = registry;
  env.AddCleanupHook([reg]() { Cleanup(reg.get()); });
}

void Addon::Cleanup(Registry* registry) {
  StopRuns(registry);  // first: a vCPU thread must not outlive the fds and mappings below
  for (auto& [addr, m] : registry->mappings) munmap(m.addr, m.length);  // (its buffer references go with the environment)
  registry->mappings.clear();
  for (size_t fd = 0; fd < registry->kinds.size(); fd++) {
    if (registry->kinds[fd] == Kind::None) continue;
    // Only the file this environment opened: one closed behind the addon's back may since
    // have been handed to someone else.
    struct stat st;
    const FdInfo& id = registry->info[static_cast<int>(fd)];
    if (::fstat(static_cast<int>(fd), &st) == 0 && st.st_dev == id.dev && st.st_ino == id.ino) ::close(static_cast<int>(fd));
  }
  registry->kinds.clear();
  registry->info.clear();
}

void Addon::ThrowErrno(napi_env e, int err, const char* syscall, const char* request, const char* detail) {
  Napi::Env env(e);
  const char* code = strerrorname_np(err);
  std::string codeStr = code ? code : ("E" + std::to_string(err));
  std::string message = std::string(request ? request : syscall) + ": " + strerror(err) + " (" + codeStr + ")";
  if (detail) message += std::string(": ") + detail;
  Napi::Object init = Napi::Object::New(env);
  init.Set("errno", Napi::Number::New(env, err));
  init.Set("code", Napi::String::New(env, codeStr));
  init.Set("syscall", Napi::String::New(env, syscall));
  if (request) init.Set("request", Napi::String::New(env, request));
  if (!errorClass.IsEmpty()) {
    Napi::Value error = errorClass.New({Napi::String::New(env, message), init});
    if (!env.IsExceptionPending()) Napi::Error(env, error).ThrowAsJavaScriptException();
    return;
  }
  Napi::Error error = Napi::Error::New(env, message);
  for (const char* k : {"errno", "code", "syscall", "request"})
    if (init.Has(k)) error.Value().Set(k, init.Get(k));
  error.ThrowAsJavaScriptException();
}

namespace {
// Environments get ranges of fd numbers in turn (a process-wide count, not per-env state).
std::atomic<unsigned> nextRange{0};
}  // namespace

// This environment's range: 16 ranges above half of RLIMIT_NOFILE (at most from 65536 up), so
// that numbers the process hands out (lowest free first) do not reach them.
static void InitRange(Registry& r) {
  struct rlimit lim;
  r.rangeStart = 0;
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY) return;
  long limit = static_cast<long>(std::min<rlim_t>(lim.rlim_cur, 1 << 20));
  long base = std::min(65536L, limit / 2);
  long stride = std::min(4096L, (limit - base) / 16);
  if (stride < 16) return;  // too few numbers to spare: fds stay where the kernel put them
  r.rangeStart = static_cast<int>(base + (nextRange++ % 16) * stride);
  r.rangeEnd = static_cast<int>(r.rangeStart + stride);
  r.cursor = r.rangeStart;
}

napi_value Addon::NewFd(napi_env env, int fd, Kind kind, uint64_t gmemFlags) {
  Registry& r = *registry;
  if (r.rangeStart < 0) InitRange(r);
  if (r.rangeStart > 0) {
    // The next number of the range, round-robin: a number closed behind the addon's back is
    // handed out again only after the rest of the range.
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, r.cursor);
    if (moved >= r.rangeEnd) {
      ::close(moved);
      moved = fcntl(fd, F_DUPFD_CLOEXEC, r.rangeStart);
    }
    if (moved >= 0) {
      ::close(fd);
      fd = moved;
      r.cursor = moved + 1 < r.rangeEnd ? moved + 1 : r.rangeStart;
    }
  }
  struct stat st;
  FdInfo id;
  if (::fstat(fd, &st) == 0) {
    id.dev = st.st_dev;
    id.ino = st.st_ino;
  }
  id.gmemFlags = gmemFlags;
  r.Add(fd, kind);
  r.info[fd] = id;
  return Int(env, fd);
}

size_t Addon::Accessible(int fd, Kind kind, uint64_t offset, uint64_t length, bool anonymous) {
  auto within = [&](uint64_t size) -> size_t { return offset >= size ? 0 : static_cast<size_t>(std::min(length, size - offset)); };
  if (anonymous) return static_cast<size_t>(length);
  struct stat st;
  switch (kind) {
    case Kind::Gmem:
      if (!(registry->info[fd].gmemFlags & kGuestMemfdFlagInitShared)) return 0;  // every host touch faults
      return ::fstat(fd, &st) == 0 ? within(static_cast<uint64_t>(st.st_size)) : 0;
    case Kind::Memfd:
      return ::fstat(fd, &st) == 0 ? within(static_cast<uint64_t>(st.st_size)) : 0;
    case Kind::Vcpu:
      return within(static_cast<uint64_t>(vcpuMmapSize));  // kvm_run and the pages after it
    default:
      return 0;  // a file the addon knows nothing of: it may shrink under the mapping
  }
}

}  // namespace kvmg

using KvmGmemAddon = kvmg::Addon;
NODE_API_ADDON(KvmGmemAddon)
