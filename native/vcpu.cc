// vCPU calls: registers, and KVM_RUN on a dedicated thread.
//
// KVM_RUN blocks for as long as the guest runs, so it gets a thread of its own per call
// (never the libuv pool, which a few looping guests would exhaust) and reports back through a
// ThreadSafeFunction that settles a Promise. To stop a running vCPU, kick() sets the run
// area's immediate_exit and signals the thread (a no-op handler, installed without
// SA_RESTART): KVM_RUN then returns EINTR, whether the signal arrives before or during it,
// and the vCPU can run again once immediate_exit is cleared.
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <mutex>
#include <thread>

#include "addon.h"
#include "args.h"
#include "kvm_uapi.h"

namespace kvmg {

struct RunState {
  int fd;
  volatile uint8_t* run;  // the vCPU's kvm_run mapping
  Mapping* area;          // ... whose munmap is refused while this run lasts
  std::mutex mu;
  bool running = true;  // the thread has not yet returned from KVM_RUN
  pthread_t thread{};
  int err = 0;
  Napi::ThreadSafeFunction tsfn;
  Napi::Promise::Deferred deferred;
  explicit RunState(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

namespace {

constexpr napi_type_tag kRunTag = {0x6b766d2d676d656dULL, 0x72756e6e696e6721ULL};

void NoopHandler(int) {}

}  // namespace

int KickSignal() { return SIGRTMIN + 5; }

// Installs the kick signal's handler once per process (signal dispositions are per process).
void InstallKickHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = NoopHandler;  // no SA_RESTART: the ioctl must return EINTR
    sigemptyset(&sa.sa_mask);
    sigaction(KickSignal(), &sa, nullptr);
  });
}

namespace {

void KickLocked(RunState* s) {
  s->run[kRunImmediateExit] = 1;
  if (s->running) pthread_kill(s->thread, KickSignal());
}

// Reads a typed array argument of exactly `size` bytes.
bool BytesArg(const Napi::CallbackInfo& info, size_t i, const char* name, size_t size, void** data) {
  Napi::Value v = info[i];
  if (!v.IsTypedArray()) {
    Napi::TypeError::New(info.Env(), std::string(name) + " must be a typed array").ThrowAsJavaScriptException();
    return false;
  }
  // napi_get_typedarray_info gives the data pointer for any backing store, SharedArrayBuffer
  // and detached buffers included (the ArrayBuffer view of a shared one has no data).
  napi_typedarray_type type;
  size_t length = 0;
  void* p = nullptr;
  napi_get_typedarray_info(info.Env(), v, &type, &length, &p, nullptr, nullptr);
  size_t bytes = length * (type == napi_int8_array || type == napi_uint8_array || type == napi_uint8_clamped_array ? 1
                           : type == napi_int16_array || type == napi_uint16_array                               ? 2
                           : type == napi_int32_array || type == napi_uint32_array || type == napi_float32_array ? 4
                                                                                                                 : 8);
  if (bytes != size || p == nullptr) {
    Napi::RangeError::New(info.Env(), std::string(name) + " must be " + std::to_string(size) + " bytes")
        .ThrowAsJavaScriptException();
    return false;
  }
  *data = p;
  return true;
}

template <typename T>
Napi::Value GetStruct(Addon* addon, const Napi::CallbackInfo& info, unsigned long request, const char* name) {
  Napi::Env env = info.Env();
  Args a(info, addon);
  int fd = a.Fd(0, "vcpuFd");
  if (!a.Done()) return env.Undefined();
  T value;
  if (ioctl(fd, request, &value) < 0) {
    int err = errno;
    addon->ThrowErrno(env, err, "ioctl", name);
    return env.Undefined();
  }
  Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, sizeof(T));
  memcpy(buf.Data(), &value, sizeof(T));
  return Napi::Uint8Array::New(env, sizeof(T), buf, 0);
}

template <typename T>
Napi::Value SetStruct(Addon* addon, const Napi::CallbackInfo& info, unsigned long request, const char* name) {
  Napi::Env env = info.Env();
  Args a(info, addon);
  int fd = a.Fd(0, "vcpuFd");
  void* data = nullptr;
  if (!a.Done() || !BytesArg(info, 1, name, sizeof(T), &data)) return env.Undefined();
  T value;
  memcpy(&value, data, sizeof(T));
  if (ioctl(fd, request, &value) < 0) {
    int err = errno;
    addon->ThrowErrno(env, err, "ioctl", name);
  }
  return env.Undefined();
}

}  // namespace

// getRegs(vcpuFd) / getSregs(vcpuFd): the struct's bytes (struct kvm_regs / kvm_sregs).
Napi::Value Addon::GetRegs(const Napi::CallbackInfo& info) { return GetStruct<kvm_regs>(this, info, KVM_GET_REGS, "KVM_GET_REGS"); }
Napi::Value Addon::SetRegs(const Napi::CallbackInfo& info) { return SetStruct<kvm_regs>(this, info, KVM_SET_REGS, "KVM_SET_REGS"); }
Napi::Value Addon::GetSregs(const Napi::CallbackInfo& info) { return GetStruct<kvm_sregs>(this, info, KVM_GET_SREGS, "KVM_GET_SREGS"); }
Napi::Value Addon::SetSregs(const Napi::CallbackInfo& info) { return SetStruct<kvm_sregs>(this, info, KVM_SET_SREGS, "KVM_SET_SREGS"); }

// run(vcpuFd, runArea): { done: Promise<errno (0 on success)>, token } — KVM_RUN on a new
// thread. runArea is the address of the vCPU's kvm_run mapping (mmap of the vCPU fd). The exit is then read
// from runArea; kick(token) makes the call return EINTR.
Napi::Value Addon::Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Args a(info, this);
  int fd = a.Fd(0, "vcpuFd");
  uint64_t addr = a.Uint64(1, "runArea");
  if (!a.Done()) return env.Undefined();
  if (registry->KindOf(fd) != Kind::Vcpu) {
    ThrowErrno(env, EINVAL, "ioctl", "KVM_RUN", "not a vCPU fd");
    return env.Undefined();
  }
  Mapping* m = FindMapping(registry.get(), addr);
  // kick() writes immediate_exit into the area: it must be this vCPU's own kvm_run, mapped
  // shared and writable (any other mapping could be read-only, or someone else's memory).
  if (!m || !registry->Maps(*m, fd) || !(m->prot & PROT_WRITE) || !(m->flags & MAP_SHARED) || m->offset != 0 || m->accessible < 4096) {
    Napi::TypeError::New(env, "runArea must be this vCPU's kvm_run, mapped shared and writable").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  InstallKickHandler();
  auto state = std::make_shared<RunState>(env);
  state->fd = fd;
  state->run = static_cast<uint8_t*>(m->addr);
  state->area = m;
  m->busy++;
  state->tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function(), "kvm-gmem KVM_RUN", 0, 1);
  std::shared_ptr<Registry> reg = registry;
  reg->runs.insert(state);
  try {
    std::thread t([state] {
      sigset_t set;
      sigemptyset(&set);
      sigaddset(&set, KickSignal());
      pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
      int r = ioctl(state->fd, KVM_RUN, 0);
      int err = r < 0 ? errno : 0;
      {
        std::lock_guard<std::mutex> lock(state->mu);
        state->err = err;
        state->running = false;
      }
      auto settle = [state](Napi::Env env, Napi::Function) {
        state->area->busy--;
        state->deferred.Resolve(Napi::Number::New(env, state->err));
      };
      state->tsfn.BlockingCall(settle);
      state->tsfn.Release();
    });
    {
      std::lock_guard<std::mutex> lock(state->mu);
      state->thread = t.native_handle();
    }
    t.detach();
  } catch (const std::exception& e) {
    reg->runs.erase(state);
    m->busy--;
    state->tsfn.Release();
    ThrowErrno(env, EAGAIN, "pthread_create", "KVM_RUN");
    return env.Undefined();
  }
  // Forget the run once it settled (the Promise keeps the outcome).
  Napi::Object out = Napi::Object::New(env);
  Napi::Promise promise = state->deferred.Promise();
  auto* keep = new std::shared_ptr<RunState>(state);
  Napi::External<std::shared_ptr<RunState>> token = Napi::External<std::shared_ptr<RunState>>::New(
      env, keep, [reg](Napi::Env, std::shared_ptr<RunState>* p) {
        reg->runs.erase(*p);
        delete p;
      });
  token.TypeTag(&kRunTag);
  out.Set("done", promise);
  out.Set("token", token);
  return out;
}

// kick(token): stop a run (idempotent; a no-op once it returned).
Napi::Value Addon::Kick(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Value v = info[0];
  if (!v.IsExternal() || !v.As<Napi::Object>().CheckTypeTag(&kRunTag)) {
    Napi::TypeError::New(env, "expected a run token").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  RunState* s = v.As<Napi::External<std::shared_ptr<RunState>>>().Data()->get();
  std::lock_guard<std::mutex> lock(s->mu);
  if (s->running) KickLocked(s);
  return env.Undefined();
}

void StopRuns(Registry* registry) {
  for (const auto& s : registry->runs) {
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->running) KickLocked(s.get());
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  for (const auto& s : registry->runs) {
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(s->mu);
        if (!s->running) break;
        KickLocked(s.get());
      }
      if (std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
}

}  // namespace kvmg
