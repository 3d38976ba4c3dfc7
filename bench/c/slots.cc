// The C side of bench/lab-slots.mjs, as its own process: the loop of slots-loop.h.
// Prints { "n": N, "addMs": ..., "deleteMs": ... }.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "slots-loop.h"

int main(int argc, char** argv) {
  long n = argc > 1 ? atol(argv[1]) : 32764;
  slots::Result r = slots::run(n);
  if (r.failed) {
    fprintf(stderr, "slots: %s: %s\n", r.failed, strerror(errno));
    return 1;
  }
  printf("{\"n\": %ld, \"addMs\": %.1f, \"deleteMs\": %.1f}\n", n, r.addMs, r.deleteMs);
  return 0;
}
