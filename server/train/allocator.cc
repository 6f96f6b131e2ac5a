#include "server/train/allocator.h"

#include <malloc.h>

namespace traind::train {

void TuneAllocator() {
  // Large activation buffers must stay mapped between steps. glibc hands a
  // freed block back to the OS in three ways, and each one is closed here:
  // - blocks above the mmap threshold are mmapped and munmapped on every
  //   allocation; the threshold is capped at 32 MiB on 64-bit machines, and a
  //   fp32 stem activation at batch 32 and 128 px is exactly 32 MiB, so the
  //   cap alone does not help: mmap is turned off instead (M_MMAP_MAX 0);
  // - the top of the heap is trimmed past the trim threshold (raised);
  // - a thread other than the main one (traind trains on worker threads) gets
  //   its own arena of 64 MiB heaps, and a heap that empties is unmapped
  //   whatever the thresholds say: one arena (M_ARENA_MAX 1) keeps every
  //   thread on the main heap.
  // Measured with bench/engine_bench (steps on a worker thread, fp32, batch
  // 32, 128 px): 7x fewer page faults, 4-16 % more images/s on this machine,
  // more where page faults cost more (virtual machines).
  mallopt(M_ARENA_MAX, 1);
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace traind::train
