#include "server/train/intra_op.h"

#include <ATen/Parallel.h>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include <algorithm>

namespace traind::train {

void SerialIntraOpByDefault() {
  // ATen's process-wide count, which each thread takes on its first
  // parallel call.
  at::set_num_threads(1);
}

void UseIntraOpThreads(int threads) {
  // at::set_num_threads would change every thread's default too. With
  // OpenMP the count is per thread: take ATen's per-thread initialisation
  // first (it would otherwise overwrite this later), then set this thread's.
  at::internal::lazy_init_num_threads();
#if defined(_OPENMP)
  omp_set_num_threads(std::max(1, threads));
#else
  // Without OpenMP (an engine-only build) the count is the process's.
  at::set_num_threads(std::max(1, threads));
#endif
}

}  // namespace traind::train
