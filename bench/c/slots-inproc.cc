// The C side of bench/lab-slots.mjs inside the Node process (a bench-only N-API module, never
// shipped): the loop of slots-loop.h, so that the typed API is compared with the bare ioctls
// in the same process too.
//   open(n) -> handle; step(handle, from, to, add) -> ms; close(handle)
// A failed step throws the step's name and errno.
#include <node_api.h>
#include <string.h>

#include <string>

#include "slots-loop.h"

static slots::Loop* LoopOf(napi_env env, napi_value v) {
  void* p = nullptr;
  napi_get_value_external(env, v, &p);
  return static_cast<slots::Loop*>(p);
}

static napi_value Fail(napi_env env, const char* step) {
  std::string msg = std::string("slots: ") + step + ": " + strerror(errno);
  napi_throw_error(env, nullptr, msg.c_str());
  return nullptr;
}

static napi_value Open(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg, out;
  napi_get_cb_info(env, info, &argc, &arg, nullptr, nullptr);
  int64_t n = 0;
  if (argc < 1 || napi_get_value_int64(env, arg, &n) != napi_ok || n <= 0) {
    napi_throw_type_error(env, nullptr, "open(n): n must be a positive number");
    return nullptr;
  }
  auto* loop = new slots::Loop(static_cast<long>(n));
  if (loop->failed()) {
    const char* step = loop->failed();
    delete loop;
    return Fail(env, step);
  }
  napi_create_external(env, loop, nullptr, nullptr, &out);
  return out;
}

static napi_value Step(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value a[4], out;
  napi_get_cb_info(env, info, &argc, a, nullptr, nullptr);
  slots::Loop* loop = LoopOf(env, a[0]);
  int64_t from = 0, to = 0;
  bool add = false;
  napi_get_value_int64(env, a[1], &from);
  napi_get_value_int64(env, a[2], &to);
  napi_get_value_bool(env, a[3], &add);
  double ms = loop->Step(static_cast<long>(from), static_cast<long>(to), add);
  if (loop->failed()) return Fail(env, loop->failed());
  napi_create_double(env, ms, &out);
  return out;
}

static napi_value Close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg;
  napi_get_cb_info(env, info, &argc, &arg, nullptr, nullptr);
  delete LoopOf(env, arg);
  return nullptr;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "open", NAPI_AUTO_LENGTH, Open, nullptr, &fn);
  napi_set_named_property(env, exports, "open", fn);
  napi_create_function(env, "step", NAPI_AUTO_LENGTH, Step, nullptr, &fn);
  napi_set_named_property(env, exports, "step", fn);
  napi_create_function(env, "close", NAPI_AUTO_LENGTH, Close, nullptr, &fn);
  napi_set_named_property(env, exports, "close", fn);
  return exports;
}
