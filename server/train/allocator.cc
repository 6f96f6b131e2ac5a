#include "server/train/allocator.h"

#include <malloc.h>

namespace traind::train {

void TuneAllocator() {
  // glibc caps the mmap threshold at 32 MiB on 64-bit machines.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace traind::train
