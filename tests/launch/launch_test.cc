// The launch room without a cluster: the launcher table, what the
// distributed engine refuses at submit, and local ranks' exits mapped to
// group states. No LibTorch is linked here (link_check keeps the room so).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "server/launch/attempts.h"
#include "server/launch/distributed_engine.h"
#include "server/launch/launchers.h"
#include "tests/test_util.h"

namespace traind::launch {
namespace {

namespace fs = std::filesystem;

TEST(LaunchersTest, EveryLauncherOfTheApiHasOneEntry) {
  const auto* d = trainer::v1::Launcher_descriptor();
  for (int i = 0; i < d->value_count(); ++i) {
    const auto launcher = static_cast<trainer::v1::Launcher>(d->value(i)->number());
    const LauncherKind* kind = FindLauncher(launcher);
    if (launcher == trainer::v1::LAUNCHER_UNSPECIFIED) {
      EXPECT_EQ(kind, nullptr);
      continue;
    }
    ASSERT_NE(kind, nullptr) << d->value(i)->name();
    EXPECT_EQ(kind->launcher, launcher);
    EXPECT_NE(kind->start, nullptr);
    EXPECT_NE(kind->check, nullptr);
  }
  // Only Slurm's ranks outlive the daemon; only local ranks dial loopback.
  EXPECT_EQ(FindLauncher(trainer::v1::LOCAL_PROCESSES)->keeper, nullptr);
  EXPECT_NE(FindLauncher(trainer::v1::SLURM)->keeper, nullptr);
  EXPECT_EQ(FindLauncher(trainer::v1::KUBERNETES)->keeper, nullptr);
  EXPECT_FALSE(FindLauncher(trainer::v1::LOCAL_PROCESSES)->remote);
  EXPECT_TRUE(FindLauncher(trainer::v1::SLURM)->remote);
}

// An in-process engine that is never asked to train here.
class NoEngine final : public jobs::Engine {
 public:
  absl::Status Train(const jobs::RunRequest&, train::ProgressSink*,
                     const train::CancelToken&) override {
    return absl::UnimplementedError("no");
  }
  absl::StatusOr<std::vector<train::TrialSpec>> PlanSweep(const train::SweepPlan&) override {
    return absl::UnimplementedError("no");
  }
  absl::StatusOr<train::SweepResult> Sweep(const jobs::SweepRequest&, train::SweepSink*,
                                           const train::CancelToken&) override {
    return absl::UnimplementedError("no");
  }
  absl::Status CheckWeights(const std::string&) override { return absl::OkStatus(); }
  absl::Status CheckDataset(const train::DataConfig&) override { return absl::OkStatus(); }
  absl::StatusOr<std::shared_ptr<const jobs::Model>> LoadModel(const std::string&, int,
                                                               int) override {
    return absl::UnimplementedError("no");
  }
};

TEST(DistributedEngineTest, RefusesAtSubmitWhatItCannotRunNamingTheField) {
  AttemptRegistry attempts;
  DistributedEngine::Options options;
  options.backends = {"gloo"};
  DistributedEngine engine(std::make_shared<NoEngine>(), &attempts, options);
  trainer::v1::Distributed dist;
  dist.set_world_size(1);
  EXPECT_TRUE(engine.CheckDistributed(dist).ok());  // in the daemon: nothing to check
  dist.set_world_size(2);
  dist.set_launcher(trainer::v1::LOCAL_PROCESSES);
  dist.set_backend(trainer::v1::gloo);
  EXPECT_TRUE(engine.CheckDistributed(dist).ok());
  dist.set_backend(trainer::v1::nccl);
  EXPECT_EQ(engine.CheckDistributed(dist).message().rfind("distributed.backend: nccl", 0), 0u)
      << engine.CheckDistributed(dist);
  dist.set_backend(trainer::v1::gloo);
  dist.set_launcher(trainer::v1::KUBERNETES);  // no API configured
  EXPECT_EQ(engine.CheckDistributed(dist).message().rfind("distributed.launcher: KUBERNETES", 0),
            0u);
  dist.set_launcher(static_cast<trainer::v1::Launcher>(77));
  EXPECT_EQ(engine.CheckDistributed(dist).code(), absl::StatusCode::kInvalidArgument);
}

// Polls until the group has ended (each poll reaps the ranks that exited).
GroupState WaitEnded(RankGroup& group) {
  GroupState state = group.Poll();
  while (!state.ended()) {
    usleep(10000);  // the ranks are child processes: nothing to wait on but their exit
    state = group.Poll();
  }
  return state;
}

class LocalRanksTest : public testing::Test {
 protected:
  void SetUp() override { dir_ = testing_util::FreshTestDir("launch_test"); }

  // A `worker` that exits with the status the script computes from $RANK.
  LaunchRequest Request(const std::string& body) {
    const fs::path script = dir_ / "worker.sh";
    std::ofstream(script) << "#!/bin/sh\n" << body << "\n";
    chmod(script.c_str(), 0755);
    LaunchRequest request;
    request.world_size = 3;
    request.worker_binary = script.string();
    request.work_dir = dir_.string();
    request.env = {"PATH=/usr/bin:/bin"};
    return request;
  }

  fs::path dir_;
};

TEST_F(LocalRanksTest, RanksThatEndCleanlyEndTheGroupWithoutTrouble) {
  auto group = StartLocalRanks(Request("exit 0"));
  ASSERT_TRUE(group.ok()) << group.status();
  const GroupState state = WaitEnded(**group);
  EXPECT_EQ(state.trouble, GroupTrouble::kNone);
  EXPECT_EQ(state.reason, "");
  EXPECT_EQ((*group)->scheduler_job(), "");
}

TEST_F(LocalRanksTest, ARankThatFailsIsALostRankNamedByItsRankAndExit) {
  auto group = StartLocalRanks(Request("test \"$RANK\" = 2 && exit 3; exit 0"));
  ASSERT_TRUE(group.ok()) << group.status();
  const GroupState state = WaitEnded(**group);
  EXPECT_EQ(state.trouble, GroupTrouble::kRankLost);
  EXPECT_EQ(state.reason.rfind("rank 2 (pid ", 0), 0u) << state.reason;
  EXPECT_NE(state.reason.find("exited with status 3"), std::string::npos) << state.reason;
}

TEST_F(LocalRanksTest, KilledRanksAreLostBySignal) {
  auto group = StartLocalRanks(Request("exec sleep 600"));
  ASSERT_TRUE(group.ok()) << group.status();
  EXPECT_EQ((*group)->Poll().phase, GroupPhase::kRunning);
  (*group)->Kill();
  const GroupState state = WaitEnded(**group);
  EXPECT_EQ(state.trouble, GroupTrouble::kRankLost);
  EXPECT_NE(state.reason.find("was killed by signal 9"), std::string::npos) << state.reason;
}

}  // namespace
}  // namespace traind::launch
