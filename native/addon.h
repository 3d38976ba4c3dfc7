// kvm-gmem native addon: shared declarations.
//
// The addon is deliberately thin: each exported function checks the JS argument types, makes
// exactly one system call and returns its result, or throws the KvmError class that the
// TypeScript layer registered (errno, code, syscall, request). Policy, validation and
// bookkeeping live in TypeScript, where the simulator shares them.
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace kvmg {

struct RunState;

// What an fd this environment opened is: calls that would be dangerous on another kind of
// file (KVM_RUN, whose kick writes into the vCPU's kvm_run) check it.
enum class Kind : uint8_t { None = 0, System, Vm, Vcpu, Gmem, Memfd, File };

// A mapping made by mmap(), until munmap() (or the environment's end). Its ArrayBuffer is
// made on first request and held until munmap, which detaches it.
struct Mapping {
  void* addr;
  size_t length;
  size_t offset;  // file offset of the first byte
  int fd;  // -1 for anonymous memory
  int prot;
  int flags;
  Kind kind;         // of fd when mapped (Kind::None for anonymous memory)
  size_t accessible;  // bytes from the start that can be touched without a fault: buffers cover no more
  napi_ref buffer = nullptr;  // the whole-mapping buffer (mappings up to 4 GiB)
  std::vector<napi_ref> windows;  // buffers over parts of it (any size), detached by munmap
  size_t compactAt = 64;          // windows.size() at which collected windows are dropped
  int busy = 0;  // KVM_RUN threads using this (a vCPU's kvm_run area): munmap is refused
  uint64_t dev = 0, ino = 0;  // the file mapped: fd numbers are reused once closed, files are not
};

// What the environment keeps of each of its fds besides its kind.
struct FdInfo {
  uint64_t dev = 0, ino = 0;  // identity: the environment's end closes only the file it opened
  uint64_t gmemFlags = 0;     // GUEST_MEMFD_FLAG_* of a guest_memfd
};

// What one Node environment (main thread or worker) has open through the addon. The env
// cleanup hook closes and unmaps whatever is still here when the environment ends, so a
// worker that exits does not leak into the process. Shared with each Mapping so that a
// finalizer running after the addon instance is gone never touches freed memory.
//
// The environment's fds live in a range of numbers of its own, high above the ones the
// process hands out (open() returns the lowest free number): an fd closed behind the addon's
// back is not handed to another file that the addon would then act on, and one environment's
// numbers are not another's.
// Mapping::fd once its fd was closed.
constexpr int kClosedFd = -2;

struct Registry {
  // kinds[fd] != None for the fds open through the addon: an O(1) check per call, and no
  // allocation per open/close.
  std::vector<Kind> kinds;
  std::unordered_map<int, FdInfo> info;
  int rangeStart = -1, rangeEnd = -1, cursor = -1;  // where this environment's fds go
  // Whether `m` maps the file that `fd` names now (not an earlier file with that number).
  bool Maps(const Mapping& m, int fd) const {
    auto it = info.find(fd);
    return m.fd == fd && it != info.end() && it->second.dev == m.dev && it->second.ino == m.ino;
  }
  Kind KindOf(int fd) const { return fd >= 0 && static_cast<size_t>(fd) < kinds.size() ? kinds[fd] : Kind::None; }
  bool Owns(int fd) const { return KindOf(fd) != Kind::None; }
  void Add(int fd, Kind kind) {
    if (static_cast<size_t>(fd) >= kinds.size()) kinds.resize(fd + 64, Kind::None);
    kinds[fd] = kind;
  }
  bool Remove(int fd) {
    if (!Owns(fd)) return false;
    kinds[fd] = Kind::None;
    info.erase(fd);
    // Its mappings stay (each holds its file) but no longer answer to the number, which the
    // next open may get (all vCPU fds share one anon inode: only this tells them apart).
    for (auto& [addr, m] : mappings)
      if (m.fd == fd) m.fd = kClosedFd;
    return true;
  }
  // By address, while mapped. Held by value (one allocation per mmap); a Mapping's address
  // stays valid until its own erase, whatever else is inserted or erased.
  std::unordered_map<void*, Mapping> mappings;
  std::unordered_set<std::shared_ptr<RunState>> runs;  // KVM_RUN threads in flight
};

// The live mapping at `addr`, or nullptr.
inline Mapping* FindMapping(Registry* registry, uint64_t addr) {
  auto it = registry->mappings.find(reinterpret_cast<void*>(addr));
  return it == registry->mappings.end() ? nullptr : &it->second;
}

// Kicks every vCPU thread of the registry out of KVM_RUN and waits until each has left it.
void StopRuns(Registry* registry);

// The signal that kicks a thread out of a KVM ioctl (a no-op handler without SA_RESTART, so
// the ioctl returns EINTR), and its installation (once per process).
int KickSignal();
void InstallKickHandler();

// Per-environment addon instance (no mutable static state: safe in worker_threads).
class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports);

  std::shared_ptr<Registry> registry = std::make_shared<Registry>();
  Napi::FunctionReference errorClass;  // KvmError, registered by lib/raw/native.ts

  // Throws KvmError(errno) for a failed `syscall` (request: the KVM ioctl name, or null).
  void ThrowErrno(napi_env env, int err, const char* syscall, const char* request, const char* detail = nullptr);
  // Moves an fd the addon created into the environment's range, records it (with its kind,
  // identity and, for a gmem, its flags) and returns it as a JS number.
  napi_value NewFd(napi_env env, int fd, Kind kind, uint64_t gmemFlags = 0);
  // Whether setErrorClass() already ran (the loader's call; later calls are refused).
  bool errorClassSet = false;
  // KVM_GET_VCPU_MMAP_SIZE as last read (a vCPU mapping's touchable bytes); one page until then.
  int vcpuMmapSize = 4096;
  // Bytes of a new mapping of `fd` that can be touched without a fault.
  size_t Accessible(int fd, Kind kind, uint64_t offset, uint64_t length, bool anonymous);

  // vCPU calls (vcpu.cc), as node-addon-api instance methods.
  Napi::Value GetRegs(const Napi::CallbackInfo& info);
  Napi::Value SetRegs(const Napi::CallbackInfo& info);
  Napi::Value GetSregs(const Napi::CallbackInfo& info);
  Napi::Value SetSregs(const Napi::CallbackInfo& info);
  Napi::Value Run(const Napi::CallbackInfo& info);
  Napi::Value Kick(const Napi::CallbackInfo& info);

 private:
  static void Cleanup(Registry* registry);
};

}  // namespace kvmg
