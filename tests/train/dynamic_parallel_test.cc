#include "server/train/dynamic_parallel.h"

#include <gtest/gtest.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "server/train/intra_op.h"

namespace traind::train {
namespace {

using Chunks = std::vector<std::pair<int64_t, int64_t>>;

// The chunks DynamicParallelFor ran, sorted.
Chunks ChunksRun(int64_t begin, int64_t end, int64_t chunk) {
  std::mutex mu;
  Chunks out;
  DynamicParallelFor(begin, end, chunk, [&](int64_t b, int64_t e) {
    std::lock_guard<std::mutex> lock(mu);
    out.emplace_back(b, e);
  });
  std::sort(out.begin(), out.end());
  return out;
}

TEST(DynamicParallelFor, RunsEachChunkOnceAtAnyThreadCount) {
  const Chunks expected = {{5, 12}, {12, 19}, {19, 26}, {26, 30}};
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE(threads);
    UseIntraOpThreads(threads);
    EXPECT_EQ(ChunksRun(5, 30, 7), expected);
    EXPECT_EQ(ChunksRun(0, 3, 10), (Chunks{{0, 3}}));
    EXPECT_TRUE(ChunksRun(4, 4, 2).empty());
    EXPECT_EQ(ChunksRun(0, 2, 0), (Chunks{{0, 1}, {1, 2}}));  // a chunk is at least 1
  }
}

// Inside a parallel region it runs serially, in order, on the calling thread.
TEST(DynamicParallelFor, RunsSeriallyInsideAParallelRegion) {
  UseIntraOpThreads(2);
  std::vector<Chunks> seen(2);
  std::vector<bool> same_thread(2, true);
  at::parallel_for(0, 2, 1, [&](int64_t i, int64_t) {
    const auto id = std::this_thread::get_id();
    DynamicParallelFor(0, 10, 4, [&](int64_t b, int64_t e) {
      seen[i].emplace_back(b, e);
      if (std::this_thread::get_id() != id) same_thread[i] = false;
    });
  });
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(seen[i], (Chunks{{0, 4}, {4, 8}, {8, 10}}));
    EXPECT_TRUE(same_thread[i]);
  }
}

// A thread held up in one chunk (as by another process taking its core)
// holds up no other: the other thread takes every chunk left. Divided up
// front as at::parallel_for divides it, the held thread's later chunks
// would wait for it, and the wait below would run out.
TEST(DynamicParallelFor, AHeldUpThreadsChunksGoToTheOther) {
  UseIntraOpThreads(2);
  constexpr int64_t kChunks = 64;
  std::atomic<int64_t> done{0};
  std::atomic<int64_t> done_while_held{-1};
  std::mutex mu;
  std::vector<std::thread::id> ran_by(kChunks);
  DynamicParallelFor(0, kChunks, 1, [&](int64_t b, int64_t) {
    if (b == 0) {
      // Waits for the others to be done; the deadline only ends a failing
      // run instead of hanging it.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      while (done.load() < kChunks - 1 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::yield();
      }
      done_while_held = done.load();
    }
    std::lock_guard<std::mutex> lock(mu);
    ran_by[b] = std::this_thread::get_id();
    ++done;
  });
  EXPECT_EQ(done_while_held.load(), kChunks - 1);
  EXPECT_EQ(done.load(), kChunks);
  // Chunk 0's thread ran no other chunk.
  EXPECT_EQ(std::count(ran_by.begin(), ran_by.end(), ran_by[0]), 1);
}

TEST(DynamicParallelFor, RethrowsWhatAChunkThrows) {
  for (int threads : {1, 2}) {
    SCOPED_TRACE(threads);
    UseIntraOpThreads(threads);
    EXPECT_THROW(DynamicParallelFor(0, 100, 1,
                                    [](int64_t b, int64_t) {
                                      if (b == 37) throw std::runtime_error("chunk 37");
                                    }),
                 std::runtime_error);
  }
}

}  // namespace
}  // namespace traind::train
