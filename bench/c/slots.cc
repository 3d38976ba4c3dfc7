// The C side of bench/lab-slots.mjs, as its own process: the loop of slots-loop.h, driven
// over stdin so that the bench interleaves it with the typed API. Commands, one per line:
//   add FROM TO | delete FROM TO   -> prints the milliseconds the step took
// The VM (N slots' worth of gmem) is made at start and closed at EOF.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "slots-loop.h"

int main(int argc, char** argv) {
  long n = argc > 1 ? atol(argv[1]) : 32764;
  slots::Loop loop(n);
  char op[16];
  long from, to;
  while (!loop.failed() && scanf("%15s %ld %ld", op, &from, &to) == 3) {
    double ms = loop.Step(from, to, strcmp(op, "add") == 0);
    if (loop.failed()) break;
    printf("%.3f\n", ms);
    fflush(stdout);
  }
  if (loop.failed()) {
    fprintf(stderr, "slots: %s: %s\n", loop.failed(), strerror(errno));
    return 1;
  }
  return 0;
}
