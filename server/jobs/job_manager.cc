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
namespace fs = std::filesystem;

using trainer::v1::Job;
using trainer::v1::JobEvent;
using trainer::v1::JobSpec;
using trainer::v1::JobState;

namespace {

int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

absl::Status NoJob(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("no job \"", id, "\""));
}

}  // namespace

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
  if (!options.engine) options.engine = NewLibTorchEngine();
  std::unique_ptr<JobManager> m(new JobManager(std::move(options), std::move(*store)));
  m->lock_fd_ = lock_fd;
  if (auto st = m->Recover(); !st.ok()) return st;
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
      events_(store_.get()) {}

JobManager::~JobManager() {
  Shutdown();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

absl::Status JobManager::Recover() {
  auto stored = store_->LoadJobs();
  if (!stored.ok()) return stored.status();
  std::vector<std::shared_ptr<Entry>> entries;
  for (auto& s : *stored) {
    auto entry = std::make_shared<Entry>(s.index, s.job.id());
    entry->job = std::move(s.job);
    auto last = store_->LastSeq(entry->id);
    if (!last.ok()) return last.status();
    events_.Open(entry->id, *last, IsTerminal(entry->job.state()));
    if (entry->job.owner().empty()) entry->job.set_owner("local");  // stored before owners
    // Jobs stored before event files existed get their (empty) folder named too.
    if (entry->job.tensorboard_dir().empty()) {
      entry->job.set_tensorboard_dir(layout_.RunsDir(entry->id));
    }
    absl::MutexLock lock(&mu_);
    jobs_[entry->id] = entry;
    by_index_.push_back(entry);
    if (!s.request_id.empty()) request_ids_[s.request_id] = entry->id;
    entries.push_back(entry);
  }
  // No worker runs yet; the queue is rebuilt in submission order.
  for (const auto& entry : entries) {
    absl::MutexLock io(&entry->io_mu);
    JobState state;
    int attempts, attempt, epochs;
    {
      absl::MutexLock lock(&mu_);
      state = entry->job.state();
      attempts = entry->job.attempts_without_progress();
      attempt = entry->job.attempt();
      epochs = entry->job.checkpoint_epochs();
    }
    switch (state) {
      case trainer::v1::RUNNING:
        // Killed from outside while training further than ever: progress,
        // not a crash loop (a job that kills the daemon itself does not get
        // past the same step).
        if (const int64_t reached = FurthestStep(*entry); reached > 0) {
          absl::MutexLock lock(&mu_);
          entry->job.set_max_global_step(reached);
          entry->job.set_attempts_without_progress(0);
          attempts = 0;
        }
        if (attempts >= options_.max_attempts_without_progress) {
          SetState(*entry, trainer::v1::FAILED,
                   absl::StrCat("the daemon stopped during ", attempts,
                                " attempts in a row without a new checkpoint (last good: ",
                                epochs, " epochs); not retrying. Resubmit to start over"));
          break;
        }
        // How it goes on (from its checkpoint, or ranks taken up where they
        // still run) is told when it starts.
        SetState(*entry, trainer::v1::QUEUED,
                 absl::StrCat("daemon restarted while attempt ", attempt, " was running"));
        {
          absl::MutexLock lock(&mu_);
          queue_.push_back(entry);
        }
        break;
      case trainer::v1::CANCELLING:
        SetState(*entry, trainer::v1::CANCELLED, "daemon restarted while cancelling");
        break;
      case trainer::v1::QUEUED: {
        absl::MutexLock lock(&mu_);
        queue_.push_back(entry);
        break;
      }
      default:
        break;
    }
  }
  return absl::OkStatus();
}

int64_t JobManager::FurthestStep(Entry& entry) {
  constexpr int kTail = 256;  // the last attempt's final batches are among these
  const int64_t last = events_.LastSeq(entry.id);
  int64_t known;
  int attempt;
  {
    absl::MutexLock lock(&mu_);
    known = std::max(entry.job.max_global_step(), entry.job.checkpoint_global_step());
    attempt = entry.job.attempt();
  }
  auto tail = store_->ReadEvents(entry.id, std::max<int64_t>(0, last - kTail), kTail);
  if (!tail.ok()) return 0;
  int64_t reached = 0;
  for (const auto& e : *tail) {
    if (e.has_batch() && e.batch().attempt() == attempt) {
      reached = std::max(reached, e.batch().global_step() + 1);
    }
  }
  return reached > known ? reached : 0;
}

void JobManager::StoreFailed(Entry& entry, const absl::Status& status) {
  std::fprintf(stderr, "traind: %s\n", std::string(status.message()).c_str());
  absl::MutexLock lock(&mu_);
  // Reported once the job has stopped; a finished job keeps its outcome.
  if (entry.store_error.ok() && !IsTerminal(entry.job.state())) entry.store_error = status;
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
    job = entry.job;
  } else {
    // The large fields are moved out around the copy (O(1), under mu_), so
    // a list never copies a confusion matrix only to drop it.
    std::unique_ptr<trainer::v1::Evaluation> evaluation(
        entry.job.has_evaluation() ? entry.job.release_evaluation() : nullptr);
    google::protobuf::RepeatedPtrField<std::string> class_names;
    google::protobuf::RepeatedPtrField<trainer::v1::TrialResult> trials;
    class_names.Swap(entry.job.mutable_class_names());
    trials.Swap(entry.job.mutable_trials());
    job = entry.job;
    if (evaluation) entry.job.set_allocated_evaluation(evaluation.release());
    class_names.Swap(entry.job.mutable_class_names());
    trials.Swap(entry.job.mutable_trials());
  }
  // The log's, so that a reader who saw an event never gets a smaller one.
  job.set_last_seq(events_.LastSeq(entry.id));
  return job;
}

void JobManager::Persist(Entry& entry) {
  Job row;
  {
    absl::MutexLock lock(&mu_);
    row = entry.job;
  }
  if (auto st = store_->UpdateJob(row); !st.ok()) StoreFailed(entry, st);
}

void JobManager::SetState(Entry& entry, JobState state, const std::string& reason) {
  {
    absl::MutexLock lock(&mu_);
    entry.job.set_state(state);
    if (IsTerminal(state)) entry.job.set_end_time_ms(NowMs());
    if (state == trainer::v1::FAILED) entry.job.set_error(reason);
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
    record.attempt = entry.job.attempt();
  }
  if (auto st = store_->InsertCheckpoint(record); !st.ok()) {
    fs::remove(record.path);
    return st;
  }
  {
    absl::MutexLock lock(&mu_);
    entry.job.set_checkpoint_epochs(record.epoch - 1);
    entry.job.set_checkpoint_global_step(record.global_step);
    entry.job.set_attempts_without_progress(0);
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
  if (!caller.admin && it->second->job.owner() != caller.user) return nullptr;
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
      if (from->job.state() != trainer::v1::SUCCEEDED) {
        return absl::FailedPreconditionError(absl::StrCat(
            "from_job: job ", spec.from_job(), " is ",
            trainer::v1::JobState_Name(from->job.state()),
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
          "--weights-root directory) and set pretrained_file to its name (trainctl submit --pretrained NAME), "
          "or set from_job to the id of a SUCCEEDED job (trainctl submit --from-job ID)"));
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
  ApplyDefaults(&spec);
  if (!spec.has_threads()) spec.set_threads(options_.threads_per_job);
  if (auto st = ValidateSpec(spec); !st.ok()) return st;
  if (spec.kind() == trainer::v1::SWEEP) {
    if (auto trials = train::ExpandTrials(ToPlan(spec.sweep())); !trials.ok()) {
      return trials.status();
    }
  }
  auto dataset = ResolveBeneath(options_.data_root, "the data root", spec.dataset(), "dataset");
  if (!dataset.ok()) return dataset.status();
  // Refused now, not when the job runs; named relative to the data root.
  if (auto st = engine_->CheckDistributed(ToConfig(spec, *dataset).distributed); !st.ok()) {
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
    if (static_cast<int>(queue_.size()) >= options_.max_queued) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the queue is full (", queue_.size(), " jobs waiting); try again later"));
    }
    const int mine = static_cast<int>(std::count_if(
        queue_.begin(), queue_.end(),
        [&caller](const std::shared_ptr<Entry>& e) { return e->job.owner() == caller.user; }));
    if (mine >= options_.max_queued_per_user) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "user ", caller.user, " already has ", mine, " jobs waiting (the limit is ",
          options_.max_queued_per_user, "); wait for some to start or cancel them"));
    }
  }
  auto index = store_->NextIndex();
  if (!index.ok()) return index.status();
  auto entry = std::make_shared<Entry>(*index, absl::StrFormat("job-%06d", *index));
  Job& job = entry->job;
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
    jobs_[entry->id] = entry;
    by_index_.push_back(entry);
    if (!request_id.empty()) request_ids_[request_id] = entry->id;
  }
  JobEvent ev;
  ev.mutable_state()->set_state(trainer::v1::QUEUED);
  Emit(*entry, std::move(ev));
  absl::MutexLock lock(&mu_);
  queue_.push_back(entry);
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
    if (!caller.admin && e->job.owner() != caller.user) continue;
    if (!states.empty() &&
        std::find(states.begin(), states.end(), e->job.state()) == states.end()) {
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
      state = entry->job.state();
      on_worker = entry->on_worker;
      if (state == trainer::v1::QUEUED && !on_worker) {
        queue_.erase(std::remove(queue_.begin(), queue_.end(), entry), queue_.end());
      }
    }
    if (state == trainer::v1::QUEUED && !on_worker) {
      SetState(*entry, trainer::v1::CANCELLED, "cancelled before it started");
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

absl::StatusOr<std::string> JobManager::WeightsPath(const std::string& id,
                                                    trainer::v1::WeightsFormat format, int trial,
                                                    const Caller& caller) {
  auto entry = Find(id, caller);
  if (!entry) return NoJob(id);
  {
    absl::MutexLock lock(&mu_);
    if (entry->job.state() != trainer::v1::SUCCEEDED) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", id, " is ", trainer::v1::JobState_Name(entry->job.state()),
          "; weights exist only for SUCCEEDED jobs"));
    }
    const auto& trials = entry->job.trials();
    if (trial != 0 &&
        std::none_of(trials.begin(), trials.end(),
                     [trial](const trainer::v1::TrialResult& t) { return t.trial() == trial; })) {
      return absl::InvalidArgumentError(absl::StrCat(
          "trial: job ", id, " has no finished trial ", trial,
          entry->job.spec().kind() == trainer::v1::SWEEP ? "" : " (it is not a sweep)"));
    }
  }
  std::string path = layout_.Weights(id, format, trial);
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    return absl::DataLossError(absl::StrCat("weights of ", id, " are missing: ", path));
  }
  return path;
}

absl::StatusOr<JobManager::WeightsFile> JobManager::Weights(
    const std::string& id, trainer::v1::WeightsFormat format, int trial, const Caller& caller) {
  auto path = WeightsPath(id, format, trial, caller);
  if (!path.ok()) return path.status();
  WeightsFile file;
  file.path = *std::move(path);
  std::error_code ec;
  file.size = static_cast<int64_t>(fs::file_size(file.path, ec));
  if (ec) return absl::DataLossError(absl::StrCat("weights of ", id, " are missing: ", file.path));
  auto sha = Sha256File(file.path);
  if (!sha.ok()) return sha.status();
  file.sha256 = *sha;
  return file;
}

absl::StatusOr<std::unique_ptr<WeightsReader>> JobManager::OpenWeights(
    const std::string& id, trainer::v1::WeightsFormat format, int trial, int64_t offset,
    const Caller& caller) {
  if (!trainer::v1::WeightsFormat_IsValid(format)) {
    return absl::InvalidArgumentError("format: unknown weights format");
  }
  if (format == trainer::v1::WEIGHTS_FORMAT_UNSPECIFIED) format = trainer::v1::PTH;
  if (trial < 0) return absl::InvalidArgumentError("trial: must be >= 0");
  auto file = Weights(id, format, trial, caller);
  if (!file.ok()) return file.status();
  return WeightsReader::Open(file->path, file->size, file->sha256, format, offset);
}

JobManager::Gauges JobManager::Snapshot() {
  Gauges g;
  absl::MutexLock lock(&mu_);
  g.queued = static_cast<int>(queue_.size());
  for (const auto& e : by_index_) {
    if (e->job.state() == trainer::v1::RUNNING || e->job.state() == trainer::v1::CANCELLING) {
      ++g.running;
      g.images_per_second.emplace_back(e->id, e->images_per_second);
    }
  }
  return g;
}

absl::StatusOr<trainer::v1::ClassifyResponse> JobManager::Classify(
    const trainer::v1::ClassifyRequest& request, const Caller& caller) {
  constexpr size_t kMaxImages = 64;
  constexpr size_t kMaxImageBytes = size_t{8} << 20;
  if (request.images().empty()) return absl::InvalidArgumentError("images: none given");
  if (static_cast<size_t>(request.images_size()) > kMaxImages) {
    return absl::InvalidArgumentError(absl::StrCat("images: at most ", kMaxImages, " per call"));
  }
  for (int i = 0; i < request.images_size(); ++i) {
    if (request.images(i).size() > kMaxImageBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "images[", i, "]: ", request.images(i).size(), " bytes, more than the 8 MiB limit"));
    }
  }
  if (request.top_k() < 0 || request.top_k() > 100) {
    return absl::InvalidArgumentError("top_k: must be in [1, 100]");
  }
  if (request.trial() < 0) return absl::InvalidArgumentError("trial: must be >= 0");
  const int top_k = request.top_k() == 0 ? 5 : request.top_k();
  // Resolves the weights (and refuses unfinished jobs and unknown trials).
  auto weights = WeightsPath(request.job_id(), trainer::v1::SAFETENSORS, request.trial(), caller);
  if (!weights.ok()) return weights.status();
  auto got = GetJob(request.job_id(), caller);
  if (!got.ok()) return got.status();
  const Job& job = *got;
  std::shared_ptr<train::Classifier> classifier;
  {
    absl::MutexLock lock(&classifiers_mu_);
    auto& slot = classifiers_[{job.id(), request.trial()}];
    if (!slot) {
      auto loaded =
          train::Classifier::Load(*weights, job.num_classes(), job.spec().image_size());
      if (!loaded.ok()) return loaded.status();
      slot = std::move(*loaded);
    }
    classifier = slot;
  }
  std::vector<std::string> images(request.images().begin(), request.images().end());
  auto predictions = classifier->Classify(images, top_k);
  if (!predictions.ok()) return predictions.status();
  trainer::v1::ClassifyResponse response;
  for (const auto& per_image : *predictions) {
    auto* r = response.add_results();
    for (const auto& p : per_image) {
      auto* out = r->add_predictions();
      out->set_class_index(p.class_index);
      out->set_class_name(p.class_index < job.class_names_size() ? job.class_names(p.class_index)
                                                                 : absl::StrCat(p.class_index));
      out->set_probability(p.probability);
    }
  }
  return response;
}

absl::StatusOr<int64_t> JobManager::Delete(const std::string& id, const Caller& caller) {
  absl::MutexLock submitting(&submit_mu_);  // no job starts from it meanwhile
  auto entry = Find(id, caller);
  if (!entry) return NoJob(id);
  absl::MutexLock io(&entry->io_mu);
  {
    absl::MutexLock lock(&mu_);
    if (!IsTerminal(entry->job.state())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", id, " is ", trainer::v1::JobState_Name(entry->job.state()),
          "; only a finished job can be deleted (cancel it first)"));
    }
    for (const auto& [other_id, other] : jobs_) {
      if (!IsTerminal(other->job.state()) && other->job.spec().from_job() == id) {
        return absl::FailedPreconditionError(absl::StrCat(
            "job ", other_id, " starts from the weights of ", id, " and has not ended"));
      }
    }
  }
  // Rows first: a crash in between leaves files without rows, never rows
  // pointing at missing files.
  if (auto st = store_->DeleteJob(id); !st.ok()) return st;
  int64_t freed = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(layout_.JobDir(id), ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) freed += static_cast<int64_t>(it->file_size(ec));
  }
  fs::remove_all(layout_.JobDir(id), ec);
  fs::remove_all(layout_.RunsDir(id), ec);
  {
    absl::MutexLock lock(&mu_);
    jobs_.erase(id);
    by_index_.erase(std::remove(by_index_.begin(), by_index_.end(), entry), by_index_.end());
    for (auto it = request_ids_.begin(); it != request_ids_.end();) {
      it = it->second == id ? request_ids_.erase(it) : std::next(it);
    }
  }
  events_.Forget(id);
  absl::MutexLock classifiers_lock(&classifiers_mu_);
  for (auto it = classifiers_.begin(); it != classifiers_.end();) {
    it = it->first.first == id ? classifiers_.erase(it) : std::next(it);
  }
  return freed;
}

void JobManager::BeginShutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& [id, e] : jobs_) {
      if (e->on_worker && e->job.state() != trainer::v1::CANCELLING) {
        e->interrupted = true;
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

void JobManager::WorkerLoop() {
  while (true) {
    std::shared_ptr<Entry> entry;
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !queue_.empty();
      };
      mu_.Await(absl::Condition(&has_work));
      if (stopping_) return;
      entry = queue_.front();
    }
    // Taken only if still first in the queue once its io_mu is held: a
    // Cancel or another worker may have got there first.
    absl::ReleasableMutexLock io(&entry->io_mu);
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      if (queue_.empty() || queue_.front() != entry) continue;
      queue_.pop_front();
      entry->job.set_start_time_ms(NowMs());
      entry->job.set_attempt(entry->job.attempt() + 1);
      // Reset by the attempt's first checkpoint; counts crashes without one.
      entry->job.set_attempts_without_progress(entry->job.attempts_without_progress() + 1);
      entry->on_worker = true;
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
    config.checkpoint_dir = layout_.CheckpointDir(id);
    const CheckpointRecord resume = PickCheckpoint(entry);
    config.resume_from = resume.path;
    int attempt;
    {
      absl::MutexLock lock(&mu_);
      attempt = entry->job.attempt();
    }
    if (attempt > 1 && engine_->StillRunning(config)) {
      // Not a new attempt: the previous one's ranks kept training.
      {
        absl::MutexLock io(&entry->io_mu);
        {
          absl::MutexLock lock(&mu_);
          entry->job.set_attempt(attempt - 1);
          entry->job.set_attempts_without_progress(
              std::max(0, entry->job.attempts_without_progress() - 1));
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
    return engine_->Train(config, sink, entry->cancel);
  }

  const train::SweepPlan plan = ToPlan(spec.sweep());
  auto trials = train::ExpandTrials(plan);
  if (!trials.ok()) return trials.status();
  std::set<int> finished;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& t : entry->job.trials()) finished.insert(t.trial());
    int requested = 0;
    for (const auto& t : *trials) requested += t.epochs;
    auto* summary = entry->job.mutable_sweep_summary();
    summary->set_epochs_requested(requested);
    summary->set_trial_count(static_cast<int32_t>(trials->size()));
    summary->set_trials_finished(static_cast<int32_t>(finished.size()));
  }
  auto outcome = engine_->Sweep(config, plan, *trials, finished, dir, sink, entry->cancel);
  if (!outcome.ok()) return outcome.status();
  int best;
  {
    absl::MutexLock lock(&mu_);
    auto* ranked = entry->job.mutable_trials();
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
    spec = entry->job.spec();
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
  bool interrupted;
  int epochs;
  int64_t step;
  int attempt = 0;
  int lost_in_a_row = 0;
  const bool lost = IsAttemptLost(status) && !entry->cancel.cancelled();
  {
    absl::MutexLock lock(&mu_);
    Job& job = entry->job;
    attempt = job.attempt();
    lost_in_a_row = job.attempts_without_progress();
    // A lost attempt counts like a daemon crash; otherwise it ended on its own.
    if (!lost) job.set_attempts_without_progress(0);
    if (!entry->store_error.ok()) {
      status = absl::Status(entry->store_error.code(),
                            absl::StrCat("cannot record the job's progress: ",
                                         entry->store_error.message()));
    }
    if (status.ok()) {
      job.set_weights_sha256(sha);
      job.set_weights_size(size);
    }
    interrupted = entry->interrupted;
    entry->on_worker = false;
    epochs = job.checkpoint_epochs();
    step = job.checkpoint_global_step();
  }
  if (lost && lost_in_a_row < options_.max_attempts_without_progress) {
    SetState(*entry, trainer::v1::QUEUED,
             absl::StrCat("attempt ", attempt, " was lost (", status.message(),
                          "); it runs again from its last checkpoint"));
    absl::MutexLock lock(&mu_);
    queue_.push_front(entry);
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
}

}  // namespace traind::jobs
