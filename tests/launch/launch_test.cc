// The launch room without a cluster: the launcher table, what the
// distributed engine refuses at submit, and local ranks' exits, Slurm's and
// Kubernetes' replies (stand-ins) mapped to group states. No LibTorch is linked here (link_check keeps the room so).
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <httplib.h>

#include "absl/strings/match.h"
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

namespace traind::launch {
namespace {

// Slurm's replies mapped to group states, with stand-ins for sbatch,
// scontrol and scancel on PATH: scontrol prints what the test wrote in
// $FAKE_SLURM_STATE, as `scontrol show job -o` would.
class SlurmRanksTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing_util::FreshTestDir("slurm_ranks_test");
    const fs::path bin = dir_ / "bin";
    fs::create_directories(bin);
    Script(bin / "sbatch", "echo \"$@\" > \"$FAKE_SLURM_STATE.sbatch\"; echo 4242");
    Script(bin / "scontrol", "cat \"$FAKE_SLURM_STATE\"");
    Script(bin / "scancel", "touch \"$FAKE_SLURM_STATE.cancelled\"");
    path_ = std::getenv("PATH") ? std::getenv("PATH") : "";
    setenv("PATH", (bin.string() + ":" + path_).c_str(), 1);
    state_ = (dir_ / "state").string();
    Reply("PENDING", "Resources");
  }
  void TearDown() override { setenv("PATH", path_.c_str(), 1); }

  static void Script(const fs::path& path, const std::string& body) {
    std::ofstream(path) << "#!/bin/sh\n" << body << "\n";
    chmod(path.c_str(), 0755);
  }
  void Reply(const std::string& job_state, const std::string& reason) {
    std::ofstream(state_) << "JobId=4242 JobName=x JobState=" << job_state
                          << " Reason=" << reason << " NodeList=node1\n";
  }
  LaunchRequest Request() {
    LaunchRequest request;
    request.job_name = "traind-job-000001-a1";
    request.world_size = 2;
    request.dist.mutable_slurm()->set_nodes(1);
    request.worker_binary = "/usr/bin/traind";
    request.work_dir = (dir_ / "job").string();
    request.env = {"PATH=" + std::string(std::getenv("PATH")), "FAKE_SLURM_STATE=" + state_};
    return request;
  }
  // Polls (Slurm is asked at most once a second) until `done` holds.
  static GroupState PollUntil(RankGroup& group, const std::function<bool(const GroupState&)>& done) {
    GroupState state = group.Poll();
    while (!done(state)) {
      usleep(20000);
      state = group.Poll();
    }
    return state;
  }

  fs::path dir_;
  std::string path_, state_;
};

TEST_F(SlurmRanksTest, QosAndNiceGoToSbatch) {
  LaunchRequest request = Request();
  request.dist.mutable_slurm()->set_qos("high");
  request.dist.mutable_slurm()->set_nice(1000);
  auto group = StartSlurmRanks(request);
  ASSERT_TRUE(group.ok()) << group.status();
  std::ifstream in(state_ + ".sbatch");
  std::string args((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(absl::StrContains(args, " --qos=high --nice=1000 ")) << args;
  auto plain = StartSlurmRanks(Request());
  ASSERT_TRUE(plain.ok());
  std::ifstream again(state_ + ".sbatch");
  args.assign((std::istreambuf_iterator<char>(again)), std::istreambuf_iterator<char>());
  EXPECT_FALSE(absl::StrContains(args, "--qos")) << args;
  EXPECT_FALSE(absl::StrContains(args, "--nice")) << args;
}

TEST_F(SlurmRanksTest, PendingRunningAndCompletedAsPhases) {
  auto group = StartSlurmRanks(Request());
  ASSERT_TRUE(group.ok()) << group.status();
  EXPECT_EQ((*group)->scheduler_job(), "4242");
  GroupState state = (*group)->Poll();
  EXPECT_EQ(state.phase, GroupPhase::kWaiting);
  EXPECT_EQ(state.waiting(), "waiting in Slurm: Resources (Slurm job 4242)");
  EXPECT_EQ(state.note, "Slurm job 4242 is pending (Resources)");
  Reply("RUNNING", "None");
  state = PollUntil(**group, [](const GroupState& s) { return s.phase == GroupPhase::kRunning; });
  EXPECT_EQ(state.waiting(), "");
  EXPECT_EQ(state.note, "Slurm job 4242 runs on node1");
  Reply("COMPLETED", "None");
  state = PollUntil(**group, [](const GroupState& s) { return s.ended(); });
  EXPECT_EQ(state.trouble, GroupTrouble::kNone);
}

TEST_F(SlurmRanksTest, ANodeFailureIsALostAttemptAndAnOutsideCancelACancel) {
  auto group = StartSlurmRanks(Request());
  ASSERT_TRUE(group.ok());
  Reply("NODE_FAIL", "NodeDown");
  GroupState state = PollUntil(**group, [](const GroupState& s) { return s.ended(); });
  EXPECT_EQ(state.trouble, GroupTrouble::kRankLost);
  EXPECT_EQ(state.reason, "Slurm job 4242 ended NODE_FAIL (NodeDown)");

  Reply("PENDING", "Priority");
  auto second = StartSlurmRanks(Request());
  ASSERT_TRUE(second.ok());
  Reply("CANCELLED", "None");
  state = PollUntil(**second, [](const GroupState& s) { return s.ended(); });
  EXPECT_EQ(state.trouble, GroupTrouble::kCancelledOutside);
  EXPECT_EQ(state.reason, "Slurm job 4242 was cancelled outside traind");
}

TEST_F(SlurmRanksTest, OurOwnCancelIsNoTroubleAndAMissingBinaryFailsTheJob) {
  auto group = StartSlurmRanks(Request());
  ASSERT_TRUE(group.ok());
  (*group)->Kill();
  EXPECT_TRUE(fs::exists(state_ + ".cancelled"));
  Reply("CANCELLED", "None");
  GroupState state = PollUntil(**group, [](const GroupState& s) { return s.ended(); });
  EXPECT_EQ(state.trouble, GroupTrouble::kNone);

  auto again = StartSlurmRanks(Request());
  ASSERT_TRUE(again.ok());
  std::ofstream(dir_ / "job" / "slurm-4242.out")
      << "traind: /usr/bin/traind is not on node2: every node needs the traind binary at "
         "that path\n";
  Reply("FAILED", "NonZeroExitCode");
  state = PollUntil(**again, [](const GroupState& s) { return s.ended(); });
  EXPECT_EQ(state.trouble, GroupTrouble::kFailed);
  EXPECT_EQ(state.reason.rfind("/usr/bin/traind is not on node2", 0), 0u) << state.reason;
}

TEST_F(SlurmRanksTest, AKeptAttemptIsTakenUpWhileItsJobRunsAndForgottenAfter) {
  const AttemptKeeper& keeper = *FindLauncher(trainer::v1::SLURM)->keeper;
  const std::string work = (dir_ / "job").string();
  fs::create_directories(work);
  const std::vector<std::string> env = Request().env;
  ASSERT_TRUE(keeper.save(work, {"a1", "s3cret", "4242", "10.0.0.1:50051"}).ok());
  Reply("RUNNING", "None");
  auto peeked = keeper.peek(work, env);
  ASSERT_TRUE(peeked.has_value());
  EXPECT_EQ(peeked->attempt, "a1");
  EXPECT_EQ(peeked->secret, "s3cret");
  EXPECT_EQ(peeked->control, "10.0.0.1:50051");
  auto taken = keeper.take_up(work, env);
  ASSERT_TRUE(taken.has_value());
  EXPECT_EQ(taken->group->scheduler_job(), "4242");
  taken->group.reset();
  Reply("COMPLETED", "None");
  EXPECT_FALSE(keeper.peek(work, env).has_value());
  EXPECT_FALSE(keeper.take_up(work, env).has_value());
  EXPECT_FALSE(fs::exists(SlurmAttemptPath(work)));  // the stale record is gone
}

TEST(AttemptRegistryTest, AnAttemptIsFoundOnlyWithItsSecretAndRelaysInOrder) {
  AttemptRegistry registry;
  train::TrainConfig config;
  auto attempt = registry.Create(config, 2, 60, "gloo");
  EXPECT_EQ(registry.Find(attempt->id(), attempt->secret_for_launcher()), attempt);
  EXPECT_EQ(registry.Find(attempt->id(), "wrong"), nullptr);
  EXPECT_EQ(registry.Find("nope", attempt->secret_for_launcher()), nullptr);
  auto other = registry.Create(config, 2, 60, "gloo");
  EXPECT_NE(other->id(), attempt->id());
  EXPECT_NE(other->secret_for_launcher(), attempt->secret_for_launcher());
  RankMessage a, b;
  a.kind = RankMessage::kInfo;
  a.text = "first";
  b.kind = RankMessage::kInfo;
  b.text = "second";
  attempt->Post({a});
  attempt->Post({b});
  auto taken = attempt->Take(absl::ZeroDuration());
  ASSERT_EQ(taken.size(), 2u);
  EXPECT_EQ(taken[0].text, "first");
  EXPECT_EQ(taken[1].text, "second");
  EXPECT_FALSE(attempt->stop_requested());
  train::CancelToken cancel;
  attempt->AttachCancel(&cancel);
  cancel.Cancel();
  EXPECT_TRUE(attempt->stop_requested());  // the job's cancel reaches rank 0 at once
  attempt->DetachCancel();
  attempt->SetOutcome(absl::InternalError("rank 0 failed"));
  EXPECT_EQ(attempt->outcome()->message(), "rank 0 failed");
  registry.Remove(attempt->id());
  EXPECT_EQ(registry.Find(attempt->id(), attempt->secret_for_launcher()), nullptr);
  // Taken up after a restart: the kept id and secret.
  auto again = registry.Create(config, 2, 60, "gloo", "kept", "s3cret");
  EXPECT_EQ(registry.Find("kept", "s3cret"), again);
}

}  // namespace
}  // namespace traind::launch

namespace traind::launch {
namespace {

// Kubernetes' replies mapped to group states, against a stand-in API server
// (HTTPS with a certificate made for the test, a token file): the Job's
// conditions and its pods, as the test sets them.
class KubeRanksTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing_util::FreshTestDir("kube_ranks_test");
    const std::string cert = (dir_ / "cert.pem").string(), key = (dir_ / "key.pem").string();
    const std::string make_cert =
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 "
        "-addext subjectAltName=IP:127.0.0.1 -keyout " + key + " -out " + cert + " 2>/dev/null";
    ASSERT_EQ(std::system(make_cert.c_str()), 0);
    std::ofstream(dir_ / "token") << "t0ken\n";
    server_ = std::make_unique<httplib::SSLServer>(cert.c_str(), key.c_str());
    ASSERT_TRUE(server_->is_valid());
    server_->Post(".*", [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      if (req.get_header_value("Authorization") != "Bearer t0ken") {
        res.status = 401;
        return;
      }
      ++created_;
      res.status = 201;
      res.set_content(req.body, "application/json");
    });
    server_->Get(".*", [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      const bool pods = req.path.find("/pods") != std::string::npos;
      if (!pods && job_status_.empty()) {
        res.status = 404;
        return;
      }
      res.status = 200;
      res.set_content(pods ? pods_ : job_status_, "application/json");
    });
    server_->Delete(".*", [this](const httplib::Request&, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      ++deleted_;
      res.status = 200;
    });
    port_ = server_->bind_to_any_port("127.0.0.1");
    ASSERT_GT(port_, 0);
    // Bound and listening: connections wait in the backlog until accepted.
    thread_ = std::thread([this] { server_->listen_after_bind(); });
  }
  void TearDown() override {
    server_->stop();
    thread_.join();
  }

  void Set(const std::string& job_status, const std::string& pods) {
    std::lock_guard<std::mutex> lock(mu_);
    job_status_ = job_status;
    pods_ = pods;
  }
  LaunchRequest Request() {
    LaunchRequest request;
    request.job_name = "traind-job-000001-a1";
    request.world_size = 2;
    request.kube.api = "https://127.0.0.1:" + std::to_string(port_);
    request.kube.token_file = (dir_ / "token").string();
    request.kube.ca_file = (dir_ / "cert.pem").string();
    request.kube.namespace_ = "ml";
    request.kube.image = "traind:test";
    request.kube.worker_command = "/usr/bin/traind";
    return request;
  }
  // Polls (the API is asked at most once a second) until `done` holds.
  static GroupState PollUntil(RankGroup& group,
                              const std::function<bool(const GroupState&)>& done) {
    GroupState state = group.Poll();
    while (!done(state)) {
      usleep(20000);
      state = group.Poll();
    }
    return state;
  }

  fs::path dir_;
  std::unique_ptr<httplib::SSLServer> server_;
  std::thread thread_;
  int port_ = 0;
  std::mutex mu_;
  std::string job_status_ = R"({"status": {}})";
  std::string pods_ = R"({"items": []})";
  int created_ = 0;
  int deleted_ = 0;
};

constexpr char kPendingPod[] = R"({"items": [{"metadata": {"name": "p-0"}, "status": {
    "phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
    "reason": "Unschedulable"}]}}]})";
constexpr char kRunningPod[] = R"({"items": [{"metadata": {"name": "p-0"},
    "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}]})";

TEST_F(KubeRanksTest, PendingRunningAndCompleteAsPhasesAndNotes) {
  auto group = StartKubernetesRanks(Request());
  ASSERT_TRUE(group.ok()) << group.status();
  EXPECT_EQ(created_, 3);  // Secret, Service, Job
  EXPECT_EQ((*group)->scheduler_job(), "traind-job-000001-a1");
  Set(R"({"status": {}})", kPendingPod);
  GroupState state = PollUntil(**group, [](const GroupState& s) { return !s.note.empty(); });
  EXPECT_EQ(state.phase, GroupPhase::kRunning);
  EXPECT_EQ(state.note, "Kubernetes Job traind-job-000001-a1: p-0 pending (Unschedulable)");
  Set(R"({"status": {}})", kRunningPod);
  state = PollUntil(**group, [](const GroupState& s) { return !s.note.empty(); });
  EXPECT_EQ(state.note, "Kubernetes Job traind-job-000001-a1 runs: p-0 on n1");
  Set(R"({"status": {"conditions": [{"type": "Complete", "status": "True"}]}})", kRunningPod);
  state = PollUntil(**group, [](const GroupState& s) { return s.ended(); });
  EXPECT_EQ(state.trouble, GroupTrouble::kNone);
  group->reset();
  EXPECT_EQ(deleted_, 3);  // the group removes what it created
}

TEST_F(KubeRanksTest, AnImageThatCannotBePulledFailsAndAFailedJobIsALostAttempt) {
  auto group = StartKubernetesRanks(Request());
  ASSERT_TRUE(group.ok()) << group.status();
  Set(R"({"status": {}})", R"({"items": [{"metadata": {"name": "p-1"}, "status": {
      "phase": "Pending", "containerStatuses": [{"state": {"waiting": {
      "reason": "ImagePullBackOff", "message": "no such image"}}}]}}]})");
  GroupState state = PollUntil(**group, [](const GroupState& s) {
    return s.trouble != GroupTrouble::kNone;
  });
  EXPECT_EQ(state.trouble, GroupTrouble::kFailed);
  EXPECT_EQ(state.reason, "pod p-1 cannot pull its image (ImagePullBackOff: no such image)");
  Set(R"({"status": {"conditions": [{"type": "Failed", "status": "True",
      "reason": "BackoffLimitExceeded", "message": "a pod failed"}]}})", R"({"items": []})");
  state = PollUntil(**group, [](const GroupState& s) { return s.ended(); });
  EXPECT_EQ(state.trouble, GroupTrouble::kRankLost);
  EXPECT_EQ(state.reason,
            "Kubernetes Job traind-job-000001-a1 failed (BackoffLimitExceeded: a pod failed)");
}

TEST_F(KubeRanksTest, AJobDeletedOutsideTraindIsACancel) {
  auto group = StartKubernetesRanks(Request());
  ASSERT_TRUE(group.ok()) << group.status();
  Set("", R"({"items": []})");  // the Job is gone: 404
  const GroupState state = PollUntil(**group, [](const GroupState& s) { return s.ended(); });
  EXPECT_EQ(state.trouble, GroupTrouble::kCancelledOutside);
  EXPECT_EQ(state.reason, "Kubernetes Job traind-job-000001-a1 was deleted outside traind");
}

TEST_F(KubeRanksTest, AWrongTokenIsRefusedNamingTheObject) {
  std::ofstream(dir_ / "token") << "wrong\n";
  auto group = StartKubernetesRanks(Request());
  ASSERT_FALSE(group.ok());
  EXPECT_EQ(group.status().message().rfind("Kubernetes refused the Secret traind-job-000001-a1: "
                                           "HTTP 401",
                                           0),
            0u)
      << group.status();
}

}  // namespace
}  // namespace traind::launch
