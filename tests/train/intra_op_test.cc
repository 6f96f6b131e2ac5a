#include "server/train/intra_op.h"

#include <gtest/gtest.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>

namespace traind::train {
namespace {

// How many distinct threads a parallel_for over many small chunks ran on,
// from a fresh thread that first calls `setup`.
template <typename Setup>
size_t ThreadsUsedOnFreshThread(Setup setup) {
  size_t used = 0;
  std::thread t([&] {
    setup();
    std::mutex mu;
    std::set<int> ids;
    std::atomic<int64_t> sink{0};
    at::parallel_for(0, 1 << 16, 1, [&](int64_t begin, int64_t end) {
      int64_t s = 0;
      for (int64_t i = begin; i < end; ++i) s += i % 7;
      sink += s;
      std::lock_guard<std::mutex> lock(mu);
      ids.insert(at::get_thread_num());
    });
    used = ids.size();
  });
  t.join();
  return used;
}

// A job thread's count is its own: a thread started later (an RPC handler's)
// still runs serially, so it starts no OpenMP pool of its own.
TEST(IntraOp, OnlyThreadsThatAskRunInParallel) {
  SerialIntraOpByDefault();
  EXPECT_EQ(ThreadsUsedOnFreshThread([] {}), 1u);
  EXPECT_EQ(ThreadsUsedOnFreshThread([] { UseIntraOpThreads(2); }), 2u);
  EXPECT_EQ(ThreadsUsedOnFreshThread([] {}), 1u);  // the default did not change
  EXPECT_EQ(ThreadsUsedOnFreshThread([] { UseIntraOpThreads(0); }), 1u);  // at least one
}

}  // namespace
}  // namespace traind::train
