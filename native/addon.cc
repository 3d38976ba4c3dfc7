// kvm-gmem native addon: one exported function per system call.
//
// Conventions:
//   - fds are JS numbers (int32); u32 fields are numbers; u64 values are BigInt (lossless) or
//     a non-negative safe-integer number. A wrong type is a TypeError, a value that does not
//     fit is a RangeError; nothing reaches the kernel in either case.
//   - errno is captured right after the syscall and thrown as KvmError.
//   - Every fd returned is FD_CLOEXEC (the kernel leaves it off guest_memfd fds) and is
//     recorded in the environment's registry until close().
#include "addon.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "args.h"
#include "kvm_uapi.h"

namespace kvmg {

Mapping* UnwrapMapping(Napi::Env env, Napi::Value v) {
  if (!v.IsArrayBuffer() || !v.As<Napi::Object>().CheckTypeTag(&kMappingTag)) {
    Napi::TypeError::New(env, "expected an ArrayBuffer returned by mmap()")
        .ThrowAsJavaScriptException();
    return nullptr;
  }
  void* data = nullptr;
  napi_unwrap(env, v, &data);
  return static_cast<Mapping*>(data);
}

namespace {

// Runs when the mapping's ArrayBuffer is garbage-collected. munmap() may have run first (the
// buffer is then detached but its wrap still finalizes later): idempotent.
void FinalizeMapping(napi_env, void* data, void*) {
  auto* m = static_cast<Mapping*>(data);
  if (m->mapped) munmap(m->addr, m->length);
  m->registry->mappings.erase(m);
  delete m;
}

}  // namespace

Addon::Addon(Napi::Env env, Napi::Object exports) {
  DefineAddon(exports,
              {
                  InstanceMethod("setErrorClass", &Addon::SetErrorClass),
                  InstanceMethod("open", &Addon::Open),
                  InstanceMethod("close", &Addon::Close),
                  InstanceMethod("getApiVersion", &Addon::GetApiVersion),
                  InstanceMethod("checkExtension", &Addon::CheckExtension),
                  InstanceMethod("createVm", &Addon::CreateVm),
                  InstanceMethod("getVcpuMmapSize", &Addon::GetVcpuMmapSize),
                  InstanceMethod("createVcpu", &Addon::CreateVcpu),
                  InstanceMethod("createGuestMemfd", &Addon::CreateGuestMemfd),
                  InstanceMethod("setUserMemoryRegion", &Addon::SetUserMemoryRegion),
                  InstanceMethod("setUserMemoryRegion2", &Addon::SetUserMemoryRegion2),
                  InstanceMethod("setMemoryAttributes", &Addon::SetMemoryAttributes),
                  InstanceMethod("preFaultMemory", &Addon::PreFaultMemory),
                  InstanceMethod("fallocate", &Addon::Fallocate),
                  InstanceMethod("fstat", &Addon::Fstat),
                  InstanceMethod("mmap", &Addon::Mmap),
                  InstanceMethod("munmap", &Addon::Munmap),
                  InstanceMethod("mappingAddress", &Addon::MappingAddress),
                  InstanceMethod("getRegs", &Addon::GetRegs),
                  InstanceMethod("setRegs", &Addon::SetRegs),
                  InstanceMethod("getSregs", &Addon::GetSregs),
                  InstanceMethod("setSregs", &Addon::SetSregs),
                  InstanceMethod("run", &Addon::Run),
                  InstanceMethod("kick", &Addon::Kick),
                  InstanceValue("pageSize",
                                Napi::Number::New(env, static_cast<double>(sysconf(_SC_PAGESIZE))),
                                napi_enumerable),
              });
  // When this environment ends (process exit or worker exit), release what it still holds.
  std::shared_ptr<Registry> reg = registry;
  env.AddCleanupHook([reg]() { Cleanup(reg.get()); });
}

void Addon::Cleanup(Registry* registry) {
  StopRuns(registry);  // first: a vCPU thread must not outlive the fds and mappings below
  for (Mapping* m : registry->mappings) {
    if (m->mapped) munmap(m->addr, m->length);
    m->mapped = false;  // the wrap finalizer, if it still runs, frees the record
  }
  for (int fd : registry->fds) ::close(fd);
  registry->fds.clear();
}

void Addon::ThrowErrno(Napi::Env env, int err, const char* syscall, const char* request) {
  const char* code = strerrorname_np(err);
  std::string codeStr = code ? code : ("E" + std::to_string(err));
  std::string message = std::string(request ? request : syscall) + ": " + strerror(err) + " (" +
                        codeStr + ")";
  Napi::Object init = Napi::Object::New(env);
  init.Set("errno", Napi::Number::New(env, err));
  init.Set("code", Napi::String::New(env, codeStr));
  init.Set("syscall", Napi::String::New(env, syscall));
  if (request) init.Set("request", Napi::String::New(env, request));
  if (!errorClass.IsEmpty()) {
    Napi::Value e = errorClass.New({Napi::String::New(env, message), init});
    if (!env.IsExceptionPending()) Napi::Error(env, e).ThrowAsJavaScriptException();
    return;
  }
  Napi::Error e = Napi::Error::New(env, message);
  for (const char* k : {"errno", "code", "syscall", "request"})
    if (init.Has(k)) e.Value().Set(k, init.Get(k));
  e.ThrowAsJavaScriptException();
}

Napi::Value Addon::NewFd(Napi::Env env, int fd) {
  registry->fds.insert(fd);
  return Napi::Number::New(env, fd);
}

Napi::Value Addon::SetErrorClass(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) {
    Napi::TypeError::New(info.Env(), "setErrorClass expects a constructor")
        .ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  errorClass = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

// open(path: string): fd, opened O_RDWR | O_CLOEXEC.
Napi::Value Addon::Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) {
    Napi::TypeError::New(env, "path must be a string").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  if (path.find('\0') != std::string::npos) {
    Napi::TypeError::New(env, "path must not contain NUL").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    ThrowErrno(env, err, "open", nullptr);
    return env.Undefined();
  }
  return NewFd(env, fd);
}

// close(fd): closes an fd this environment opened through the addon. Any other fd is EBADF
// without a syscall: closing the process's own fds (stdio, Node's pipes, another worker's
// VM) from JavaScript would break the process, and a worker's exit hook must never close a
// number that another owner has since reused.
Napi::Value Addon::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info);
  int fd = a.Int32(0, "fd");
  if (!a.ok) return env.Undefined();
  if (registry->fds.erase(fd) == 0) {
    ThrowErrno(env, EBADF, "close", nullptr);
    return env.Undefined();
  }
  if (::close(fd) < 0) {
    int err = errno;
    ThrowErrno(env, err, "close", nullptr);
  }
  return env.Undefined();
}

Napi::Value Addon::GetApiVersion(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info);
  int fd = a.Int32(0, "fd");
  if (!a.ok) return env.Undefined();
  int r = ioctl(fd, KVM_GET_API_VERSION, 0);
  if (r < 0) {
    int err = errno;
    ThrowErrno(env, err, "ioctl", "KVM_GET_API_VERSION");
    return env.Undefined();
  }
  return Napi::Number::New(env, r);
}

// checkExtension(fd, cap): the kernel's raw answer (on /dev/kvm or a VM fd).
Napi::Value Addon::CheckExtension(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info);
  int fd = a.Int32(0, "fd");
  int32_t cap = a.Int32(1, "cap");
  if (!a.ok) return env.Undefined();
  int r = ioctl(fd, KVM_CHECK_EXTENSION, static_cast<long>(cap));
  if (r < 0) {
    int err = errno;
    ThrowErrno(env, err, "ioctl", "KVM_CHECK_EXTENSION");
    return env.Undefined();
  }
  return Napi::Number::New(env, r);
}

Napi::Value Addon::CreateVm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info);
  int fd = a.Int32(0, "fd");
  uint32_t type = a.Uint32(1, "type");
  if (!a.ok) return env.Undefined();
  int vm = ioctl(fd, KVM_CREATE_VM, static_cast<unsigned long>(type));
  if (vm < 0) {
    int err = errno;
    ThrowErrno(env, err, "ioctl", "KVM_CREATE_VM");
    return env.Undefined();
  }
  return NewFd(env, vm);  // anon_inode_getfd(..., O_CLOEXEC) already
}

Napi::Value Addon::GetVcpuMmapSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info);
  int fd = a.Int32(0, "fd");
  if (!a.ok) return env.Undefined();
  int r = ioctl(fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (r < 0) {
    int err = errno;
    ThrowErrno(env, err, "ioctl", "KVM_GET_VCPU_MMAP_SIZE");
    return env.Undefined();
  }
  return Napi::Number::New(env, r);
}

Napi::Value Addon::CreateVcpu(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info);
  int fd = a.Int32(0, "vmFd");
  uint32_t id = a.Uint32(1, "vcpuId");
  if (!a.ok) return env.Undefined();
  int vcpu = ioctl(fd, KVM_CREATE_VCPU, static_cast<unsigned long>(id));
  if (vcpu < 0) {
    int err = errno;
    ThrowErrno(env, err, "ioctl", "KVM_CREATE_VCPU");
    return env.Undefined();
  }
  return NewFd(env, vcpu);  // O_CLOEXEC from the kernel
}

// createGuestMemfd(vmFd, size, flags): the new gmem fd, made FD_CLOEXEC.
Napi::Value Addon::CreateGuestMemfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info);
  kvm_create_guest_memfd gmem = {};
  int fd = a.Int32(0, "vmFd");
  gmem.size = a.Uint64(1, "size");
  gmem.flags = a.Uint64(2, "flags");
  if (!a.ok) return env.Undefined();
  int g = ioctl(fd, KVM_CREATE_GUEST_MEMFD, &gmem);
  if (g < 0) {
    int err = errno;
    ThrowErrno(env, err, "ioctl", "KVM_CREATE_GUEST_MEMFD");
    return env.Undefined();
  }
  // The kernel creates gmem fds without O_CLOEXEC; a child exec'd later must not inherit one
  // (it would pin the VM). F_SETFD cannot fail on a valid fd.
  fcntl(g, F_SETFD, FD_CLOEXEC);
  return NewFd(env, g);
}

// setUserMemoryRegion(vmFd, { slot, flags, guestPhysAddr, memorySize, userspaceAddr }).
Napi::Value Addon::SetUserMemoryRegion(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info);
  kvm_userspace_memory_region r = {};
  int fd = a.Int32(0, "vmFd");
  Napi::Object o = a.Object(1, "region");
  r.slot = a.Uint32Prop(o, "slot", true);
  r.flags = a.Uint32Prop(o, "flags", false);
  r.guest_phys_addr = a.Uint64Prop(o, "guestPhysAddr", true);
  r.memory_size = a.Uint64Prop(o, "memorySize", true);
  r.userspace_addr = a.Uint64Prop(o, "userspaceAddr", false);
  if (!a.ok) return env.Undefined();
  if (ioctl(fd, KVM_SET_USER_MEMORY_REGION, &r) < 0) {
    int err = errno;
    ThrowErrno(env, err, "ioctl", "KVM_SET_USER_MEMORY_REGION");
  }
  return env.Undefined();
}

// setUserMemoryRegion2(vmFd, { slot, flags, guestPhysAddr, memorySize, userspaceAddr,
//                              guestMemfdOffset, guestMemfd }).
Napi::Value Addon::SetUserMemoryRegion2(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info);
  kvm_userspace_memory_region2 r = {};
  int fd = a.Int32(0, "vmFd");
  Napi::Object o = a.Object(1, "region");
  r.slot = a.Uint32Prop(o, "slot", true);
  r.flags = a.Uint32Prop(o, "flags", false);
  r.guest_phys_addr = a.Uint64Prop(o, "guestPhysAddr", true);
  r.memory_size = a.Uint64Prop(o, "memorySize", true);
  r.userspace_addr = a.Uint64Prop(o, "userspaceAddr", false);
  r.guest_memfd_offset = a.Uint64Prop(o, "guestMemfdOffset", false);
  r.guest_memfd = a.Uint32Prop(o, "guestMemfd", false);
  if (!a.ok) return env.Undefined();
  if (ioctl(fd, KVM_SET_USER_MEMORY_REGION2, &r) < 0) {
    int err = errno;
    ThrowErrno(env, err, "ioctl", "KVM_SET_USER_MEMORY_REGION2");
  }
  return env.Undefined();
}

// setMemoryAttributes(vmFd, { address, size, attributes, flags }).
Napi::Value Addon::SetMemoryAttributes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info);
  kvm_memory_attributes m = {};
  int fd = a.Int32(0, "vmFd");
  Napi::Object o = a.Object(1, "attributes");
  m.address = a.Uint64Prop(o, "address", true);
  m.size = a.Uint64Prop(o, "size", true);
  m.attributes = a.Uint64Prop(o, "attributes", true);
  m.flags = a.Uint64Prop(o, "flags", false);
  if (!a.ok) return env.Undefined();
  if (ioctl(fd, KVM_SET_MEMORY_ATTRIBUTES, &m) < 0) {
    int err = errno;
    ThrowErrno(env, err, "ioctl", "KVM_SET_MEMORY_ATTRIBUTES");
  }
  return env.Undefined();
}

// preFaultMemory(vcpuFd, { gpa, size, flags }): { gpa, size } as the kernel left them (the
// range not yet faulted in). Throws on error, as the ioctl does when no page was mapped.
Napi::Value Addon::PreFaultMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info);
  kvm_pre_fault_memory p = {};
  int fd = a.Int32(0, "vcpuFd");
  Napi::Object o = a.Object(1, "range");
  p.gpa = a.Uint64Prop(o, "gpa", true);
  p.size = a.Uint64Prop(o, "size", true);
  p.flags = a.Uint64Prop(o, "flags", false);
  if (!a.ok) return env.Undefined();
  if (ioctl(fd, KVM_PRE_FAULT_MEMORY, &p) < 0) {
    int err = errno;
    ThrowErrno(env, err, "ioctl", "KVM_PRE_FAULT_MEMORY");
    return env.Undefined();
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("gpa", Napi::BigInt::New(env, p.gpa));
  out.Set("size", Napi::BigInt::New(env, p.size));
  return out;
}

// fallocate(fd, mode, offset, length). offset/length are u64 here and loff_t in the kernel:
// values >= 2^63 arrive negative, exactly as a C caller's would.
Napi::Value Addon::Fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info);
  int fd = a.Int32(0, "fd");
  int32_t mode = a.Int32(1, "mode");
  uint64_t offset = a.Uint64(2, "offset");
  uint64_t length = a.Uint64(3, "length");
  if (!a.ok) return env.Undefined();
  if (fallocate(fd, mode, static_cast<off_t>(offset), static_cast<off_t>(length)) < 0) {
    int err = errno;
    ThrowErrno(env, err, "fallocate", nullptr);
  }
  return env.Undefined();
}

// fstat(fd): { size, mode, blksize, blocks, ino } (size/blocks/ino as bigint).
Napi::Value Addon::Fstat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info);
  int fd = a.Int32(0, "fd");
  if (!a.ok) return env.Undefined();
  struct stat st;
  if (::fstat(fd, &st) < 0) {
    int err = errno;
    ThrowErrno(env, err, "fstat", nullptr);
    return env.Undefined();
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("size", Napi::BigInt::New(env, static_cast<int64_t>(st.st_size)));
  out.Set("mode", Napi::Number::New(env, st.st_mode));
  out.Set("blksize", Napi::Number::New(env, static_cast<double>(st.st_blksize)));
  out.Set("blocks", Napi::BigInt::New(env, static_cast<int64_t>(st.st_blocks)));
  out.Set("ino", Napi::BigInt::New(env, static_cast<uint64_t>(st.st_ino)));
  return out;
}

// mmap(fd, length, offset, prot, flags): { buffer, address }. The buffer is an external
// ArrayBuffer over the whole mapping; munmap(buffer) detaches it, and if it is collected
// while still mapped its finalizer unmaps. The address is chosen by the kernel: MAP_FIXED
// and MAP_FIXED_NOREPLACE are refused, since they could replace memory Node is using.
// As in C, touching bytes the kernel will not fault in (past EOF, or a guest_memfd without
// INIT_SHARED) raises SIGBUS: the typed Mapping never hands out such bytes.
Napi::Value Addon::Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info);
  int fd = a.Int32(0, "fd");
  uint64_t length = a.Uint64(1, "length");
  uint64_t offset = a.Uint64(2, "offset");
  int32_t prot = a.Int32(3, "prot");
  int32_t flags = a.Int32(4, "flags");
  if (a.ok && (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)))
    a.Fail(false, "mmap: MAP_FIXED and MAP_FIXED_NOREPLACE are not supported");
  if (!a.ok) return env.Undefined();
  void* p = ::mmap(nullptr, length, prot, flags, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) {
    int err = errno;
    ThrowErrno(env, err, "mmap", nullptr);
    return env.Undefined();
  }
  auto* m = new Mapping{p, static_cast<size_t>(length), true, registry};
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, p, m->length);
  if (env.IsExceptionPending() ||
      napi_wrap(env, buffer, m, FinalizeMapping, nullptr, nullptr) != napi_ok) {
    munmap(p, m->length);
    delete m;
    if (!env.IsExceptionPending())
      Napi::Error::New(env, "mmap: cannot wrap the mapping").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  registry->mappings.insert(m);
  buffer.TypeTag(&kMappingTag);
  Napi::Object out = Napi::Object::New(env);
  out.Set("buffer", buffer);
  out.Set("address", Napi::BigInt::New(env, reinterpret_cast<uint64_t>(p)));
  return out;
}

// munmap(buffer): detaches the buffer (every view over it) and unmaps. Idempotent.
Napi::Value Addon::Munmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Mapping* m = UnwrapMapping(env, info[0]);
  if (!m || !m->mapped) return env.Undefined();
  if (m->busy) {
    ThrowErrno(env, EBUSY, "munmap", nullptr);  // a vCPU thread is in KVM_RUN with it
    return env.Undefined();
  }
  info[0].As<Napi::ArrayBuffer>().Detach();
  if (munmap(m->addr, m->length) < 0) {
    int err = errno;
    ThrowErrno(env, err, "munmap", nullptr);
    return env.Undefined();
  }
  m->mapped = false;
  return env.Undefined();
}

// mappingAddress(buffer): the mapping's address as bigint, or undefined once unmapped.
Napi::Value Addon::MappingAddress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Mapping* m = UnwrapMapping(env, info[0]);
  if (!m || !m->mapped) return env.Undefined();
  return Napi::BigInt::New(env, reinterpret_cast<uint64_t>(m->addr));
}

}  // namespace kvmg

using KvmGmemAddon = kvmg::Addon;
NODE_API_ADDON(KvmGmemAddon)
