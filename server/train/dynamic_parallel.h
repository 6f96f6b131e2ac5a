// A parallel loop that hands out its work in small chunks as threads come
// free, for traind's own kernels.
//
// at::parallel_for divides a range among the threads up front, so a region
// ends when its slowest thread ends its share: where another process
// displaces one of the two intra-op threads for a few milliseconds, the
// other finishes its half and waits (README, "Beside other work"). Here
// each thread takes the next chunk from a shared cursor, so the thread
// that runs takes the displaced one's chunks too, and the region waits
// only for a chunk in hand (and, as any OpenMP region, for the displaced
// thread to reach its end).
//
// Each chunk is the same range whichever thread runs it, so a kernel whose
// chunks write disjoint outputs (element-wise passes, fixed blocks of a
// sum) gives the same bits as at::parallel_for, at any thread count.
//
// Thread-safety: as at::parallel_for; `f` runs on several threads at once.
#ifndef TRAIND_SERVER_TRAIN_DYNAMIC_PARALLEL_H_
#define TRAIND_SERVER_TRAIN_DYNAMIC_PARALLEL_H_

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace traind::train {

// Calls f(chunk_begin, chunk_end) for the chunks [begin + k * chunk,
// begin + (k + 1) * chunk) of [begin, end) (the last one shorter), each
// once, on this thread's intra-op threads, each thread taking the next
// chunk not yet taken. Serially, in order, on one thread or inside a
// parallel region. The first exception thrown by `f` is rethrown here (as
// at::parallel_for; chunks not yet taken are then skipped).
template <typename F>
void DynamicParallelFor(int64_t begin, int64_t end, int64_t chunk, const F& f) {
  if (end <= begin) return;
  chunk = std::max<int64_t>(chunk, 1);
  const int64_t chunks = (end - begin + chunk - 1) / chunk;
  const int64_t threads =
      at::in_parallel_region() ? 1 : std::min<int64_t>(at::get_num_threads(), chunks);
  auto run = [&](int64_t k) { f(begin + k * chunk, std::min(end, begin + (k + 1) * chunk)); };
  if (threads <= 1) {
    for (int64_t k = 0; k < chunks; ++k) run(k);
    return;
  }
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  // One index per thread: each then takes chunks until none is left.
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    try {
      for (int64_t k = next.fetch_add(1, std::memory_order_relaxed);
           k < chunks && !failed.load(std::memory_order_relaxed);
           k = next.fetch_add(1, std::memory_order_relaxed)) {
        run(k);
      }
    } catch (...) {
      failed.store(true, std::memory_order_relaxed);
      throw;
    }
  });
}

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_DYNAMIC_PARALLEL_H_
