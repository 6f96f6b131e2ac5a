// The job lifecycle on the fake engine: queue, cancel, restart and resume,
// sweeps' trial accounting, ownership, followers and deletion, in
// milliseconds. The real engine's end-to-end cases are in job_manager_test.
#include <filesystem>
#include <memory>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/spec.h"
#include "server/jobs/classify.h"
#include "server/jobs/job_manager.h"
#include "server/jobs/layout.h"
#include "server/jobs/store.h"
#include "tests/jobs/fake_engine.h"
#include "tests/test_util.h"

namespace traind::jobs {
namespace {

namespace fs = std::filesystem;
using trainer::v1::JobEvent;
using trainer::v1::JobSpec;
using trainer::v1::JobState;

class LifecycleTest : public testing::Test {
 protected:
  void SetUp() override {
    base_ = testing_util::FreshTestDir("lifecycle_test");
    fs::create_directories(base_ / "data" / "set" / "a");
    fs::create_directories(base_ / "weights");
    engine_ = std::make_shared<FakeEngine>();
    options_.state_dir = (base_ / "state").string();
    options_.data_root = (base_ / "data").string();
    options_.weights_root = (base_ / "weights").string();
    options_.threads_per_job = 1;
    options_.engine = engine_;
  }

  std::unique_ptr<JobManager> Start() {
    auto m = JobManager::Create(options_);
    EXPECT_TRUE(m.ok()) << m.status();
    return std::move(*m);
  }

  static JobSpec Scratch(int epochs) {
    JobSpec spec;
    spec.set_kind(trainer::v1::SCRATCH);
    spec.set_dataset("set");
    spec.set_epochs(epochs);
    return spec;
  }

  // Follows job `id` from `after` to its end; the events and the end status.
  static std::pair<std::vector<JobEvent>, absl::Status> Follow(JobManager& m,
                                                               const std::string& id,
                                                               const Caller& caller = Caller(),
                                                               int64_t after = 0) {
    auto woken = std::make_shared<absl::Mutex>();
    auto flag = std::make_shared<bool>(false);
    auto f = m.Follow(id, after, caller, [woken, flag] {
      absl::MutexLock lock(woken.get());
      *flag = true;
    });
    if (!f.ok()) return {{}, f.status()};
    std::vector<JobEvent> all;
    while (true) {
      auto step = (*f)->Next(100);
      if (!step.ok()) return {all, step.status()};
      all.insert(all.end(), step->events.begin(), step->events.end());
      if (step->end) return {all, absl::OkStatus()};
      if (step->events.empty()) {
        absl::MutexLock lock(woken.get());
        woken->AwaitWithTimeout(absl::Condition(flag.get()), absl::Seconds(10));
        *flag = false;
      }
    }
  }

  static void WaitFor(JobManager& m, const std::string& id, JobState state) {
    for (int i = 0; i < 2000; ++i) {
      if (m.GetJob(id)->state() == state) return;
      absl::SleepFor(absl::Milliseconds(5));
    }
    ADD_FAILURE() << id << " never reached " << trainer::v1::JobState_Name(state);
  }

  static void WaitForBatches(const FakeEngine& e, int n) {
    for (int i = 0; i < 2000 && e.batches_trained() < n; ++i) absl::SleepFor(absl::Milliseconds(5));
  }

  fs::path base_;
  std::shared_ptr<FakeEngine> engine_;
  JobManager::Options options_;
};

TEST_F(LifecycleTest, JobRunsToSuccessWithGaplessEventsAndWeights) {
  auto m = Start();
  auto id = m->Submit(Scratch(2), "");
  ASSERT_TRUE(id.ok()) << id.status();
  auto [events, end] = Follow(*m, *id);
  ASSERT_TRUE(end.ok()) << end;
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].seq(), int64_t(i + 1));
  int batches = 0, epochs = 0;
  for (const auto& e : events) batches += e.has_batch(), epochs += e.has_epoch();
  EXPECT_EQ(batches, 6);
  EXPECT_EQ(epochs, 2);
  EXPECT_EQ(events.front().state().state(), trainer::v1::QUEUED);
  EXPECT_EQ(events.back().state().state(), trainer::v1::SUCCEEDED);
  auto job = m->GetJob(*id);
  EXPECT_EQ(job->last_seq(), events.back().seq());
  EXPECT_EQ(job->checkpoint_epochs(), 2);
  EXPECT_EQ(job->evaluation().images(), 32);
  auto reader = m->OpenWeights(*id, trainer::v1::PTH, 0, 0);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->header().sha256(), job->weights_sha256());
  EXPECT_EQ(*(*reader)->Next(), "fake weights lr 0.001 epochs 2\n");
  EXPECT_TRUE((*reader)->done());
  // A replay of a finished job ends by itself; from its end it is empty.
  auto [again, end2] = Follow(*m, *id, Caller(), job->last_seq());
  EXPECT_TRUE(end2.ok());
  EXPECT_TRUE(again.empty());
  EXPECT_EQ(Follow(*m, *id, Caller(), job->last_seq() + 1).second.code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->OpenWeights(*id, trainer::v1::PTH, 0, 1 << 20).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(LifecycleTest, CancelStopsQueuedAndRunningJobsWithinABatch) {
  auto m = Start();
  engine_->Hold();
  auto running = *m->Submit(Scratch(5), "");
  auto queued = *m->Submit(Scratch(1), "");
  WaitFor(*m, running, trainer::v1::RUNNING);
  EXPECT_EQ(m->Cancel(queued)->state(), trainer::v1::CANCELLED);
  EXPECT_EQ(m->Cancel(running)->state(), trainer::v1::CANCELLING);
  auto [events, end] = Follow(*m, running);
  EXPECT_EQ(events.back().state().state(), trainer::v1::CANCELLED);
  EXPECT_EQ(engine_->batches_trained(), 0);
  EXPECT_EQ(engine_->runs(), 1);  // the queued one never ran
  EXPECT_EQ(m->Weights(running, trainer::v1::PTH).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(m->Cancel("job-404").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(LifecycleTest, InterruptedJobResumesFromItsCheckpointAfterARestart) {
  std::string id;
  {
    auto m = Start();
    engine_->Hold();
    engine_->Allow(4);  // into epoch 2
    id = *m->Submit(Scratch(3), "");
    WaitForBatches(*engine_, 4);
    m->Shutdown();
    auto job = m->GetJob(id);
    EXPECT_EQ(job->state(), trainer::v1::QUEUED);
    EXPECT_NE(job->checkpoint_epochs(), 0);
  }
  const int before = engine_->batches_trained();
  engine_->Release();
  auto m = Start();
  auto [events, end] = Follow(*m, id);
  ASSERT_TRUE(end.ok()) << end;
  EXPECT_EQ(events.back().state().state(), trainer::v1::SUCCEEDED);
  // Resumed where the interrupt checkpoint left off: 9 batches in all.
  EXPECT_EQ(engine_->batches_trained(), 9);
  EXPECT_GT(before, 0);
  int resumed = 0, queued = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq(), int64_t(i + 1));
    resumed += events[i].has_resumed();
    queued += events[i].has_state() && events[i].state().state() == trainer::v1::QUEUED;
  }
  EXPECT_EQ(resumed, 1);
  EXPECT_EQ(queued, 2);
  EXPECT_EQ(m->GetJob(id)->attempt(), 2);
}

TEST_F(LifecycleTest, FollowersSeeLiveEventsAndEndWithUnavailableAtShutdown) {
  auto m = Start();
  engine_->Hold();
  auto id = *m->Submit(Scratch(100), "");
  WaitFor(*m, id, trainer::v1::RUNNING);
  std::pair<std::vector<JobEvent>, absl::Status> result;
  std::thread watcher([&] { result = Follow(*m, id); });
  engine_->Release();
  WaitForBatches(*engine_, 10);
  m->Shutdown();
  watcher.join();
  EXPECT_EQ(result.second.code(), absl::StatusCode::kUnavailable) << result.second;
  EXPECT_NE(result.second.message().find("after_seq="), std::string::npos);
  // A gapless prefix arrived; whatever the follower had not read yet (at
  // most the interruption's own events, possibly nothing) is there for the
  // reconnect the message asks for, and the whole ends with the requeue.
  std::vector<JobEvent> events = result.first;
  ASSERT_GE(events.size(), 10u);
  auto rest = m->ReadEvents(id, events.back().seq(), 100);
  ASSERT_TRUE(rest.ok());
  events.insert(events.end(), rest->begin(), rest->end());
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].seq(), int64_t(i + 1));
  EXPECT_EQ(events.back().state().state(), trainer::v1::QUEUED);
}

TEST_F(LifecycleTest, StreamsPerUserAreLimited) {
  options_.max_streams_per_user = 2;
  auto m = Start();
  engine_->Hold();
  auto id = *m->Submit(Scratch(1), "");
  auto a = m->Follow(id, 0, Caller(), [] {});
  auto b = m->Follow(id, 0, Caller(), [] {});
  ASSERT_TRUE(a.ok() && b.ok());
  auto c = m->Follow(id, 0, Caller(), [] {});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  a->reset();
  EXPECT_TRUE(m->Follow(id, 0, Caller(), [] {}).ok());
  engine_->Release();
}

TEST_F(LifecycleTest, AnotherUsersJobDoesNotExistForThemButDoesForAdmins) {
  auto m = Start();
  const Caller alice{"alice", false}, bob{"bob", false}, root{"root", true};
  auto id = *m->Submit(Scratch(1), "", alice);
  ASSERT_TRUE(Follow(*m, id, alice).second.ok());
  EXPECT_EQ(m->GetJob(id, bob).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m->Cancel(id, bob).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m->Follow(id, 0, bob, [] {}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m->OpenWeights(id, trainer::v1::PTH, 0, 0, bob).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(m->Delete(id, bob).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(m->ListJobs(0, "", {}, bob)->jobs.empty());
  EXPECT_EQ(m->ListJobs(0, "", {}, root)->jobs.size(), 1u);
  EXPECT_EQ(m->GetJob(id, root)->owner(), "alice");
  // Request ids are per user: bob's "r" is not alice's "r".
  auto a1 = m->Submit(Scratch(1), "r", alice);
  auto b1 = m->Submit(Scratch(1), "r", bob);
  EXPECT_NE(*a1, *b1);
  EXPECT_EQ(*m->Submit(Scratch(1), "r", alice), *a1);
  // A job that starts from bob's weights cannot name alice's job.
  JobSpec ft = Scratch(1);
  ft.set_kind(trainer::v1::FINETUNE);
  ft.set_from_job(id);
  EXPECT_EQ(m->Submit(ft, "", bob).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(LifecycleTest, SweepTrialsStayFinishedAcrossARestartAndTheBestIsServed) {
  std::string id;
  {
    auto m = Start();
    auto base = *m->Submit(Scratch(1), "");
    ASSERT_TRUE(Follow(*m, base).second.ok());
    JobSpec sweep = Scratch(1);
    sweep.set_kind(trainer::v1::SWEEP);
    sweep.set_from_job(base);
    id = *m->Submit(sweep, "");
    // The default grid: 6 trials; stop after the first two have finished.
    for (int i = 0; i < 2000 && m->GetJob(id)->trials_size() < 2; ++i) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    engine_->Hold();
    m->Shutdown();
  }
  engine_->Release();
  auto m = Start();
  auto [events, end] = Follow(*m, id);
  ASSERT_TRUE(end.ok()) << end;
  auto job = m->GetJob(id);
  ASSERT_EQ(job->state(), trainer::v1::SUCCEEDED);
  ASSERT_EQ(job->trials_size(), 6);
  std::set<int> trials;
  for (const auto& t : job->trials()) trials.insert(t.trial());
  EXPECT_EQ(trials.size(), 6u);  // none run twice
  EXPECT_EQ(job->sweep_summary().epochs_requested(), 18);
  for (int i = 1; i < 6; ++i) {
    EXPECT_LE(job->trials(i - 1).final().validation_loss(),
              job->trials(i).final().validation_loss());
  }
  auto best = m->OpenWeights(id, trainer::v1::PTH, 0, 0);
  ASSERT_TRUE(best.ok());
  EXPECT_EQ(*(*best)->Next(), absl::StrCat("fake weights trial ", job->trials(0).trial(), "\n"));
  EXPECT_EQ(m->OpenWeights(id, trainer::v1::PTH, 99, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(LifecycleTest, DeleteRemovesAFinishedJobAndRefusesOthers) {
  auto m = Start();
  auto done = *m->Submit(Scratch(1), "");
  ASSERT_TRUE(Follow(*m, done).second.ok());
  engine_->Hold();
  JobSpec ft = Scratch(1);
  ft.set_kind(trainer::v1::FINETUNE);
  ft.set_from_job(done);
  auto child = *m->Submit(ft, "");
  EXPECT_EQ(m->Delete(child).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(m->Delete(done).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(m->Cancel(child).ok());
  WaitFor(*m, child, trainer::v1::CANCELLED);
  auto freed = m->Delete(done);
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_GT(*freed, 0);
  EXPECT_FALSE(fs::exists(base_ / "state" / "jobs" / done));
  EXPECT_EQ(m->GetJob(done).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m->ReadEvents(done, 0, 10).status().code(), absl::StatusCode::kNotFound);
  engine_->Release();
}

TEST_F(LifecycleTest, AJobLeftRunningIsRequeuedUntilTheCrashLoopLimit) {
  options_.max_attempts_without_progress = 2;
  std::string id;
  {
    auto m = Start();
    engine_->Hold();
    id = *m->Submit(Scratch(1), "");
    WaitFor(*m, id, trainer::v1::RUNNING);
  }
  // What a killed daemon leaves: the row RUNNING, `attempts` counted.
  auto crash = [&](int attempts) {
    auto store = Store::Open((base_ / "state" / "traind.db").string());
    ASSERT_TRUE(store.ok());
    auto jobs = (*store)->LoadJobs();
    ASSERT_TRUE(jobs.ok());
    auto job = jobs->front().job;
    job.set_state(trainer::v1::RUNNING);
    job.set_attempts_without_progress(attempts);
    ASSERT_TRUE((*store)->UpdateJob(job).ok());
  };
  crash(1);
  {
    auto m = Start();  // below the limit: queued again, and it runs
    WaitFor(*m, id, trainer::v1::RUNNING);
    EXPECT_EQ(m->GetJob(id)->attempt(), 2);
  }
  crash(2);
  engine_->Release();
  auto m = Start();
  auto job = m->GetJob(id);
  EXPECT_EQ(job->state(), trainer::v1::FAILED);
  EXPECT_NE(job->error().find("2 attempts in a row without a new checkpoint"), std::string::npos)
      << job->error();
  EXPECT_EQ(engine_->runs(), 2);
}

// Ranks on a scheduler that kept training while the daemon was down are the
// same attempt taken up again: no checkpoint restored, nothing said of one.
TEST_F(LifecycleTest, RanksThatKeptRunningAreTakenUpAsTheSameAttempt) {
  std::string id;
  {
    auto m = Start();
    engine_->Hold();
    id = *m->Submit(Scratch(1), "");
    WaitFor(*m, id, trainer::v1::RUNNING);
  }
  {  // What a killed daemon leaves: the row RUNNING.
    auto store = Store::Open((base_ / "state" / "traind.db").string());
    ASSERT_TRUE(store.ok());
    auto job = (*store)->LoadJobs()->front().job;
    job.set_state(trainer::v1::RUNNING);
    ASSERT_TRUE((*store)->UpdateJob(job).ok());
  }
  engine_->SetStillRunning(true);
  engine_->Release();
  auto m = Start();
  auto [events, end] = Follow(*m, id);
  ASSERT_TRUE(end.ok()) << end;
  EXPECT_EQ(events.back().state().state(), trainer::v1::SUCCEEDED);
  EXPECT_EQ(m->GetJob(id)->attempt(), 1);
  bool taken_up = false, restarted = false;
  for (const auto& e : events) {
    EXPECT_FALSE(e.has_resumed());
    restarted |= e.has_state() && e.state().reason() == "daemon restarted while attempt 1 was running";
    if (e.has_log() && e.log().text().find("attempt 1 kept running through the daemon's "
                                           "restart: taken up where it is") == 0) {
      taken_up = true;
    }
  }
  EXPECT_TRUE(taken_up);
  EXPECT_TRUE(restarted);
}

// A daemon killed from outside is not the job's fault: an attempt that got
// further than any before it made progress, checkpoint or not. One that did
// not counts towards the crash-loop limit.
TEST_F(LifecycleTest, AnAttemptThatTrainedFurtherIsNotACrashLoop) {
  options_.max_attempts_without_progress = 2;
  engine_->SkipInterruptCheckpoints();
  auto crash = [&](int attempts) {
    auto store = Store::Open((base_ / "state" / "traind.db").string());
    ASSERT_TRUE(store.ok());
    auto job = (*store)->LoadJobs()->front().job;
    job.set_state(trainer::v1::RUNNING);
    job.set_attempts_without_progress(attempts);
    ASSERT_TRUE((*store)->UpdateJob(job).ok());
  };
  std::string id;
  {
    auto m = Start();
    engine_->Hold();
    engine_->Allow(4);  // epoch 1 (checkpoint at step 3) and one batch more
    id = *m->Submit(Scratch(3), "");
    WaitForBatches(*engine_, 4);
  }
  crash(2);  // at the limit, but the attempt went past its checkpoint
  {
    auto m = Start();
    auto job = m->GetJob(id);
    EXPECT_EQ(job->max_global_step(), 4);
    EXPECT_EQ(job->checkpoint_global_step(), 3);
    WaitFor(*m, id, trainer::v1::RUNNING);  // re-queued, not FAILED
  }
  crash(2);  // this attempt trained nothing new
  auto m = Start();
  auto job = m->GetJob(id);
  EXPECT_EQ(job->state(), trainer::v1::FAILED);
  EXPECT_EQ(job->max_global_step(), 4);
  engine_->Release();
}

TEST_F(LifecycleTest, ListsAreBasicUnlessFullIsAsked) {
  auto m = Start();
  auto id = *m->Submit(Scratch(1), "");
  ASSERT_TRUE(Follow(*m, id).second.ok());
  ASSERT_TRUE(m->GetJob(id)->has_evaluation());
  ASSERT_GT(m->GetJob(id)->class_names_size(), 0);
  const auto basic = m->ListJobs(0, "", {})->jobs.at(0);
  EXPECT_FALSE(basic.has_evaluation());
  EXPECT_EQ(basic.class_names_size(), 0);
  EXPECT_EQ(basic.state(), trainer::v1::SUCCEEDED);  // the rest is there
  EXPECT_EQ(basic.last_seq(), m->GetJob(id)->last_seq());
  const auto full = m->ListJobs(0, "", {}, Caller(), /*full=*/true)->jobs.at(0);
  EXPECT_TRUE(full.has_evaluation());
  EXPECT_EQ(full.SerializeAsString(), m->GetJob(id)->SerializeAsString());
  // Listing leaves the jobs as they were: one without an evaluation still
  // has none.
  engine_->Hold();
  auto queued = *m->Submit(Scratch(1), "");
  ASSERT_EQ(m->ListJobs(0, "", {})->jobs.size(), 2u);
  EXPECT_FALSE(m->GetJob(queued)->has_evaluation());
  engine_->Release();
}

TEST_F(LifecycleTest, RequestIdMakesSubmitIdempotent) {
  auto m = Start();
  auto a = m->Submit(Scratch(1), "req-1");
  auto b = m->Submit(Scratch(1), "req-1");
  auto c = m->Submit(Scratch(1), "req-2");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
  EXPECT_EQ(m->ListJobs(0, "", {})->jobs.size(), 2u);
}

TEST_F(LifecycleTest, ListJobsPagesAndFilters) {
  auto m = Start();
  engine_->Hold();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(*m->Submit(Scratch(1000), ""));
  for (int i = 1; i < 5; ++i) ASSERT_TRUE(m->Cancel(ids[i]).ok());
  auto p1 = m->ListJobs(2, "", {});
  ASSERT_TRUE(p1.ok());
  ASSERT_EQ(p1->jobs.size(), 2u);
  EXPECT_EQ(p1->jobs[0].id(), ids[0]);
  auto p2 = m->ListJobs(2, p1->next_page_token, {});
  ASSERT_EQ(p2->jobs.size(), 2u);
  EXPECT_EQ(p2->jobs[0].id(), ids[2]);
  auto p3 = m->ListJobs(2, p2->next_page_token, {});
  ASSERT_EQ(p3->jobs.size(), 1u);
  EXPECT_TRUE(p3->next_page_token.empty());
  auto cancelled = m->ListJobs(0, "", {trainer::v1::CANCELLED});
  EXPECT_EQ(cancelled->jobs.size(), 4u);
  EXPECT_EQ(m->ListJobs(0, "garbage", {}).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(m->Cancel(ids[0]).ok());
  EXPECT_EQ(m->ListJobs(0, "", {static_cast<JobState>(42)}).status().code(),
            absl::StatusCode::kInvalidArgument);
}



// Classify over the core: only a finished job of the caller's, images and
// top_k checked, class names from the job, models loaded once and kept.
TEST_F(LifecycleTest, ClassifyServesFinishedJobsThroughTheEnginesModels) {
  auto m = Start();
  ClassifyService classify(m.get(), engine_.get());
  const Caller alice{"alice", false}, bob{"bob", false};
  auto done = *m->Submit(Scratch(1), "", alice);
  ASSERT_TRUE(Follow(*m, done, alice).second.ok());
  trainer::v1::ClassifyRequest request;
  request.set_job_id(done);
  request.add_images("abc");  // 3 bytes: class 3 % 2 = 1, then 0
  request.add_images("abcd");
  request.set_top_k(2);
  auto got = classify.Classify(request, alice);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->results_size(), 2);
  ASSERT_EQ(got->results(0).predictions_size(), 2);
  EXPECT_EQ(got->results(0).predictions(0).class_index(), 1);
  EXPECT_EQ(got->results(0).predictions(0).class_name(), "b");
  EXPECT_EQ(got->results(1).predictions(0).class_name(), "a");
  EXPECT_TRUE(classify.Classify(request, alice).ok());
  EXPECT_EQ(engine_->models_loaded(), 1);  // kept, not loaded again

  EXPECT_EQ(classify.Classify(request, bob).status().code(), absl::StatusCode::kNotFound);
  request.set_top_k(101);
  EXPECT_EQ(classify.Classify(request, alice).status().message(), "top_k: must be in [1, 100]");
  request.set_top_k(0);
  request.add_images("not an image");
  EXPECT_EQ(classify.Classify(request, alice).status().message(), "images[2]: does not decode");
  request.clear_images();
  EXPECT_EQ(classify.Classify(request, alice).status().message(), "images: none given");

  engine_->Hold();
  auto running = *m->Submit(Scratch(1), "", alice);
  request.set_job_id(running);
  request.add_images("abc");
  EXPECT_EQ(classify.Classify(request, alice).status().code(),
            absl::StatusCode::kFailedPrecondition);
  engine_->Release();
  ASSERT_TRUE(Follow(*m, running, alice).second.ok());
}

// The models kept are the few used last.
TEST_F(LifecycleTest, ClassifyKeepsOnlyTheModelsUsedLast) {
  auto m = Start();
  ClassifyService classify(m.get(), engine_.get());
  std::vector<std::string> ids;
  for (size_t i = 0; i <= ClassifyService::kKeptModels; ++i) {
    ids.push_back(*m->Submit(Scratch(1), ""));
    ASSERT_TRUE(Follow(*m, ids.back()).second.ok());
  }
  trainer::v1::ClassifyRequest request;
  request.add_images("abc");
  for (const auto& id : ids) {
    request.set_job_id(id);
    ASSERT_TRUE(classify.Classify(request).ok());
  }
  EXPECT_EQ(engine_->models_loaded(), static_cast<int>(ids.size()));
  request.set_job_id(ids.back());  // kept
  ASSERT_TRUE(classify.Classify(request).ok());
  EXPECT_EQ(engine_->models_loaded(), static_cast<int>(ids.size()));
  request.set_job_id(ids.front());  // dropped: loaded again
  ASSERT_TRUE(classify.Classify(request).ok());
  EXPECT_EQ(engine_->models_loaded(), static_cast<int>(ids.size()) + 1);
}


// device and precision were strings at the same field numbers before they
// were enums: such a spec (an old client's, an old state dir's) arrives as
// unknown fields. The number is read in its old form, not dropped.
JobSpec WithLegacyStrings(JobSpec spec, const std::string& device,
                          const std::string& precision) {
  spec.clear_device();
  spec.clear_precision();
  auto* unknown = spec.GetReflection()->MutableUnknownFields(&spec);
  unknown->AddLengthDelimited(JobSpec::kDeviceFieldNumber, device);
  unknown->AddLengthDelimited(JobSpec::kPrecisionFieldNumber, precision);
  // Through the bytes, as it would arrive.
  JobSpec parsed;
  EXPECT_TRUE(parsed.ParseFromString(spec.SerializeAsString()));
  return parsed;
}

TEST_F(LifecycleTest, AnOldStateDirsBf16JobResumesInBf16) {
  {
    // What a traind from before the enums stored: a RUNNING job whose spec
    // holds precision "bf16" and device "cpu" as strings.
    fs::create_directories(options_.state_dir);
    auto store = Store::Open(JobLayout(options_.state_dir).Database());
    ASSERT_TRUE(store.ok()) << store.status();
    trainer::v1::Job job;
    job.set_id("job-000001");
    job.set_owner("local");
    job.set_state(trainer::v1::RUNNING);
    job.set_attempt(1);
    JobSpec spec = Scratch(1);
    ApplyDefaults(&spec);
    *job.mutable_spec() = WithLegacyStrings(spec, "cpu", "bf16");
    ASSERT_EQ(job.spec().precision(), trainer::v1::PRECISION_UNSPECIFIED);  // as parsed today
    ASSERT_TRUE((*store)->InsertJob(StoredJob{1, "", job}).ok());
  }
  {
    auto m = Start();
    auto [events, end] = Follow(*m, "job-000001");
    ASSERT_TRUE(end.ok()) << end;
    EXPECT_EQ(m->GetJob("job-000001")->state(), trainer::v1::SUCCEEDED);
    EXPECT_TRUE(engine_->last_config().bf16);
    EXPECT_EQ(engine_->last_config().device, "cpu");
    EXPECT_EQ(m->GetJob("job-000001")->spec().precision(), trainer::v1::BF16);
  }
  // Rewritten once in today's form.
  auto store = Store::Open(JobLayout(options_.state_dir).Database());
  auto jobs = (*store)->LoadJobs();
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ((*jobs)[0].job.spec().precision(), trainer::v1::BF16);
  EXPECT_EQ((*jobs)[0].job.spec().device(), trainer::v1::CPU);
  EXPECT_EQ((*jobs)[0].job.spec().GetReflection()->GetUnknownFields((*jobs)[0].job.spec())
                .field_count(),
            0);
}

TEST_F(LifecycleTest, AnOldClientsStringPrecisionIsReadAtSubmit) {
  auto m = Start();
  auto id = m->Submit(WithLegacyStrings(Scratch(1), "auto", "bf16"), "");
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(Follow(*m, *id).second.ok());
  EXPECT_EQ(m->GetJob(*id)->spec().precision(), trainer::v1::BF16);
  EXPECT_TRUE(engine_->last_config().bf16);
  EXPECT_EQ(m->Submit(WithLegacyStrings(Scratch(1), "auto", "fp8"), "").status().message(),
            "precision: must be fp32 or bf16, got \"fp8\"");
}

// ---- scheduling: priorities, preemption, pause and resume, quotas ----------

JobSpec WithPriority(JobSpec spec, trainer::v1::Priority p) {
  spec.set_priority(p);
  return spec;
}

// The reasons of the job's state changes, in order.
std::vector<std::string> StateReasons(const std::vector<JobEvent>& events) {
  std::vector<std::string> reasons;
  for (const auto& e : events) {
    if (e.has_state()) {
      reasons.push_back(
          absl::StrCat(trainer::v1::JobState_Name(e.state().state()), ": ", e.state().reason()));
    }
  }
  return reasons;
}

TEST_F(LifecycleTest, AHigherPriorityJobPreemptsAtACheckpointAndTheVictimResumesFromIt) {
  engine_->Hold();
  auto m = Start();
  auto low = m->Submit(WithPriority(Scratch(2), trainer::v1::LOW), "");
  ASSERT_TRUE(low.ok()) << low.status();
  engine_->Allow(2);
  WaitForBatches(*engine_, 2);
  // Queued behind it, an equal priority waits and says why.
  auto normal = m->Submit(WithPriority(Scratch(1), trainer::v1::LOW), "");
  ASSERT_TRUE(normal.ok());
  EXPECT_EQ(m->GetJob(*normal)->queue_position(), 1);
  EXPECT_EQ(m->GetJob(*normal)->waiting_reason(), "waiting: the only slot is in use; next in line");
  EXPECT_EQ(m->GetJob(*low)->state(), trainer::v1::RUNNING);

  auto high = m->Submit(WithPriority(Scratch(1), trainer::v1::HIGH), "");
  ASSERT_TRUE(high.ok());
  WaitFor(*m, *low, trainer::v1::QUEUED);
  engine_->Release();
  auto [high_events, high_end] = Follow(*m, *high);
  ASSERT_TRUE(high_end.ok()) << high_end;
  EXPECT_EQ(high_events.back().state().state(), trainer::v1::SUCCEEDED);
  auto [events, end] = Follow(*m, *low);
  ASSERT_TRUE(end.ok()) << end;
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].seq(), int64_t(i + 1));
  const auto reasons = StateReasons(events);
  ASSERT_GE(reasons.size(), 5u);
  EXPECT_EQ(reasons[2], absl::StrCat("QUEUED: preempted by ", *high,
                                     " (HIGH) at 0 epochs (global step 2, checkpointed); it "
                                     "continues from there when slots free"));
  EXPECT_EQ(reasons.back(), "SUCCEEDED: ");
  // The second attempt continued from the interrupt's checkpoint: every
  // step trained once.
  std::set<int64_t> steps;
  int resumed = 0;
  for (const auto& e : events) {
    if (e.has_batch()) {
      EXPECT_TRUE(steps.insert(e.batch().global_step()).second);
    }
    if (e.has_resumed()) {
      ++resumed;
      EXPECT_EQ(e.resumed().global_step(), 2);
    }
  }
  EXPECT_EQ(resumed, 1);
  EXPECT_EQ(steps.size(), 6u);
  // The LOW job queued before it did not jump the preempted one: it went
  // after (submission order within a priority).
  WaitFor(*m, *normal, trainer::v1::SUCCEEDED);
  EXPECT_LE(m->GetJob(*low)->end_time_ms(), m->GetJob(*normal)->start_time_ms());
}

TEST_F(LifecycleTest, EqualPrioritiesAndNonPreemptibleJobsAreNotPreempted) {
  engine_->Hold();
  auto m = Start();
  JobSpec sticky = WithPriority(Scratch(1), trainer::v1::LOW);
  sticky.set_preemptible(false);
  auto first = m->Submit(sticky, "");
  ASSERT_TRUE(first.ok()) << first.status();
  engine_->Allow(1);
  WaitForBatches(*engine_, 1);
  auto urgent = m->Submit(WithPriority(Scratch(1), trainer::v1::URGENT), "");
  ASSERT_TRUE(urgent.ok());
  EXPECT_EQ(m->GetJob(*urgent)->waiting_reason(), "waiting: the only slot is in use; next in line");
  EXPECT_EQ(m->GetJob(*first)->state(), trainer::v1::RUNNING);
  engine_->Release();
  WaitFor(*m, *urgent, trainer::v1::SUCCEEDED);
  EXPECT_EQ(m->GetJob(*first)->attempt(), 1);
}

TEST_F(LifecycleTest, PauseCheckpointsSurvivesARestartAndResumesWhereItStopped) {
  engine_->Hold();
  std::string id;
  {
    auto m = Start();
    auto submitted = m->Submit(Scratch(2), "");
    ASSERT_TRUE(submitted.ok());
    id = *submitted;
    engine_->Allow(4);
    WaitForBatches(*engine_, 4);
    auto paused = m->Pause(id);
    ASSERT_TRUE(paused.ok()) << paused.status();
    WaitFor(*m, id, trainer::v1::PAUSED);
    // Pausing again is a no-op; resuming a running or ended job is refused.
    EXPECT_EQ(m->Pause(id)->state(), trainer::v1::PAUSED);
    EXPECT_EQ(m->GetJob(id)->checkpoint_global_step(), 4);
    m->Shutdown();
  }
  auto m = Start();
  EXPECT_EQ(m->GetJob(id)->state(), trainer::v1::PAUSED);
  // Nothing runs it while paused.
  EXPECT_EQ(engine_->runs(), 1);
  engine_->Release();
  auto resumed = m->Resume(id);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  auto [events, end] = Follow(*m, id);
  ASSERT_TRUE(end.ok()) << end;
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].seq(), int64_t(i + 1));
  const auto reasons = StateReasons(events);
  EXPECT_NE(std::find(reasons.begin(), reasons.end(),
                      "PAUSED: paused at 1 epochs (global step 4, checkpointed); ResumeJob "
                      "continues it from there"),
            reasons.end());
  EXPECT_NE(std::find(reasons.begin(), reasons.end(),
                      "QUEUED: resumed by local; it continues from its checkpoint"),
            reasons.end());
  std::set<int64_t> steps;
  for (const auto& e : events) {
    if (e.has_batch()) {
      EXPECT_TRUE(steps.insert(e.batch().global_step()).second);
    }
  }
  EXPECT_EQ(steps.size(), 6u);
  EXPECT_EQ(m->Resume(id).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(m->Pause(id).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(LifecycleTest, AQueuedJobPausesAtOnceAndAPausedJobCanBeCancelledOrDeleted) {
  engine_->Hold();
  auto m = Start();
  auto running = m->Submit(Scratch(1), "");
  auto waiting = m->Submit(Scratch(1), "");
  auto other = m->Submit(Scratch(1), "");
  ASSERT_TRUE(running.ok() && waiting.ok() && other.ok());
  EXPECT_EQ(m->GetJob(*other)->queue_position(), 2);
  EXPECT_EQ(m->Pause(*waiting)->state(), trainer::v1::PAUSED);
  EXPECT_EQ(m->GetJob(*other)->queue_position(), 1);
  EXPECT_EQ(m->Cancel(*waiting)->state(), trainer::v1::CANCELLED);
  EXPECT_EQ(m->Pause(*other)->state(), trainer::v1::PAUSED);
  EXPECT_TRUE(m->Delete(*other).ok());
  EXPECT_EQ(m->GetJob(*other).status().code(), absl::StatusCode::kNotFound);
  engine_->Release();
  WaitFor(*m, *running, trainer::v1::SUCCEEDED);
}

TEST_F(LifecycleTest, APriorityChangeReordersTheQueueAndRightsAreTheAdmins) {
  engine_->Hold();
  const Caller alice{"alice", false}, root{"root", true};
  auto m = Start();
  auto running = m->Submit(Scratch(1), "", alice);
  auto a = m->Submit(Scratch(1), "", alice);
  auto b = m->Submit(Scratch(1), "", alice);
  ASSERT_TRUE(running.ok() && a.ok() && b.ok());
  EXPECT_EQ(m->GetJob(*b, alice)->queue_position(), 2);
  // alice may not raise above NORMAL; lowering is hers.
  auto denied = m->SetPriority(*b, trainer::v1::HIGH, alice);
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.status().message(),
            "priority HIGH: user alice may give jobs at most NORMAL (the admin's policy file, "
            "max_priority)");
  auto lowered = m->SetPriority(*a, trainer::v1::LOW, alice);
  ASSERT_TRUE(lowered.ok()) << lowered.status();
  EXPECT_EQ(m->GetJob(*b, alice)->queue_position(), 1);
  EXPECT_EQ(m->GetJob(*a, alice)->queue_position(), 2);
  // Submitting above NORMAL, or not preemptible, is refused the same way.
  EXPECT_EQ(m->Submit(WithPriority(Scratch(1), trainer::v1::URGENT), "", alice).status().code(),
            absl::StatusCode::kPermissionDenied);
  // An admin may; the queue and the running LOW... NORMAL job reorder.
  auto raised = m->SetPriority(*a, trainer::v1::URGENT, root);
  ASSERT_TRUE(raised.ok()) << raised.status();
  // URGENT preempts the running NORMAL job.
  WaitFor(*m, *running, trainer::v1::QUEUED);
  engine_->Release();
  WaitFor(*m, *a, trainer::v1::SUCCEEDED);
  WaitFor(*m, *running, trainer::v1::SUCCEEDED);
  WaitFor(*m, *b, trainer::v1::SUCCEEDED);
  EXPECT_LT(m->GetJob(*running)->end_time_ms(), m->GetJob(*b)->start_time_ms() + 1);
  // The change is in the job's events and survives in its stored spec.
  EXPECT_EQ(m->GetJob(*a)->spec().priority(), trainer::v1::URGENT);
  EXPECT_EQ(m->SetPriority(*a, trainer::v1::LOW).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(LifecycleTest, QuotasRefuseSubmissionsAndHoldBackRunningWork) {
  auto policy = Policy::Parse(R"({"default": {"max_queued_jobs": 2, "max_world_size": 2},
                                  "users": {"alice": {"max_running_jobs": 1}}})");
  ASSERT_TRUE(policy.ok()) << policy.status();
  options_.policy = *policy;
  options_.workers = 3;
  engine_->Hold();
  const Caller alice{"alice", false}, bob{"bob", false};
  auto m = Start();
  auto a1 = m->Submit(Scratch(1), "", alice);
  auto a2 = m->Submit(Scratch(1), "", alice);
  auto a3 = m->Submit(Scratch(1), "", alice);
  ASSERT_TRUE(a1.ok() && a2.ok() && a3.ok());
  // One running (alice's running-jobs quota), two waiting: the queue quota.
  auto a4 = m->Submit(Scratch(1), "", alice);
  EXPECT_EQ(a4.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(a4.status().message(),
            "quota max_queued_jobs: user alice has 2 of 2 jobs waiting; wait for some to start "
            "or cancel them");
  EXPECT_EQ(m->GetJob(*a2, alice)->waiting_reason(), "waiting: 1 of alice's 1 running jobs in use");
  // bob is not held back by alice's quota: his job starts on a free slot.
  auto b1 = m->Submit(Scratch(1), "", bob);
  ASSERT_TRUE(b1.ok());
  WaitFor(*m, *b1, trainer::v1::RUNNING);
  JobSpec wide = Scratch(1);
  wide.set_batch_size(4);
  wide.mutable_distributed()->set_world_size(4);
  auto too_wide = m->Submit(wide, "", bob);
  EXPECT_EQ(too_wide.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(too_wide.status().message(),
            "quota max_world_size: user bob may run ranks up to world size 2; this job asks for 4");
  // A reloaded policy applies at once.
  m->SetPolicy(Policy());
  WaitFor(*m, *a2, trainer::v1::RUNNING);
  engine_->Release();
  for (const auto& id : {*a1, *a2, *a3, *b1}) WaitFor(*m, id, trainer::v1::SUCCEEDED);
}

TEST_F(LifecycleTest, GaugesCountSlotsInUseAndTheQueue) {
  options_.workers = 2;
  engine_->Hold();
  auto m = Start();
  JobManager::Gauges g = m->Snapshot();
  EXPECT_EQ((std::vector<int>{g.slots, g.slots_in_use, g.running, g.queued}),
            (std::vector<int>{2, 0, 0, 0}));
  auto first = m->Submit(Scratch(1), "");
  ASSERT_TRUE(first.ok()) << first.status();
  engine_->Allow(1);
  WaitForBatches(*engine_, 1);
  auto second = m->Submit(Scratch(1), "");
  auto third = m->Submit(Scratch(1), "");
  ASSERT_TRUE(second.ok() && third.ok());
  WaitFor(*m, *second, trainer::v1::RUNNING);
  g = m->Snapshot();
  EXPECT_EQ((std::vector<int>{g.slots, g.slots_in_use, g.running, g.queued}),
            (std::vector<int>{2, 2, 2, 1}));
  engine_->Release();
  for (const auto& id : {*first, *second, *third}) WaitFor(*m, id, trainer::v1::SUCCEEDED);
  // A finished job gives its slots back as its worker lets go of it.
  for (int i = 0; i < 2000 && m->Snapshot().slots_in_use > 0; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  g = m->Snapshot();
  EXPECT_EQ((std::vector<int>{g.slots, g.slots_in_use, g.running, g.queued}),
            (std::vector<int>{2, 0, 0, 0}));
}

}  // namespace
}  // namespace traind::jobs
