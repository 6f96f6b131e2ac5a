#include "server/jobs/job_manager.h"

#include <filesystem>
#include <random>

#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "common/spec.h"
#include "server/train/winograd_mode.h"
#include "server/worker/local_engine.h"
#include "tests/test_util.h"

// The real engine end to end through the manager; the lifecycle's other
// cases run on the fake engine in lifecycle_test.cc.
namespace traind::jobs {
namespace {

namespace fs = std::filesystem;
using trainer::v1::JobSpec;

// A tiny two-class dataset drawn with OpenCV: bright discs vs dark squares.
void MakeDataset(const fs::path& dir, int per_class) {
  std::mt19937 rng(1);
  for (int k = 0; k < 2; ++k) {
    fs::create_directories(dir / (k ? "square" : "disc"));
    for (int i = 0; i < per_class; ++i) {
      cv::Mat img(40, 40, CV_8UC3, cv::Scalar(20, 20, 20));
      const int x = 10 + static_cast<int>(rng() % 20), y = 10 + static_cast<int>(rng() % 20);
      if (k) {
        cv::rectangle(img, {x - 8, y - 8}, {x + 8, y + 8}, cv::Scalar(60, 200, 60), cv::FILLED);
      } else {
        cv::circle(img, {x, y}, 9, cv::Scalar(240, 80, 80), cv::FILLED);
      }
      cv::imwrite((dir / (k ? "square" : "disc") / (std::to_string(i) + ".png")).string(), img);
    }
  }
}

class JobManagerTest : public testing::Test {
 protected:
  void SetUp() override {
    base_ = testing_util::FreshTestDir("job_manager_test");
    fs::create_directories(base_ / "data");
    fs::create_directories(base_ / "weights");
    MakeDataset(base_ / "data" / "tiny", 12);
    options_.state_dir = (base_ / "state").string();
    options_.data_root = (base_ / "data").string();
    options_.weights_root = (base_ / "weights").string();
    options_.workers = 1;
    options_.threads_per_job = 1;
    options_.engine = worker::NewLocalEngine();
  }

  std::unique_ptr<JobManager> Start() {
    auto m = JobManager::Create(options_);
    EXPECT_TRUE(m.ok()) << m.status();
    return std::move(*m);
  }

  static JobSpec Scratch(int epochs) {
    JobSpec spec;
    spec.set_kind(trainer::v1::SCRATCH);
    spec.set_dataset("tiny");
    spec.set_epochs(epochs);
    spec.set_image_size(32);
    spec.set_batch_size(4);
    return spec;
  }

  // Waits for job `id` to reach a terminal state; returns all its events.
  static std::vector<trainer::v1::JobEvent> WaitDone(JobManager& m, const std::string& id) {
    std::vector<trainer::v1::JobEvent> all;
    int64_t after = 0;
    while (true) {
      auto events = m.ReadEvents(id, after, 1000);
      EXPECT_TRUE(events.ok());
      for (auto& e : *events) {
        after = e.seq();
        all.push_back(e);
        if (e.has_state() && IsTerminal(e.state().state())) return all;
      }
      m.WaitForEvents(id, after, absl::Seconds(5));
    }
  }

  // Waits until job `id` has emitted a batch event.
  static void WaitFirstBatch(JobManager& m, const std::string& id) {
    int64_t after = 0;
    while (true) {
      auto events = m.ReadEvents(id, after, 1000);
      if (!events.ok()) {
        ADD_FAILURE() << events.status();
        return;
      }
      for (const auto& e : *events) {
        after = e.seq();
        if (e.has_batch()) return;
      }
      m.WaitForEvents(id, after, absl::Seconds(5));
    }
  }

  fs::path base_;
  JobManager::Options options_;
};

TEST_F(JobManagerTest, ScratchJobRunsToSuccessWithGaplessEvents) {
  auto m = Start();
  auto id = m->Submit(Scratch(2), "");
  ASSERT_TRUE(id.ok()) << id.status();
  auto events = WaitDone(*m, *id);
  int batches = 0, epochs = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq(), static_cast<int64_t>(i + 1));
    batches += events[i].has_batch();
    if (events[i].has_epoch()) {
      ++epochs;
      EXPECT_GE(events[i].epoch().validation_accuracy(), 0);
      EXPECT_LE(events[i].epoch().validation_accuracy(), 1);
    }
  }
  EXPECT_EQ(events.back().state().state(), trainer::v1::SUCCEEDED);
  auto job = m->GetJob(*id);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->num_classes(), 2);
  EXPECT_EQ(job->train_images(), 19);  // floor(24 * 0.8)
  EXPECT_EQ(epochs, 2);
  EXPECT_EQ(batches, 2 * 5);  // ceil(19 / 4) per epoch
  EXPECT_EQ(job->last_seq(), static_cast<int64_t>(events.size()));
  auto weights = m->Weights(*id, trainer::v1::PTH);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->sha256, job->weights_sha256());
  EXPECT_EQ(*Sha256File(weights->path), job->weights_sha256());

  // Fine-tune from that job's weights.
  JobSpec ft = Scratch(1);
  ft.set_kind(trainer::v1::FINETUNE);
  ft.set_from_job(*id);
  auto ft_id = m->Submit(ft, "");
  ASSERT_TRUE(ft_id.ok()) << ft_id.status();
  EXPECT_EQ(WaitDone(*m, *ft_id).back().state().state(), trainer::v1::SUCCEEDED);
}

TEST_F(JobManagerTest, AdaptiveThreadsFollowTheDaemonDefaultForItsOwnJobs) {
  options_.threads_per_job = 2;
  options_.adaptive_threads = true;
  auto m = Start();
  // A job that does not say takes the daemon's default, and its log says
  // that its thread count adapts.
  auto id = m->Submit(Scratch(1), "");
  ASSERT_TRUE(id.ok()) << id.status();
  auto events = WaitDone(*m, *id);
  EXPECT_EQ(events.back().state().state(), trainer::v1::SUCCEEDED);
  EXPECT_TRUE(m->GetJob(*id)->spec().adaptive_threads());
  bool said = false;
  for (const auto& e : events) {
    said |= e.has_log() &&
            e.log().text().find("2 threads at most (adapting to contention)") != std::string::npos;
  }
  EXPECT_TRUE(said);
  // A job may say no.
  JobSpec fixed = Scratch(1);
  fixed.set_adaptive_threads(false);
  auto fixed_id = m->Submit(fixed, "");
  ASSERT_TRUE(fixed_id.ok()) << fixed_id.status();
  EXPECT_FALSE(m->GetJob(*fixed_id)->spec().adaptive_threads());
  // A data-parallel job may not ask for it (ranks wait for each other).
  JobSpec ranks = Scratch(1);
  ranks.mutable_distributed()->set_world_size(2);
  ranks.set_adaptive_threads(true);
  auto refused = m->Submit(ranks, "");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refused.status().message().substr(0, 17), "adaptive_threads:")
      << refused.status().message();
  EXPECT_EQ(WaitDone(*m, *fixed_id).back().state().state(), trainer::v1::SUCCEEDED);
}

// The daemon's --winograd reaches the specs that do not say, and the job's
// log says which convolutions its steps run.
TEST_F(JobManagerTest, WinogradFollowsTheDaemonDefaultAndTheLogSaysWhichConvolutions) {
  options_.winograd = true;
  auto m = Start();
  auto id = m->Submit(Scratch(1), "");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_TRUE(m->GetJob(*id)->spec().winograd());
  // A job may say no (queued behind the first, and not run here).
  JobSpec exact = Scratch(1);
  exact.set_winograd(false);
  auto exact_id = m->Submit(exact, "");
  ASSERT_TRUE(exact_id.ok()) << exact_id.status();
  EXPECT_FALSE(m->GetJob(*exact_id)->spec().winograd());
  ASSERT_TRUE(m->Cancel(*exact_id).ok());
  const std::string said = train::WinogradAvailable()
                               ? "(fp32, Winograd convolutions)"
                               : "(fp32, LibTorch's convolutions: no Winograd kernel for this CPU)";
  auto logs = [](const std::vector<trainer::v1::JobEvent>& events) {
    std::string all;
    for (const auto& e : events) {
      if (e.has_log()) absl::StrAppend(&all, e.log().text(), "\n");
    }
    return all;
  };
  const std::string with = logs(WaitDone(*m, *id));
  EXPECT_NE(with.find(said), std::string::npos) << with;
  EXPECT_EQ(WaitDone(*m, *exact_id).back().state().state(), trainer::v1::CANCELLED);
}

TEST_F(JobManagerTest, InvalidSpecsAreRefusedAndNothingIsStored) {
  auto m = Start();
  JobSpec bad = Scratch(0);
  EXPECT_EQ(m->Submit(bad, "").status().code(), absl::StatusCode::kInvalidArgument);
  JobSpec outside = Scratch(1);
  outside.set_dataset("../data");
  EXPECT_EQ(m->Submit(outside, "").status().code(), absl::StatusCode::kInvalidArgument);
  JobSpec unknown = Scratch(1);
  unknown.set_dataset("nope");
  EXPECT_EQ(m->Submit(unknown, "").status().code(), absl::StatusCode::kInvalidArgument);
  // A dataset with an empty class folder: refused at submit, naming it.
  MakeDataset(base_ / "data" / "holey", 4);
  fs::create_directories(base_ / "data" / "holey" / "empty");
  JobSpec holey = Scratch(1);
  holey.set_dataset("holey");
  auto refused = m->Submit(holey, "").status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("dataset: class folder holey/empty holds no images"),
            std::string::npos)
      << refused;
  JobSpec no_weights = Scratch(1);
  no_weights.set_kind(trainer::v1::FINETUNE);
  auto st = m->Submit(no_weights, "").status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("weights root"), std::string::npos) << st;
  JobSpec missing_job = no_weights;
  missing_job.set_from_job("job-999999");
  EXPECT_EQ(m->Submit(missing_job, "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(m->ListJobs(0, "", {})->jobs.empty());
}

TEST_F(JobManagerTest, SweepSharesEpochPrefixesAndRanksByValidationLoss) {
  auto m = Start();
  auto base = m->Submit(Scratch(1), "");
  ASSERT_TRUE(base.ok());
  ASSERT_EQ(WaitDone(*m, *base).back().state().state(), trainer::v1::SUCCEEDED);
  JobSpec sweep = Scratch(1);
  sweep.set_kind(trainer::v1::SWEEP);
  sweep.set_from_job(*base);
  sweep.mutable_sweep()->add_epochs(1);
  sweep.mutable_sweep()->add_epochs(2);
  sweep.mutable_sweep()->add_learning_rates(1e-3);
  sweep.mutable_sweep()->add_learning_rates(1e-2);
  auto id = m->Submit(sweep, "");
  ASSERT_TRUE(id.ok()) << id.status();
  auto events = WaitDone(*m, *id);
  ASSERT_EQ(events.back().state().state(), trainer::v1::SUCCEEDED);
  int started = 0, finished = 0, epochs = 0;
  for (const auto& e : events) {
    started += e.has_trial_started();
    finished += e.has_trial_finished();
    if (e.has_epoch()) {
      ++epochs;
      EXPECT_GE(e.epoch().trial(), 1);
    }
  }
  EXPECT_EQ(started, 4);
  EXPECT_EQ(finished, 4);
  // The 1-epoch trials are read from the 2-epoch runs: 4 epochs, not 6.
  EXPECT_EQ(epochs, 2 + 2);
  auto job = m->GetJob(*id);
  EXPECT_EQ(job->sweep_summary().epochs_requested(), 6);
  EXPECT_EQ(job->sweep_summary().epochs_trained(), 4);
  ASSERT_EQ(job->trials_size(), 4);
  for (const auto& t : job->trials()) {
    EXPECT_EQ(t.epochs_run(), t.epochs());
    EXPECT_EQ(t.run(), t.learning_rate() == 1e-3 ? 2 : 4) << t.trial();
    EXPECT_EQ(t.settings(0).name(), "epochs");
  }
  for (int i = 1; i < 4; ++i) {
    EXPECT_LE(job->trials(i - 1).final().validation_loss(),
              job->trials(i).final().validation_loss());
  }
  EXPECT_DOUBLE_EQ(job->trials(0).backbone_learning_rate(),
                   job->trials(0).learning_rate() * 0.1);
  // The sweep's weights are its best trial's.
  auto weights = m->Weights(*id, trainer::v1::PTH);
  ASSERT_TRUE(weights.ok());
  const auto best = fs::path(options_.state_dir) / "jobs" / *id /
                    ("trial-" + std::to_string(job->trials(0).trial()) + ".pth");
  EXPECT_EQ(weights->sha256, *Sha256File(best.string()));
}

TEST_F(JobManagerTest, SecondManagerOnTheSameStateDirIsRefused) {
  auto first = Start();
  auto second = JobManager::Create(options_);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("in use by another traind"), std::string::npos);
  first.reset();
  EXPECT_TRUE(JobManager::Create(options_).ok());
}

}  // namespace
}  // namespace traind::jobs
