#include "server/jobs/job_manager.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <set>
#include <system_error>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "common/sha256.h"
#include "common/spec.h"
#include "server/jobs/job_entry.h"
#include "server/jobs/paths.h"
#include "server/jobs/spec_config.h"
#include "server/train/config.h"

namespace traind::jobs {

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(Options options) {
  if (options.workers < 1) return absl::InvalidArgumentError("workers must be >= 1");
  const JobLayout layout(options.state_dir);
  std::error_code ec;
  fs::create_directories(layout.JobsRoot(), ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot create state directory ", options.state_dir, ": ", ec.message()));
  }
  // One daemon per state directory: a second one would corrupt the queue.
  const std::string lock_path = layout.LockFile();
  const int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd < 0 || ::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    if (lock_fd >= 0) ::close(lock_fd);
    return absl::FailedPreconditionError(absl::StrCat(
        "state directory ", options.state_dir, " is in use by another traind (", lock_path,
        " is locked)"));
  }
  auto store = Store::Open(layout.Database());
  if (!store.ok()) {
    ::close(lock_fd);
    return store.status();
  }
  // The roots are made only by a daemon that got this far, so that a
  // refused start leaves nothing behind.
  fs::create_directories(options.data_root, ec);
  fs::create_directories(options.weights_root, ec);
  if (!options.engine) return absl::InvalidArgumentError("JobManager: no engine given");
  std::unique_ptr<JobManager> m(new JobManager(std::move(options), std::move(*store)));
  m->lock_fd_ = lock_fd;
  if (auto st = m->Recover(); !st.ok()) return st;
  {
    absl::MutexLock lock(&m->mu_);
    m->Reschedule();
  }
  for (int i = 0; i < m->options_.workers; ++i) {
    m->workers_.emplace_back([mp = m.get()] { mp->WorkerLoop(); });
  }
  return m;
}

JobManager::JobManager(Options options, std::unique_ptr<Store> store)
    : options_(std::move(options)),
      layout_(options_.state_dir),
      store_(std::move(store)),
      engine_(options_.engine),
      events_(store_.get()),
      policy_(options_.policy) {}

JobManager::~JobManager() {
  Shutdown();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void JobManager::StoreFailed(Entry& entry, const absl::Status& status) {
  std::fprintf(stderr, "traind: %s\n", std::string(status.message()).c_str());
  absl::MutexLock lock(&mu_);
  // Reported once the job has stopped; a finished job keeps its outcome.
  if (Held(entry).store_error.ok() && !IsTerminal(Held(entry).job.state())) Held(entry).store_error = status;
  entry.cancel.Cancel();
}

void JobManager::Emit(Entry& entry, JobEvent event) {
  auto seq = events_.Append(entry.id, std::move(event));
  // An event that cannot be stored cannot be streamed: stop the job.
  if (!seq.ok()) StoreFailed(entry, seq.status());
}

Job JobManager::View(Entry& entry, bool full) {
  Job job;
  if (full) {
    job = Held(entry).job;
  } else {
    // The large fields are moved out around the copy (O(1), under mu_), so
    // a list never copies a confusion matrix only to drop it.
    std::unique_ptr<trainer::v1::Evaluation> evaluation(
        Held(entry).job.has_evaluation() ? Held(entry).job.release_evaluation() : nullptr);
    google::protobuf::RepeatedPtrField<std::string> class_names;
    google::protobuf::RepeatedPtrField<trainer::v1::TrialResult> trials;
    class_names.Swap(Held(entry).job.mutable_class_names());
    trials.Swap(Held(entry).job.mutable_trials());
    job = Held(entry).job;
    if (evaluation) Held(entry).job.set_allocated_evaluation(evaluation.release());
    class_names.Swap(Held(entry).job.mutable_class_names());
    trials.Swap(Held(entry).job.mutable_trials());
  }
  // The log's, so that a reader who saw an event never gets a smaller one.
  job.set_last_seq(events_.LastSeq(entry.id));
  if (const auto* spot = queue_.SpotOf(entry)) {
    job.set_queue_position(spot->position);
    job.set_waiting_reason(Describe(spot->reason, job.owner()));
  }
  return job;
}

void JobManager::Persist(Entry& entry) {
  Job row;
  {
    absl::MutexLock lock(&mu_);
    row = Held(entry).job;
  }
  if (auto st = store_->UpdateJob(row); !st.ok()) StoreFailed(entry, st);
}

void JobManager::SetState(Entry& entry, JobState state, const std::string& reason) {
  {
    absl::MutexLock lock(&mu_);
    Held(entry).job.set_state(state);
    if (IsTerminal(state)) Held(entry).job.set_end_time_ms(NowMs());
    if (state == trainer::v1::FAILED) Held(entry).job.set_error(reason);
  }
  Persist(entry);
  JobEvent ev;
  ev.mutable_state()->set_state(state);
  ev.mutable_state()->set_reason(reason);
  Emit(entry, std::move(ev));
}

absl::Status JobManager::RecordCheckpoint(Entry& entry, const CheckpointRecord& checkpoint) {
  absl::MutexLock io(&entry.io_mu);
  CheckpointRecord record = checkpoint;
  record.job_id = entry.id;
  {
    absl::MutexLock lock(&mu_);
    record.attempt = Held(entry).job.attempt();
  }
  if (auto st = store_->InsertCheckpoint(record); !st.ok()) {
    fs::remove(record.path);
    return st;
  }
  {
    absl::MutexLock lock(&mu_);
    Held(entry).job.set_checkpoint_epochs(record.epoch - 1);
    Held(entry).job.set_checkpoint_global_step(record.global_step);
    Held(entry).job.set_attempts_without_progress(0);
  }
  Persist(entry);
  // Keep the newest few; the record goes first, so a crash in between leaves
  // an unrecorded file rather than a record without its file.
  auto all = store_->ListCheckpoints(record.job_id);
  if (!all.ok()) return absl::OkStatus();
  for (size_t i = std::max(1, options_.keep_checkpoints); i < all->size(); ++i) {
    if (store_->DeleteCheckpoint(record.job_id, (*all)[i].path).ok()) {
      std::error_code ec;
      fs::remove((*all)[i].path, ec);
    }
  }
  return absl::OkStatus();
}

CheckpointRecord JobManager::PickCheckpoint(const std::shared_ptr<Entry>& entry) {
  auto all = store_->ListCheckpoints(entry->id);
  if (!all.ok()) return {};
  for (const CheckpointRecord& c : *all) {
    auto sha = Sha256File(c.path);
    std::string problem;
    if (!sha.ok()) {
      problem = std::string(sha.status().message());
    } else if (*sha != c.sha256) {
      problem = absl::StrCat("its SHA-256 is ", sha->substr(0, 12), "..., the recorded one ",
                             c.sha256.substr(0, 12), "...");
    } else {
      return c;
    }
    JobEvent ev;
    ev.mutable_log()->set_level(trainer::v1::LogMessage::WARNING);
    ev.mutable_log()->set_text(absl::StrCat("checkpoint ", fs::path(c.path).filename().string(),
                                            " (", c.epoch - 1, " epochs) is damaged: ", problem,
                                            "; falling back to the one before it"));
    Emit(*entry, std::move(ev));
  }
  return {};
}

std::shared_ptr<JobManager::Entry> JobManager::Find(const std::string& id,
                                                    const Caller& caller) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return nullptr;
  if (!caller.admin && Held(*it->second).job.owner() != caller.user) return nullptr;
  return it->second;
}

absl::StatusOr<std::string> JobManager::InitialWeightsPath(const JobSpec& spec,
                                                           const Caller& caller) {
  switch (spec.initial_weights_case()) {
    case JobSpec::kPretrainedFile:
      return ResolveBeneath(options_.weights_root, "the weights root", spec.pretrained_file(),
                            "pretrained_file");
    case JobSpec::kFromJob: {
      auto from = Find(spec.from_job(), caller);
      if (!from) {
        return absl::InvalidArgumentError(
            absl::StrCat("from_job: no job \"", spec.from_job(), "\""));
      }
      absl::MutexLock lock(&mu_);
      if (Held(*from).job.state() != trainer::v1::SUCCEEDED) {
        return absl::FailedPreconditionError(absl::StrCat(
            "from_job: job ", spec.from_job(), " is ",
            trainer::v1::JobState_Name(Held(*from).job.state()),
            "; only a SUCCEEDED job's weights can start another job"));
      }
      return layout_.Weights(spec.from_job(), trainer::v1::PTH);
    }
    default:
      return absl::FailedPreconditionError(absl::StrCat(
          "initial_weights: a ", trainer::v1::JobKind_Name(spec.kind()),
          " job needs starting weights, and traind downloads nothing. Either put a "
          "torchvision ResNet-18 checkpoint (e.g. resnet18-f37072fd.pth, saved with "
          "torch.save(model.state_dict())) in the daemon's weights root (its "
          "--weights-root directory) and set pretrained_file to its name (trainctl submit "
          "--pretrained NAME), or set from_job to the id of a SUCCEEDED job (trainctl submit "
          "--from-job ID)"));
  }
}

absl::StatusOr<std::string> JobManager::Submit(JobSpec spec,
                                               const std::string& client_request_id,
                                               const Caller& caller) {
  if (client_request_id.size() > 128) {
    return absl::InvalidArgumentError("request_id: longer than 128 characters");
  }
  // Request ids are per user: another user's retry key finds nothing.
  const std::string request_id =
      client_request_id.empty() || caller.user == "local"
          ? client_request_id
          : absl::StrCat(caller.user, "/", client_request_id);
  absl::MutexLock submitting(&submit_mu_);
  if (!request_id.empty()) {
    absl::MutexLock lock(&mu_);
    auto it = request_ids_.find(request_id);
    if (it != request_ids_.end()) return it->second;
  }
  // An older client's form of fields that changed form (device, precision).
  if (auto upgraded = UpgradeLegacySpec(&spec); !upgraded.ok()) return upgraded.status();
  ApplyDefaults(&spec);
  if (!spec.has_threads()) spec.set_threads(options_.threads_per_job);
  // The daemon's default reaches the jobs it trains itself (spec.cc).
  if (!spec.has_adaptive_threads()) {
    spec.set_adaptive_threads(options_.adaptive_threads && spec.distributed().world_size() <= 1);
  }
  if (!spec.has_winograd()) spec.set_winograd(options_.winograd);
  if (auto st = ValidateSpec(spec); !st.ok()) return st;
  {
    // The admin's policy (scheduler.h), before what the engine checks.
    absl::MutexLock lock(&mu_);
    if (auto st = CheckPriorityRights(caller, spec.priority(), spec.preemptible()); !st.ok()) {
      return st;
    }
    const Limits& limits = policy_.For(caller.user);
    const int world = std::max(1, spec.distributed().world_size());
    if (!caller.admin && limits.max_world_size >= 0 && world > limits.max_world_size) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "quota max_world_size: user ", caller.user, " may run ranks up to world size ",
          limits.max_world_size, "; this job asks for ", world));
    }
  }
  if (spec.kind() == trainer::v1::SWEEP) {
    if (auto trials = engine_->PlanSweep(ToPlan(spec.sweep())); !trials.ok()) {
      return trials.status();
    }
  }
  auto dataset = ResolveBeneath(options_.data_root, "the data root", spec.dataset(), "dataset");
  if (!dataset.ok()) return dataset.status();
  // Refused now, not when the job runs; named relative to the data root.
  if (auto st = engine_->CheckDistributed(spec.distributed()); !st.ok()) {
    return st;
  }
  if (auto st = engine_->CheckDataset(ToConfig(spec, *dataset).data); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset: ", absl::StrReplaceAll(st.message(), {{*dataset, spec.dataset()}})));
  }
  if (spec.kind() == trainer::v1::SCRATCH) {
    if (spec.initial_weights_case() != JobSpec::INITIAL_WEIGHTS_NOT_SET) {
      return absl::InvalidArgumentError(
          "initial_weights: a SCRATCH job starts from random weights; drop "
          "pretrained_file/from_job or use kind FINETUNE");
    }
  } else {
    auto weights = InitialWeightsPath(spec, caller);
    if (!weights.ok()) return weights.status();
    if (spec.has_pretrained_file()) {
      // Refuse an unusable checkpoint now rather than fail the job later.
      if (auto st = engine_->CheckWeights(*weights); !st.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("pretrained_file: ", spec.pretrained_file(), ": ", st.message()));
      }
    }
  }
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError("traind is shutting down");
    const Limits& limits = policy_.For(caller.user);
    const int waiting = queue_.CountOf(caller.user);
    if (!caller.admin && limits.max_queued_jobs >= 0) {
      if (waiting >= limits.max_queued_jobs) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "quota max_queued_jobs: user ", caller.user, " has ", waiting, " of ",
            limits.max_queued_jobs, " jobs waiting; wait for some to start or cancel them"));
      }
    }
    if (static_cast<int>(queue_.size()) >= options_.max_queued) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the queue is full (", queue_.size(), " jobs waiting); try again later"));
    }
    if (waiting >= options_.max_queued_per_user) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "user ", caller.user, " already has ", waiting, " jobs waiting (the limit is ",
          options_.max_queued_per_user, "); wait for some to start or cancel them"));
    }
  }
  auto index = store_->NextIndex();
  if (!index.ok()) return index.status();
  auto entry = std::make_shared<Entry>(*index, absl::StrFormat("job-%06d", *index));
  Job job;  // published under mu_ once stored
  job.set_id(entry->id);
  *job.mutable_spec() = spec;
  job.set_state(trainer::v1::QUEUED);
  job.set_create_time_ms(NowMs());
  job.set_tensorboard_dir(layout_.RunsDir(entry->id));
  job.set_owner(caller.user);
  if (auto st = store_->InsertJob(StoredJob{entry->index, request_id, job}); !st.ok()) return st;
  // Visible from here on; a Cancel waits until it is queued.
  absl::MutexLock io(&entry->io_mu);
  events_.Open(entry->id, 0, false);
  {
    absl::MutexLock lock(&mu_);
    Held(*entry).job = std::move(job);
    jobs_[entry->id] = entry;
    by_index_.push_back(entry);
    if (!request_id.empty()) request_ids_[request_id] = entry->id;
  }
  JobEvent ev;
  ev.mutable_state()->set_state(trainer::v1::QUEUED);
  Emit(*entry, std::move(ev));
  absl::MutexLock lock(&mu_);
  Enqueue(entry);
  Reschedule();
  return entry->id;
}

absl::StatusOr<Job> JobManager::GetJob(const std::string& id, const Caller& caller) {
  auto entry = Find(id, caller);
  if (!entry) return NoJob(id);
  absl::MutexLock lock(&mu_);
  return View(*entry);
}

absl::StatusOr<JobManager::Page> JobManager::ListJobs(
    int page_size, const std::string& page_token, const std::vector<JobState>& states,
    const Caller& caller, bool full) {
  if (page_size < 0 || page_size > 1000) {
    return absl::InvalidArgumentError("page_size: must be in [0, 1000]");
  }
  for (JobState s : states) {
    if (!trainer::v1::JobState_IsValid(s) || s == trainer::v1::JOB_STATE_UNSPECIFIED) {
      return absl::InvalidArgumentError(
          absl::StrCat("states: ", static_cast<int>(s), " is not a job state"));
    }
  }
  if (page_size == 0) page_size = 100;
  int64_t after = 0;
  if (!page_token.empty() && !absl::SimpleAtoi(page_token, &after)) {
    return absl::InvalidArgumentError("page_token: not a token this server issued");
  }
  Page page;
  absl::MutexLock lock(&mu_);
  for (const auto& e : by_index_) {
    if (e->index <= after) continue;
    if (!caller.admin && Held(*e).job.owner() != caller.user) continue;
    if (!states.empty() &&
        std::find(states.begin(), states.end(), Held(*e).job.state()) == states.end()) {
      continue;
    }
    if (static_cast<int>(page.jobs.size()) == page_size) {
      page.next_page_token = absl::StrCat(after);
      break;
    }
    page.jobs.push_back(View(*e, full));
    after = e->index;
  }
  return page;
}

absl::StatusOr<Job> JobManager::Cancel(const std::string& id, const Caller& caller) {
  auto entry = Find(id, caller);
  if (!entry) return NoJob(id);
  {
    absl::MutexLock io(&entry->io_mu);
    JobState state;
    bool on_worker;
    {
      absl::MutexLock lock(&mu_);
      state = Held(*entry).job.state();
      on_worker = Held(*entry).on_worker;
      if (state == trainer::v1::QUEUED && !on_worker) {
        queue_.Remove(*entry);
        Reschedule();
      }
    }
    if (state == trainer::v1::QUEUED && !on_worker) {
      SetState(*entry, trainer::v1::CANCELLED, "cancelled before it started");
    } else if (state == trainer::v1::PAUSED) {
      SetState(*entry, trainer::v1::CANCELLED, "cancelled while paused");
    } else if (state == trainer::v1::RUNNING || state == trainer::v1::QUEUED) {
      SetState(*entry, trainer::v1::CANCELLING, "cancel requested");
      entry->cancel.Cancel();
    }
  }
  absl::MutexLock lock(&mu_);
  return View(*entry);
}

absl::StatusOr<std::vector<JobEvent>> JobManager::ReadEvents(const std::string& id,
                                                             int64_t after_seq, int limit,
                                                             const Caller& caller) {
  if (!Find(id, caller)) return NoJob(id);
  if (after_seq < 0) return absl::InvalidArgumentError("after_seq: must be >= 0");
  return events_.Read(id, after_seq, limit);
}

bool JobManager::WaitForEvents(const std::string& id, int64_t after_seq,
                               absl::Duration timeout) {
  struct Flag {
    absl::Mutex mu;
    bool woken ABSL_GUARDED_BY(mu) = false;
  };
  auto flag = std::make_shared<Flag>();
  const int64_t subscription = events_.Subscribe(id, [flag] {
    absl::MutexLock lock(&flag->mu);
    flag->woken = true;
  });
  bool ready = events_.LastSeq(id) > after_seq || shutting_down();
  if (!ready) {
    absl::MutexLock lock(&flag->mu);
    ready = flag->mu.AwaitWithTimeout(absl::Condition(&flag->woken), timeout);
  }
  events_.Unsubscribe(subscription);
  return ready;
}

absl::StatusOr<std::unique_ptr<EventFollower>> JobManager::Follow(const std::string& id,
                                                                  int64_t after_seq,
                                                                  const Caller& caller,
                                                                  std::function<void()> wake) {
  auto entry = Find(id, caller);
  if (!entry) return NoJob(id);
  const int64_t last = events_.LastSeq(id);
  if (after_seq < 0 || after_seq > last) {
    return absl::InvalidArgumentError(absl::StrCat(
        "after_seq: ", after_seq, " is outside the job's events [0, ", last, "]"));
  }
  {
    absl::MutexLock lock(&mu_);
    int& open = open_streams_[caller.user];
    if (open >= options_.max_streams_per_user) {
      return absl::ResourceExhaustedError(
          absl::StrCat("user ", caller.user, " already has ", open,
                       " open streams (the limit is ", options_.max_streams_per_user, ")"));
    }
    ++open;
  }
  EventFollower::Hooks hooks;
  hooks.stopping = [this] { return shutting_down(); };
  hooks.release = [this, user = caller.user] {
    absl::MutexLock lock(&mu_);
    --open_streams_[user];
  };
  return std::make_unique<EventFollower>(&events_, id, after_seq, std::move(hooks),
                                         std::move(wake));
}

JobManager::Gauges JobManager::Snapshot() {
  Gauges g;
  absl::MutexLock lock(&mu_);
  g.queued = static_cast<int>(queue_.size());
  g.slots = options_.workers;
  for (const auto& e : holding_) g.slots_in_use += Held(*e).slots;
  for (const auto& e : by_index_) {
    if (Held(*e).job.state() == trainer::v1::RUNNING || Held(*e).job.state() == trainer::v1::CANCELLING) {
      ++g.running;
      g.images_per_second.emplace_back(e->id, Held(*e).images_per_second);
    }
  }
  return g;
}

void JobManager::BeginShutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& [id, e] : jobs_) {
      if (Held(*e).on_worker && Held(*e).job.state() != trainer::v1::CANCELLING) {
        Held(*e).interrupted = true;
        e->cancel.Interrupt();
      }
    }
  }
  events_.WakeAll();  // followers end with UNAVAILABLE
}

bool JobManager::shutting_down() {
  absl::MutexLock lock(&mu_);
  return stopping_;
}

void JobManager::Shutdown() {
  BeginShutdown();
  for (auto& t : workers_) {
    if (t.joinable()) t.join();
  }
}

}  // namespace traind::jobs
