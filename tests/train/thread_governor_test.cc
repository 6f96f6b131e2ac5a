#include "server/train/thread_governor.h"

#include <functional>
#include <random>

#include <gtest/gtest.h>

namespace traind::train {
namespace {

// A simulated machine: seconds per image of a step at `threads` threads,
// step `step`. Runs `steps` steps of 32 images under the governor and
// records the count each ran with.
std::vector<int> Simulate(ThreadGovernor& governor, int steps,
                          const std::function<double(int threads, int step)>& cost) {
  std::vector<int> used;
  for (int s = 0; s < steps; ++s) {
    const int threads = governor.threads();
    used.push_back(threads);
    governor.Record(32 * cost(threads, s), 32);
  }
  return used;
}

int StepsAt(const std::vector<int>& used, int threads, int from = 0, int to = -1) {
  int n = 0;
  for (int s = from; s < (to < 0 ? static_cast<int>(used.size()) : to); ++s)
    n += used[s] == threads;
  return n;
}

ThreadGovernor::Options TwoCores() {
  ThreadGovernor::Options options;
  options.max_threads = 2;
  return options;
}

// Alone, two threads: 1 ms an image; one thread: 1.8 ms.
double Quiet(int threads) { return threads == 2 ? 1e-3 : 1.8e-3; }
// Beside a bursty neighbour: two threads stall on every region (3 ms), one
// thread keeps most of its speed (1.9 ms).
double Contended(int threads) { return threads == 2 ? 3e-3 : 1.9e-3; }

TEST(ThreadGovernorTest, QuietMachineKeepsEveryThreadAndTriesRarely) {
  ThreadGovernor governor(TwoCores());
  const auto used = Simulate(governor, 4000, [](int t, int) { return Quiet(t); });
  EXPECT_EQ(governor.threads(), 2);
  EXPECT_EQ(governor.switches(), 0);
  EXPECT_TRUE(governor.TakeChange().empty());
  // Each try is a settle step and 4 timed ones; they back off to one in
  // 1024 steps: at most 1 % of the steps ran slower.
  EXPECT_LE(StepsAt(used, 1), 4000 * 0.01) << governor.tries() << " tries";
  EXPECT_GE(governor.tries(), 4);  // it does keep looking
  // A five-epoch Caltech-101 job at batch 32 is about 1,350 steps: three
  // tries.
  EXPECT_LE(StepsAt(used, 1, 0, 1350), 3 * 5);
}

TEST(ThreadGovernorTest, NeighbourArrivesThenLeaves) {
  ThreadGovernor governor(TwoCores());
  // Quiet until step 300, a neighbour until step 1500, quiet again.
  auto cost = [](int t, int s) { return s >= 300 && s < 1500 ? Contended(t) : Quiet(t); };
  const auto used = Simulate(governor, 2200, cost);
  // It gives up a thread within one window and one try of the neighbour's
  // arrival, and says why.
  int dropped = -1;
  for (int s = 300; s < 1500 && dropped < 0; ++s) {
    if (StepsAt(used, 1, s, s + 20) == 20) dropped = s;
  }
  ASSERT_GE(dropped, 300);
  EXPECT_LE(dropped, 300 + 2 * 8 + 2) << "steps before it reacted";
  // While the neighbour stays, it mostly runs on one thread (tries upward
  // back off to one in 256 steps).
  EXPECT_GT(StepsAt(used, 1, 400, 1500), 1100 * 0.93);
  // After the neighbour left it takes the thread back within one maximal
  // interval, a window and a try; then only tries downwards, which back
  // off again, leave two threads.
  const int back = 1500 + 256 + 8 + 5;
  EXPECT_EQ(used[back], 2);
  EXPECT_GT(StepsAt(used, 2, back, 2200), (2200 - back) - 3 * 5);
  EXPECT_EQ(governor.threads(), 2);
  EXPECT_EQ(governor.switches(), 2);
}

TEST(ThreadGovernorTest, ChangeNamesBothCountsAndTheirSpeeds) {
  ThreadGovernor governor(TwoCores());
  std::string change;
  for (int s = 0; s < 100 && change.empty(); ++s) {
    governor.Record(32 * Contended(governor.threads()), 32);
    change = governor.TakeChange();
  }
  // 1 / 1.9 ms = 526.3 img/s; 1 / 3 ms = 333.3.
  EXPECT_EQ(
      change,
      "intra-op threads 2 -> 1: 526.3 img/s against 333.3 at 2 (other work shares the cores)");
  EXPECT_TRUE(governor.TakeChange().empty());
}

TEST(ThreadGovernorTest, StartingBesideANeighbourStillFindsTheFasterCount) {
  ThreadGovernor governor(TwoCores());
  const auto used = Simulate(governor, 200, [](int t, int) { return Contended(t); });
  // The first window (8 steps after a settle step) ends in a try, which
  // it keeps; then only tries upwards (5 steps each, backing off).
  EXPECT_GE(StepsAt(used, 1, 14, 200), 186 - 3 * 5);
  EXPECT_EQ(governor.switches(), 1);
}

TEST(ThreadGovernorTest, ASlowdownThatFewerThreadsDoNotCureBacksOff) {
  ThreadGovernor governor(TwoCores());
  // From step 300 the whole machine is twice as slow (a slower clock, a
  // memory-bound neighbour): one thread does not help.
  auto cost = [](int t, int s) { return Quiet(t) * (s >= 300 ? 2 : 1); };
  const auto used = Simulate(governor, 3000, cost);
  EXPECT_EQ(governor.threads(), 2);
  EXPECT_EQ(governor.switches(), 0);
  EXPECT_LT(StepsAt(used, 1, 300), 2700 * 0.03);
}

TEST(ThreadGovernorTest, NoisyStepsDoNotFlap) {
  ThreadGovernor governor(TwoCores());
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> noise(0.9, 1.1);
  const auto used = Simulate(governor, 3000, [&](int t, int) { return Quiet(t) * noise(rng); });
  EXPECT_EQ(governor.switches(), 0);
  EXPECT_EQ(governor.threads(), 2);
}

TEST(ThreadGovernorTest, MoreCoresStepDownOneAtATime) {
  ThreadGovernor::Options options;
  options.max_threads = 4;
  ThreadGovernor governor(options);
  // A neighbour on one of four cores: 3 threads are best.
  auto cost = [](int t, int) { return t == 4 ? 2e-3 : t == 3 ? 1e-3 : 1.4e-3 * 3 / t; };
  const auto used = Simulate(governor, 1000, cost);
  EXPECT_EQ(governor.threads(), 3);
  EXPECT_GT(StepsAt(used, 3, 200), 800 * 0.9);
  EXPECT_EQ(StepsAt(used, 1), 0);
}

TEST(ThreadGovernorTest, OneThreadOrNoImagesChangeNothing) {
  ThreadGovernor::Options options;
  options.max_threads = 1;
  ThreadGovernor one(options);
  for (int s = 0; s < 100; ++s) EXPECT_FALSE(one.Record(1.0, 32));
  EXPECT_EQ(one.threads(), 1);
  ThreadGovernor two(TwoCores());
  for (int s = 0; s < 100; ++s) {
    EXPECT_FALSE(two.Record(1.0, 0));
    EXPECT_FALSE(two.Record(0.0, 32));
  }
  EXPECT_EQ(two.tries(), 0);
}

}  // namespace
}  // namespace traind::train
