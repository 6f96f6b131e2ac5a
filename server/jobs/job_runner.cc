// JobManager: the worker threads, and one attempt of a job through the engine.
#include "server/jobs/job_manager.h"

#include <algorithm>
#include <filesystem>
#include <string>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "server/jobs/job_entry.h"
#include "common/sha256.h"
#include "common/spec.h"
#include "server/jobs/paths.h"
#include "server/jobs/spec_config.h"

namespace traind::jobs {

void JobManager::WorkerLoop() {
  while (true) {
    std::shared_ptr<Entry> entry;
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !ready_.empty();
      };
      mu_.Await(absl::Condition(&has_work));
      if (stopping_) return;
      entry = ready_.front();
      ready_.pop_front();
    }
    // The scheduler gave it slots (Reschedule); between that and now it may
    // have been cancelled, paused or picked to make room for another job.
    absl::ReleasableMutexLock io(&entry->io_mu);
    JobState state;
    bool paused, preempted;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;  // still QUEUED in the store: it runs after the restart
      state = Held(*entry).job.state();
      paused = Held(*entry).pause_requested;
      preempted = !Held(*entry).preempted_by.empty();
      if (state == trainer::v1::QUEUED && !paused) {
        if (preempted) {
          Enqueue(entry);
          ReleaseSlots(*entry);
          continue;
        }
        Held(*entry).job.set_start_time_ms(NowMs());
        Held(*entry).job.set_attempt(Held(*entry).job.attempt() + 1);
        // Reset by the attempt's first checkpoint; counts crashes without one.
        Held(*entry).job.set_attempts_without_progress(
            Held(*entry).job.attempts_without_progress() + 1);
      }
    }
    if (state == trainer::v1::CANCELLING || paused) {
      if (state == trainer::v1::CANCELLING) {
        SetState(*entry, trainer::v1::CANCELLED, "cancelled before it started");
      } else {
        SetState(*entry, trainer::v1::PAUSED, "paused before it started");
      }
      absl::MutexLock lock(&mu_);
      ReleaseSlots(*entry);
      continue;
    }
    SetState(*entry, trainer::v1::RUNNING, "");
    io.Release();
    RunJob(entry);
  }
}

absl::Status JobManager::RunEngine(const std::shared_ptr<Entry>& entry, const JobSpec& spec,
                                   Sink* sink) {
  const std::string& id = entry->id;
  const std::string dir = layout_.JobDir(id);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  auto dataset = ResolveBeneath(options_.data_root, "the data root", spec.dataset(), "dataset");
  if (!dataset.ok()) return dataset.status();
  train::TrainConfig config = ToConfig(spec, *dataset);
  config.output_pth = layout_.Weights(id, trainer::v1::PTH);
  config.output_safetensors = layout_.Weights(id, trainer::v1::SAFETENSORS);
  if (spec.kind() != trainer::v1::SCRATCH) {
    auto weights = InitialWeightsPath(spec);
    if (!weights.ok()) return weights.status();
    config.initial_weights = *weights;
  }
  if (spec.kind() != trainer::v1::SWEEP) {
    RunRequest run;
    run.config = std::move(config);
    run.distributed = spec.distributed();
    {
      // The cluster's own priority for this attempt (the admin's mapping).
      absl::MutexLock lock(&mu_);
      policy_.MapPriority(EffectivePriority(spec), &run.distributed);
    }
    run.config.checkpoint_dir = layout_.CheckpointDir(id);
    const CheckpointRecord resume = PickCheckpoint(entry);
    run.config.resume_from = resume.path;
    int attempt;
    {
      absl::MutexLock lock(&mu_);
      attempt = Held(*entry).job.attempt();
    }
    if (attempt > 1 && engine_->StillRunning(run)) {
      // Not a new attempt: the previous one's ranks kept training.
      {
        absl::MutexLock io(&entry->io_mu);
        {
          absl::MutexLock lock(&mu_);
          Held(*entry).job.set_attempt(attempt - 1);
          Held(*entry).job.set_attempts_without_progress(
              std::max(0, Held(*entry).job.attempts_without_progress() - 1));
        }
        Persist(*entry);
      }
      sink->OnInfo(absl::StrCat("attempt ", attempt - 1,
                                " kept running through the daemon's restart: taken up where "
                                "it is, no checkpoint restored"));
    } else if (attempt > 1) {
      JobEvent ev;
      auto* r = ev.mutable_resumed();
      r->set_attempt(attempt);
      r->set_epoch(resume.path.empty() ? 0 : resume.epoch - 1);
      r->set_next_batch(resume.path.empty() ? 0 : resume.next_batch);
      r->set_global_step(resume.global_step);
      r->set_checkpoint_sha256(resume.sha256);
      Emit(*entry, std::move(ev));
    }
    return engine_->Train(run, sink, entry->cancel);
  }

  SweepRequest sweep;
  sweep.base = std::move(config);
  sweep.plan = ToPlan(spec.sweep());
  auto trials = engine_->PlanSweep(sweep.plan);
  if (!trials.ok()) return trials.status();
  sweep.trials = *std::move(trials);
  sweep.output_dir = dir;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& t : Held(*entry).job.trials()) sweep.finished.insert(t.trial());
    int requested = 0;
    for (const auto& t : sweep.trials) requested += t.epochs;
    auto* summary = Held(*entry).job.mutable_sweep_summary();
    summary->set_epochs_requested(requested);
    summary->set_trial_count(static_cast<int32_t>(sweep.trials.size()));
    summary->set_trials_finished(static_cast<int32_t>(sweep.finished.size()));
  }
  auto outcome = engine_->Sweep(sweep, sink, entry->cancel);
  if (!outcome.ok()) return outcome.status();
  int best;
  {
    absl::MutexLock lock(&mu_);
    auto* ranked = Held(*entry).job.mutable_trials();
    std::stable_sort(ranked->begin(), ranked->end(),
                     [](const trainer::v1::TrialResult& a, const trainer::v1::TrialResult& b) {
                       return a.final().validation_loss() < b.final().validation_loss();
                     });
    best = (*ranked)[0].trial();
  }
  // The sweep's weights are its best trial's.
  for (auto format : {trainer::v1::PTH, trainer::v1::SAFETENSORS}) {
    const std::string from = layout_.Weights(id, format, best);
    fs::copy_file(from, layout_.Weights(id, format), fs::copy_options::overwrite_existing, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot copy ", from, ": ", ec.message()));
  }
  return absl::OkStatus();
}

void JobManager::RunJob(const std::shared_ptr<Entry>& entry) {
  JobSpec spec;
  {
    absl::MutexLock lock(&mu_);
    spec = Held(*entry).job.spec();
  }
  Sink sink(this, entry, spec);
  absl::Status status = RunEngine(entry, spec, &sink);

  std::string sha;
  int64_t size = 0;
  if (status.ok()) {
    const std::string weights = layout_.Weights(entry->id, trainer::v1::PTH);
    auto digest = Sha256File(weights);
    std::error_code ec;
    if (digest.ok()) {
      sha = *digest;
      size = static_cast<int64_t>(fs::file_size(weights, ec));
    } else {
      status = digest.status();
    }
  }

  absl::MutexLock io(&entry->io_mu);
  bool interrupted, cancelling;
  bool paused = false;
  std::string preempted_by;
  int epochs;
  int64_t step;
  int attempt = 0;
  int lost_in_a_row = 0;
  const bool lost = IsAttemptLost(status) && !entry->cancel.cancelled();
  {
    absl::MutexLock lock(&mu_);
    Job& job = Held(*entry).job;
    attempt = job.attempt();
    lost_in_a_row = job.attempts_without_progress();
    // A lost attempt counts like a daemon crash; otherwise it ended on its own.
    if (!lost) job.set_attempts_without_progress(0);
    if (!Held(*entry).store_error.ok()) {
      status = absl::Status(Held(*entry).store_error.code(),
                            absl::StrCat("cannot record the job's progress: ",
                                         Held(*entry).store_error.message()));
    }
    if (status.ok()) {
      job.set_weights_sha256(sha);
      job.set_weights_size(size);
    }
    interrupted = Held(*entry).interrupted;
    cancelling = job.state() == trainer::v1::CANCELLING;
    if ((absl::IsCancelled(status) || lost) && !cancelling) {
      paused = Held(*entry).pause_requested;
      preempted_by = Held(*entry).preempted_by;
    }
    // Its slots are given back once its state says so (below).
    epochs = job.checkpoint_epochs();
    step = job.checkpoint_global_step();
  }
  const std::string at = absl::StrCat(epochs, " epochs (global step ", step, ", checkpointed)");
  bool queue_again = false;
  if (paused) {
    // Before the shutdown case: a job paused while the daemon stops stays
    // paused after the restart.
    SetState(*entry, trainer::v1::PAUSED,
             lost ? absl::StrCat("paused; its attempt ", attempt, " was lost (", status.message(),
                                 "): ResumeJob continues it from its last checkpoint")
                  : absl::StrCat("paused at ", at, "; ResumeJob continues it from there"));
  } else if (lost && lost_in_a_row < options_.max_attempts_without_progress) {
    SetState(*entry, trainer::v1::QUEUED,
             absl::StrCat("attempt ", attempt, " was lost (", status.message(),
                          "); it runs again from its last checkpoint"));
    queue_again = true;
  } else if (!preempted_by.empty() && !interrupted) {
    std::string by = preempted_by;
    {
      absl::MutexLock lock(&mu_);
      auto it = jobs_.find(preempted_by);
      if (it != jobs_.end()) {
        by = absl::StrCat(
            preempted_by, " (",
            trainer::v1::Priority_Name(EffectivePriority(Held(*it->second).job.spec())), ")");
      }
    }
    SetState(
        *entry, trainer::v1::QUEUED,
        absl::StrCat("preempted by ", by, " at ", at, "; it continues from there when slots free"));
    queue_again = true;
  } else if (lost) {
    SetState(*entry, trainer::v1::FAILED,
             absl::StrCat(lost_in_a_row, " attempts in a row were lost without a new checkpoint; "
                          "not retrying. The last: ", status.message()));
  } else if (status.ok()) {
    SetState(*entry, trainer::v1::SUCCEEDED, "");
  } else if (absl::IsCancelled(status) && interrupted) {
    SetState(*entry, trainer::v1::QUEUED,
             absl::StrCat("interrupted by daemon shutdown at ", epochs, " epochs (global step ",
                          step, ", checkpointed); it continues when traind restarts"));
  } else if (absl::IsCancelled(status)) {
    // The engine may say who cancelled it (a scheduler, from outside).
    SetState(*entry, trainer::v1::CANCELLED,
             status.message() == "cancelled" || status.message().empty()
                 ? "cancelled by request"
                 : std::string(status.message()));
  } else {
    SetState(*entry, trainer::v1::FAILED, std::string(status.message()));
  }
  absl::MutexLock lock(&mu_);
  if (queue_again) Enqueue(entry);
  ReleaseSlots(*entry);
}

}  // namespace traind::jobs
