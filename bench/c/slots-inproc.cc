// The C side of bench/lab-slots.mjs inside the Node process (a bench-only N-API module, never
// shipped): the same loop as slots.cc, so that the typed API is compared with the bare
// ioctls in the same process. (In the lab the kernel's memslot ioctl itself costs more in a
// Node process than in a small C one; this baseline separates that from the library's cost.)
// run(n) returns { addMs, deleteMs } or throws the failing step and errno.
#include <node_api.h>
#include <string.h>

#include <string>

#include "slots-loop.h"

static napi_value Run(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg, out, v;
  napi_get_cb_info(env, info, &argc, &arg, nullptr, nullptr);
  int64_t n = 0;
  if (argc < 1 || napi_get_value_int64(env, arg, &n) != napi_ok || n <= 0) {
    napi_throw_type_error(env, nullptr, "run(n): n must be a positive number");
    return nullptr;
  }
  slots::Result r = slots::run(static_cast<long>(n));
  if (r.failed) {
    std::string msg = std::string("slots: ") + r.failed + ": " + strerror(errno);
    napi_throw_error(env, nullptr, msg.c_str());
    return nullptr;
  }
  napi_create_object(env, &out);
  napi_create_double(env, r.addMs, &v);
  napi_set_named_property(env, out, "addMs", v);
  napi_create_double(env, r.deleteMs, &v);
  napi_set_named_property(env, out, "deleteMs", v);
  return out;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "run", NAPI_AUTO_LENGTH, Run, nullptr, &fn);
  napi_set_named_property(env, exports, "run", fn);
  return exports;
}
