#include "server/jobs/job_manager.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <initializer_list>
#include <cstdio>
#include <set>
#include <filesystem>
#include <system_error>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/sha256.h"
#include "common/spec.h"
#include "server/jobs/paths.h"
#include "server/jobs/tfevents.h"
#include "server/train/config.h"
#include "server/train/trainer.h"

namespace traind::jobs {
namespace fs = std::filesystem;

using trainer::v1::Job;
using trainer::v1::JobEvent;
using trainer::v1::JobSpec;
using trainer::v1::JobState;

struct JobManager::Entry {
  int64_t index = 0;
  Job job;                        // guarded by JobManager::mu_
  train::CancelToken cancel;
  bool interrupted = false;       // by shutdown; guarded by JobManager::mu_
  absl::Status store_error;       // a failed write; guarded by JobManager::mu_
  double images_per_second = 0;   // latest batch; guarded by JobManager::mu_
};

namespace {

int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

void ToProto(const train::EpochResult& r, trainer::v1::EpochMetrics* m) {
  m->set_trial(r.trial);
  m->set_epoch(r.epoch);
  m->set_train_loss(r.train_loss);
  m->set_train_accuracy(r.train_accuracy);
  m->set_validation_loss(r.validation_loss);
  m->set_validation_accuracy(r.validation_accuracy);
  m->set_seconds(r.seconds);
  m->set_images_per_second(r.images_per_second);
  m->set_step_seconds(r.step_seconds);
  m->set_data_seconds(r.data_seconds);
  m->set_validation_seconds(r.validation_seconds);
}

void ToProto(const std::vector<std::pair<std::string, double>>& settings,
             google::protobuf::RepeatedPtrField<trainer::v1::SweepSetting>* out) {
  for (const auto& [name, value] : settings) {
    auto* s = out->Add();
    s->set_name(name);
    s->set_value(value);
  }
}

void ToProto(const train::TrialOutcome& o, trainer::v1::TrialResult* t) {
  t->set_trial(o.spec.trial);
  t->set_epochs(o.spec.epochs);
  t->set_learning_rate(o.spec.learning_rate);
  t->set_backbone_learning_rate(o.spec.backbone_learning_rate);
  ToProto(o.final, t->mutable_final());
  ToProto(o.spec.AllSettings(), t->mutable_settings());
  t->set_epochs_run(o.epochs_run);
  t->set_stopped(o.stopped);
  t->set_seconds(o.seconds);
  t->set_run(o.run);
}

train::SweepPlan ToPlan(const trainer::v1::SweepGrid& g) {
  train::SweepPlan p;
  p.epochs.assign(g.epochs().begin(), g.epochs().end());
  p.learning_rates.assign(g.learning_rates().begin(), g.learning_rates().end());
  p.backbone_lr_ratio = g.backbone_lr_ratio();
  for (const auto& param : g.parameters()) {
    train::SweepParam sp;
    sp.name = param.name();
    sp.values.assign(param.values().begin(), param.values().end());
    sp.min = param.min();
    sp.max = param.max();
    sp.log = param.log();
    p.params.push_back(std::move(sp));
  }
  p.random = g.search() == trainer::v1::SweepGrid::RANDOM;
  p.random_trials = g.has_random_trials() ? g.random_trials() : 8;
  p.random_seed = g.random_seed();
  p.asha_rungs.assign(g.asha().rungs().begin(), g.asha().rungs().end());
  p.asha_reduction_factor =
      g.asha().has_reduction_factor() ? g.asha().reduction_factor() : 3.0;
  p.parallel_runs = g.has_parallel_runs() ? g.parallel_runs() : 1;
  return p;
}

train::TrainConfig ToConfig(const JobSpec& spec, const std::string& dataset_dir) {
  train::TrainConfig c;
  c.kind = spec.kind() == trainer::v1::SCRATCH ? train::Kind::kScratch
                                               : train::Kind::kFinetune;
  c.data.dir = dataset_dir;
  c.data.exclude_classes.assign(spec.exclude_classes().begin(),
                                spec.exclude_classes().end());
  c.data.image_size = spec.image_size();
  c.data.train_fraction = spec.train_fraction();
  c.data.seed = spec.seed();
  const auto& a = spec.augmentation();
  c.data.augmentation = {a.hflip_probability(), a.rotation_degrees(), a.brightness(),
                         a.contrast(), a.saturation(), a.hue()};
  c.data.augment_validation = spec.augment_validation();
  c.data.loader_threads = spec.loader_threads();
  c.epochs = spec.epochs();
  c.batch_size = spec.batch_size();
  c.learning_rate = spec.learning_rate();
  c.backbone_learning_rate = spec.backbone_learning_rate();
  c.trainable_blocks.clear();
  for (const auto& b : spec.trainable_blocks()) {
    if (b != "fc") c.trainable_blocks.push_back(b);
  }
  c.device = spec.device();
  c.threads = spec.threads();
  c.bf16 = spec.precision() == "bf16";
  return c;
}

}  // namespace

// Turns engine progress into job events. Called on the job's worker thread.
class JobManager::Sink final : public train::SweepSink {
 public:
  Sink(JobManager* manager, std::shared_ptr<Entry> entry, std::string runs_dir,
       const JobSpec& spec)
      : m_(manager),
        e_(std::move(entry)),
        runs_dir_(std::move(runs_dir)),
        learning_rate_(spec.learning_rate()),
        backbone_learning_rate_(spec.backbone_learning_rate()) {}

  void OnDataset(const train::DatasetSummary& d) override {
    absl::MutexLock lock(&m_->mu_);
    Job& job = e_->job;
    job.set_num_classes(static_cast<int>(d.class_names.size()));
    job.clear_class_names();
    for (const auto& c : d.class_names) job.add_class_names(c);
    job.set_train_images(d.train_images);
    job.set_validation_images(d.validation_images);
    m_->Persist(*e_);
  }
  void OnBatch(const train::BatchProgress& b) override {
    JobEvent ev;
    auto* m = ev.mutable_batch();
    m->set_trial(b.trial);
    m->set_epoch(b.epoch);
    m->set_batch(b.batch);
    m->set_batches(b.batches);
    m->set_global_step(b.global_step);
    m->set_loss(b.loss);
    m->set_images_per_second(b.images_per_second);
    Scalars(b.trial, b.epoch, b.global_step, {{"Loss/train_batch", b.loss}}, false);
    absl::MutexLock lock(&m_->mu_);
    e_->images_per_second = b.images_per_second;
    m->set_attempt(e_->job.attempt());
    m_->Emit(*e_, std::move(ev));
  }
  void OnEpoch(const train::EpochResult& r) override {
    auto [lr, backbone_lr] = LearningRates(r.trial);
    Scalars(r.trial, r.epoch, r.epoch,
            {{"Loss/train_epoch", r.train_loss},
             {"Accuracy/train_epoch", r.train_accuracy},
             {"Loss/validation_epoch", r.validation_loss},
             {"Accuracy/validation_epoch", r.validation_accuracy},
             {"LearningRate/classifier", lr},
             {"LearningRate/backbone", backbone_lr},
             {"Throughput/images_per_second", r.images_per_second}},
            true);
    JobEvent ev;
    ToProto(r, ev.mutable_epoch());
    absl::MutexLock lock(&m_->mu_);
    ev.mutable_epoch()->set_attempt(e_->job.attempt());
    *e_->job.mutable_latest() = ev.epoch();
    if (e_->job.spec().kind() == trainer::v1::SWEEP) {
      auto* summary = e_->job.mutable_sweep_summary();
      summary->set_epochs_trained(summary->epochs_trained() + 1);
    }
    m_->Emit(*e_, std::move(ev));
    m_->Persist(*e_);
  }
  void OnEvaluation(const train::Evaluation& ev) override {
    absl::MutexLock lock(&m_->mu_);
    Job& job = e_->job;
    if (job.spec().kind() == trainer::v1::SWEEP) return;
    auto* out = job.mutable_evaluation();
    out->Clear();
    const int n = ev.num_classes;
    out->set_images(ev.images);
    out->set_top1_accuracy(ev.images ? static_cast<double>(ev.top1_correct) / ev.images : 0);
    out->set_top5_accuracy(ev.images ? static_cast<double>(ev.top5_correct) / ev.images : 0);
    for (int64_t c : ev.confusion) out->add_confusion(c);
    for (int k = 0; k < n; ++k) {
      int64_t support = 0, predicted = 0;
      for (int j = 0; j < n; ++j) {
        support += ev.confusion[k * n + j];
        predicted += ev.confusion[j * n + k];
      }
      const int64_t right = ev.confusion[k * n + k];
      auto* c = out->add_classes();
      c->set_name(k < job.class_names_size() ? job.class_names(k) : absl::StrCat(k));
      c->set_support(support);
      c->set_recall(support ? static_cast<double>(right) / support : 0);
      c->set_precision(predicted ? static_cast<double>(right) / predicted : 0);
    }
    m_->Persist(*e_);
  }
  absl::Status OnCheckpoint(const train::CheckpointInfo& c) override {
    CheckpointRecord record;
    record.epoch = c.epoch;
    record.next_batch = c.next_batch;
    record.global_step = c.global_step;
    record.path = c.path;
    record.sha256 = c.sha256;
    record.size = c.size;
    absl::MutexLock lock(&m_->mu_);
    return m_->RecordCheckpoint(*e_, record);
  }
  void OnInfo(const std::string& text) override { Log(trainer::v1::LogMessage::INFO, text); }
  void OnWarning(const std::string& text) override {
    Log(trainer::v1::LogMessage::WARNING, text);
  }
  void OnTrialStarted(const train::TrialSpec& spec, int run) override {
    {
      absl::MutexLock lock(&tb_mu_);
      run_trials_[run].push_back({spec.trial, spec.epochs});
      learning_rates_[spec.trial] = {spec.learning_rate, spec.backbone_learning_rate};
    }
    JobEvent ev;
    auto* t = ev.mutable_trial_started();
    t->set_trial(spec.trial);
    t->set_epochs(spec.epochs);
    t->set_learning_rate(spec.learning_rate);
    t->set_backbone_learning_rate(spec.backbone_learning_rate);
    ToProto(spec.AllSettings(), t->mutable_settings());
    t->set_run(run);
    absl::MutexLock lock(&m_->mu_);
    m_->Emit(*e_, std::move(ev));
  }
  void OnTrialFinished(const train::TrialOutcome& o) override {
    JobEvent ev;
    ToProto(o, ev.mutable_trial_finished()->mutable_result());
    absl::MutexLock lock(&m_->mu_);
    // Recorded with the job at once: finished trials stay finished across
    // restarts.
    *e_->job.add_trials() = ev.trial_finished().result();
    if (!o.stopped.empty()) {
      auto* summary = e_->job.mutable_sweep_summary();
      summary->set_trials_stopped(summary->trials_stopped() + 1);
    }
    m_->Emit(*e_, std::move(ev));
    m_->Persist(*e_);
  }

 private:
  void Log(trainer::v1::LogMessage::Level level, const std::string& text) {
    JobEvent ev;
    ev.mutable_log()->set_level(level);
    ev.mutable_log()->set_text(text);
    absl::MutexLock lock(&m_->mu_);
    m_->Emit(*e_, std::move(ev));
  }

  // TensorBoard scalars of run `run` (0 outside sweeps) at `epoch`, into
  // runs/<job>/ or, in a sweep, into the folder of every trial that this run
  // trains up to that epoch (runs/<job>/trial-N/). A file that cannot be
  // written is reported once and given up: the job itself goes on.
  void Scalars(int run, int epoch, int64_t step,
               std::initializer_list<std::pair<const char*, double>> values, bool flush) {
    std::vector<int> trials;
    std::string problem;
    {
      absl::MutexLock lock(&tb_mu_);
      if (tb_failed_) return;
      auto it = run_trials_.find(run);
      if (it == run_trials_.end()) {
        trials.push_back(run);
      } else {
        for (const auto& [trial, epochs] : it->second) {
          if (epochs >= epoch) trials.push_back(trial);
        }
      }
      const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
      for (int trial : trials) {
        auto& writer = writers_[trial];
        absl::Status st;
        if (!writer) {
          auto created = EventFileWriter::Create(
              trial == 0 ? runs_dir_
                         : (fs::path(runs_dir_) / absl::StrCat("trial-", trial)).string());
          if (created.ok()) {
            writer = std::move(*created);
          } else {
            st = created.status();
          }
        }
        for (const auto& [tag, value] : values) {
          if (st.ok()) st = writer->AddScalar(tag, step, value, now);
        }
        if (st.ok() && flush) st = writer->Flush();
        if (!st.ok()) {
          tb_failed_ = true;
          problem = std::string(st.message());
          break;
        }
      }
    }
    if (!problem.empty()) {
      OnWarning(absl::StrCat(problem, "; no more TensorBoard records for this job"));
    }
  }

  std::pair<double, double> LearningRates(int trial) {
    absl::MutexLock lock(&tb_mu_);
    auto it = learning_rates_.find(trial);
    if (it != learning_rates_.end()) return it->second;
    return {learning_rate_, backbone_learning_rate_};
  }

  JobManager* const m_;
  const std::shared_ptr<Entry> e_;
  const std::string runs_dir_;
  const double learning_rate_;
  const double backbone_learning_rate_;
  absl::Mutex tb_mu_;
  bool tb_failed_ ABSL_GUARDED_BY(tb_mu_) = false;
  std::map<int, std::unique_ptr<EventFileWriter>> writers_ ABSL_GUARDED_BY(tb_mu_);
  // Sweep runs and the (trial, epochs) they train.
  std::map<int, std::vector<std::pair<int, int>>> run_trials_ ABSL_GUARDED_BY(tb_mu_);
  std::map<int, std::pair<double, double>> learning_rates_ ABSL_GUARDED_BY(tb_mu_);
};

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(Options options) {
  if (options.workers < 1) return absl::InvalidArgumentError("workers must be >= 1");
  std::error_code ec;
  fs::create_directories(fs::path(options.state_dir) / "jobs", ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot create state directory ", options.state_dir, ": ", ec.message()));
  }
  // One daemon per state directory: a second one would corrupt the queue.
  const std::string lock_path = (fs::path(options.state_dir) / "LOCK").string();
  const int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd < 0 || ::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    if (lock_fd >= 0) ::close(lock_fd);
    return absl::FailedPreconditionError(absl::StrCat(
        "state directory ", options.state_dir, " is in use by another traind (", lock_path,
        " is locked)"));
  }
  auto store = Store::Open((fs::path(options.state_dir) / "traind.db").string());
  if (!store.ok()) {
    ::close(lock_fd);
    return store.status();
  }
  std::unique_ptr<JobManager> m(new JobManager(std::move(options), std::move(*store)));
  m->lock_fd_ = lock_fd;
  if (auto st = m->Recover(); !st.ok()) return st;
  for (int i = 0; i < m->options_.workers; ++i) {
    m->workers_.emplace_back([mp = m.get()] { mp->WorkerLoop(); });
  }
  return m;
}

JobManager::JobManager(Options options, std::unique_ptr<Store> store)
    : options_(std::move(options)), store_(std::move(store)) {}

JobManager::~JobManager() {
  Shutdown();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

absl::Status JobManager::Recover() {
  auto stored = store_->LoadJobs();
  if (!stored.ok()) return stored.status();
  absl::MutexLock lock(&mu_);
  for (auto& s : *stored) {
    auto entry = std::make_shared<Entry>();
    entry->index = s.index;
    entry->job = std::move(s.job);
    auto last = store_->LastSeq(entry->job.id());
    if (!last.ok()) return last.status();
    entry->job.set_last_seq(*last);
    if (entry->job.owner().empty()) entry->job.set_owner("local");  // stored before owners
    // Jobs stored before event files existed get their (empty) folder named too.
    if (entry->job.tensorboard_dir().empty()) {
      entry->job.set_tensorboard_dir(RunsDir(entry->job.id()));
    }
    jobs_[entry->job.id()] = entry;
    by_index_.push_back(entry);
    if (!s.request_id.empty()) request_ids_[s.request_id] = entry->job.id();
    switch (entry->job.state()) {
      case trainer::v1::RUNNING:
        if (entry->job.attempts_without_progress() >= options_.max_attempts_without_progress) {
          SetState(*entry, trainer::v1::FAILED,
                   absl::StrCat("the daemon stopped during ",
                                entry->job.attempts_without_progress(),
                                " attempts in a row without a new checkpoint (last good: ",
                                entry->job.checkpoint_epochs(),
                                " epochs); not retrying. Resubmit to start over"));
          break;
        }
        SetState(*entry, trainer::v1::QUEUED,
                 absl::StrCat("daemon restarted while attempt ", entry->job.attempt(),
                              " was running; it continues from its last checkpoint"));
        queue_.push_back(entry);
        break;
      case trainer::v1::CANCELLING:
        SetState(*entry, trainer::v1::CANCELLED, "daemon restarted while cancelling");
        break;
      case trainer::v1::QUEUED:
        queue_.push_back(entry);
        break;
      default:
        break;
    }
  }
  return absl::OkStatus();
}

std::string JobManager::RunsDir(const std::string& id) const {
  return (fs::path(options_.state_dir) / "runs" / id).string();
}

std::string JobManager::JobDir(const std::string& id) const {
  return (fs::path(options_.state_dir) / "jobs" / id).string();
}

void JobManager::Emit(Entry& entry, JobEvent event) {
  event.set_seq(entry.job.last_seq() + 1);
  event.set_time_ms(NowMs());
  if (auto st = store_->AppendEvent(entry.job.id(), event); !st.ok()) {
    std::fprintf(stderr, "traind: %s\n", std::string(st.message()).c_str());
    // An event that cannot be stored cannot be streamed: stop the job and
    // report why once it has stopped.
    if (entry.store_error.ok()) entry.store_error = st;
    entry.cancel.Cancel();
    return;
  }
  entry.job.set_last_seq(event.seq());
}

void JobManager::Persist(Entry& entry) {
  if (auto st = store_->UpdateJob(entry.job); !st.ok()) {
    std::fprintf(stderr, "traind: %s\n", std::string(st.message()).c_str());
    if (entry.store_error.ok() && !IsTerminal(entry.job.state())) entry.store_error = st;
    entry.cancel.Cancel();
  }
}

absl::Status JobManager::RecordCheckpoint(Entry& entry, const CheckpointRecord& checkpoint) {
  CheckpointRecord record = checkpoint;
  record.job_id = entry.job.id();
  record.attempt = entry.job.attempt();
  if (auto st = store_->InsertCheckpoint(record); !st.ok()) {
    fs::remove(record.path);
    return st;
  }
  entry.job.set_checkpoint_epochs(record.epoch - 1);
  entry.job.set_checkpoint_global_step(record.global_step);
  entry.job.set_attempts_without_progress(0);
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
  std::string id;
  {
    absl::MutexLock lock(&mu_);
    id = entry->job.id();
  }
  auto all = store_->ListCheckpoints(id);
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
    absl::MutexLock lock(&mu_);
    Emit(*entry, std::move(ev));
  }
  return {};
}

void JobManager::SetState(Entry& entry, JobState state, const std::string& reason) {
  entry.job.set_state(state);
  if (IsTerminal(state)) entry.job.set_end_time_ms(NowMs());
  if (state == trainer::v1::FAILED) entry.job.set_error(reason);
  Persist(entry);
  JobEvent ev;
  ev.mutable_state()->set_state(state);
  ev.mutable_state()->set_reason(reason);
  Emit(entry, std::move(ev));
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
      return ResolveBeneath(options_.weights_root, spec.pretrained_file(),
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
      return (fs::path(JobDir(spec.from_job())) / "weights.pth").string();
    }
    default:
      return absl::FailedPreconditionError(absl::StrCat(
          "initial_weights: a ", trainer::v1::JobKind_Name(spec.kind()),
          " job needs starting weights, and traind downloads nothing. Either put a "
          "torchvision ResNet-18 checkpoint (e.g. resnet18-f37072fd.pth, saved with "
          "torch.save(model.state_dict())) under the weights root ",
          options_.weights_root,
          " and set pretrained_file to its name (trainctl submit --pretrained NAME), "
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
  auto dataset = ResolveBeneath(options_.data_root, spec.dataset(), "dataset");
  if (!dataset.ok()) return dataset.status();
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
      if (auto st = train::CheckWeightsFile(*weights); !st.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("pretrained_file: ", spec.pretrained_file(), ": ", st.message()));
      }
    }
  }

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
  if (!request_id.empty()) {
    auto it = request_ids_.find(request_id);
    if (it != request_ids_.end()) return it->second;
  }
  auto index = store_->NextIndex();
  if (!index.ok()) return index.status();
  auto entry = std::make_shared<Entry>();
  entry->index = *index;
  Job& job = entry->job;
  job.set_id(absl::StrFormat("job-%06d", *index));
  *job.mutable_spec() = spec;
  job.set_state(trainer::v1::QUEUED);
  job.set_create_time_ms(NowMs());
  job.set_tensorboard_dir(RunsDir(job.id()));
  job.set_owner(caller.user);
  StoredJob stored{entry->index, request_id, job};
  if (auto st = store_->InsertJob(stored); !st.ok()) return st;
  jobs_[job.id()] = entry;
  by_index_.push_back(entry);
  if (!request_id.empty()) request_ids_[request_id] = job.id();
  JobEvent ev;
  ev.mutable_state()->set_state(trainer::v1::QUEUED);
  Emit(*entry, std::move(ev));
  queue_.push_back(entry);
  return job.id();
}

absl::StatusOr<Job> JobManager::GetJob(const std::string& id, const Caller& caller) {
  auto entry = Find(id, caller);
  if (!entry) return absl::NotFoundError(absl::StrCat("no job \"", id, "\""));
  absl::MutexLock lock(&mu_);
  return entry->job;
}

absl::StatusOr<JobManager::Page> JobManager::ListJobs(
    int page_size, const std::string& page_token, const std::vector<JobState>& states,
    const Caller& caller) {
  if (page_size < 0 || page_size > 1000) {
    return absl::InvalidArgumentError("page_size: must be in [0, 1000]");
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
    page.jobs.push_back(e->job);
    after = e->index;
  }
  return page;
}

absl::StatusOr<Job> JobManager::Cancel(const std::string& id, const Caller& caller) {
  auto entry = Find(id, caller);
  if (!entry) return absl::NotFoundError(absl::StrCat("no job \"", id, "\""));
  absl::MutexLock lock(&mu_);
  switch (entry->job.state()) {
    case trainer::v1::QUEUED:
      queue_.erase(std::remove(queue_.begin(), queue_.end(), entry), queue_.end());
      SetState(*entry, trainer::v1::CANCELLED, "cancelled before it started");
      break;
    case trainer::v1::RUNNING:
      SetState(*entry, trainer::v1::CANCELLING, "cancel requested");
      entry->cancel.Cancel();
      break;
    default:
      break;
  }
  return entry->job;
}

absl::StatusOr<std::vector<JobEvent>> JobManager::ReadEvents(const std::string& id,
                                                             int64_t after_seq,
                                                             int limit,
                                                             const Caller& caller) {
  if (!Find(id, caller)) return absl::NotFoundError(absl::StrCat("no job \"", id, "\""));
  if (after_seq < 0) return absl::InvalidArgumentError("after_seq: must be >= 0");
  return store_->ReadEvents(id, after_seq, limit);
}

bool JobManager::WaitForEvents(const std::string& id, int64_t after_seq,
                               absl::Duration timeout) {
  auto entry = Find(id);
  if (!entry) return true;
  absl::MutexLock lock(&mu_);
  auto ready = [this, &entry, after_seq]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || entry->job.last_seq() > after_seq;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
}

absl::StatusOr<JobManager::WeightsFile> JobManager::Weights(
    const std::string& id, trainer::v1::WeightsFormat format, int trial, const Caller& caller) {
  auto entry = Find(id, caller);
  if (!entry) return absl::NotFoundError(absl::StrCat("no job \"", id, "\""));
  {
    absl::MutexLock lock(&mu_);
    if (entry->job.state() != trainer::v1::SUCCEEDED) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", id, " is ", trainer::v1::JobState_Name(entry->job.state()),
          "; weights exist only for SUCCEEDED jobs"));
    }
  }
  std::string stem = "weights";
  if (trial != 0) {
    absl::MutexLock lock(&mu_);
    const auto& trials = entry->job.trials();
    if (std::none_of(trials.begin(), trials.end(),
                     [trial](const trainer::v1::TrialResult& t) { return t.trial() == trial; })) {
      return absl::InvalidArgumentError(absl::StrCat(
          "trial: job ", id, " has no finished trial ", trial,
          entry->job.spec().kind() == trainer::v1::SWEEP ? "" : " (it is not a sweep)"));
    }
    stem = absl::StrCat("trial-", trial);
  }
  WeightsFile file;
  file.path = (fs::path(JobDir(id)) /
               (stem + (format == trainer::v1::SAFETENSORS ? ".safetensors" : ".pth")))
                  .string();
  std::error_code ec;
  file.size = static_cast<int64_t>(fs::file_size(file.path, ec));
  if (ec) return absl::DataLossError(absl::StrCat("weights of ", id, " are missing: ", file.path));
  auto sha = Sha256File(file.path);
  if (!sha.ok()) return sha.status();
  file.sha256 = *sha;
  return file;
}

JobManager::Gauges JobManager::Snapshot() {
  Gauges g;
  absl::MutexLock lock(&mu_);
  g.queued = static_cast<int>(queue_.size());
  for (const auto& e : by_index_) {
    if (e->job.state() == trainer::v1::RUNNING || e->job.state() == trainer::v1::CANCELLING) {
      ++g.running;
      g.images_per_second.emplace_back(e->job.id(), e->images_per_second);
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
  const int top_k = request.top_k() == 0 ? 5 : request.top_k();
  // Resolves the weights (and refuses unfinished jobs and unknown trials).
  auto weights = Weights(request.job_id(), trainer::v1::SAFETENSORS, request.trial(), caller);
  if (!weights.ok()) return weights.status();
  Job job;
  {
    auto entry = Find(request.job_id(), caller);
    if (!entry) return absl::NotFoundError(absl::StrCat("no job \"", request.job_id(), "\""));
    absl::MutexLock lock(&mu_);
    job = entry->job;
  }
  std::shared_ptr<train::Classifier> classifier;
  {
    absl::MutexLock lock(&classifiers_mu_);
    auto& slot = classifiers_[{job.id(), request.trial()}];
    if (!slot) {
      auto loaded = train::Classifier::Load(weights->path, job.num_classes(),
                                            job.spec().image_size(), options_.threads_per_job);
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
  auto entry = Find(id, caller);
  if (!entry) return absl::NotFoundError(absl::StrCat("no job \"", id, "\""));
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
  // Rows first: a crash in between leaves files without rows, never rows
  // pointing at missing files.
  if (auto st = store_->DeleteJob(id); !st.ok()) return st;
  int64_t freed = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(JobDir(id), ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) freed += static_cast<int64_t>(it->file_size(ec));
  }
  fs::remove_all(JobDir(id), ec);
  fs::remove_all(RunsDir(id), ec);
  jobs_.erase(id);
  {
    absl::MutexLock classifiers_lock(&classifiers_mu_);
    for (auto it = classifiers_.begin(); it != classifiers_.end();) {
      it = it->first.first == id ? classifiers_.erase(it) : std::next(it);
    }
  }
  by_index_.erase(std::remove(by_index_.begin(), by_index_.end(), entry), by_index_.end());
  for (auto it = request_ids_.begin(); it != request_ids_.end();) {
    it = it->second == id ? request_ids_.erase(it) : std::next(it);
  }
  return freed;
}

void JobManager::BeginShutdown() {
  absl::MutexLock lock(&mu_);
  if (stopping_) return;
  stopping_ = true;
  for (auto& [id, e] : jobs_) {
    if (e->job.state() == trainer::v1::RUNNING) {
      e->interrupted = true;
      e->cancel.Interrupt();
    }
  }
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
      queue_.pop_front();
      entry->job.set_start_time_ms(NowMs());
      entry->job.set_attempt(entry->job.attempt() + 1);
      // Reset by the attempt's first checkpoint; counts crashes without one.
      entry->job.set_attempts_without_progress(entry->job.attempts_without_progress() + 1);
      SetState(*entry, trainer::v1::RUNNING, "");
    }
    RunJob(entry);
  }
}

void JobManager::RunJob(const std::shared_ptr<Entry>& entry) {
  JobSpec spec;
  std::string id;
  {
    absl::MutexLock lock(&mu_);
    spec = entry->job.spec();
    id = entry->job.id();
  }
  Sink sink(this, entry, RunsDir(id), spec);
  const std::string dir = JobDir(id);
  absl::Status status;
  std::error_code ec;
  fs::create_directories(dir, ec);
  auto dataset = ResolveBeneath(options_.data_root, spec.dataset(), "dataset");
  if (ec) {
    status = absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  } else if (!dataset.ok()) {
    status = dataset.status();
  } else {
    train::TrainConfig config = ToConfig(spec, *dataset);
    config.output_pth = (fs::path(dir) / "weights.pth").string();
    config.output_safetensors = (fs::path(dir) / "weights.safetensors").string();
    if (spec.kind() != trainer::v1::SCRATCH) {
      auto weights = InitialWeightsPath(spec);
      if (weights.ok()) {
        config.initial_weights = *weights;
      } else {
        status = weights.status();
      }
    }
    if (status.ok() && spec.kind() != trainer::v1::SWEEP) {
      config.checkpoint_dir = (fs::path(dir) / "checkpoints").string();
      const CheckpointRecord resume = PickCheckpoint(entry);
      config.resume_from = resume.path;
      absl::MutexLock lock(&mu_);
      if (entry->job.attempt() > 1) {
        JobEvent ev;
        auto* r = ev.mutable_resumed();
        r->set_attempt(entry->job.attempt());
        r->set_epoch(resume.path.empty() ? 0 : resume.epoch - 1);
        r->set_next_batch(resume.path.empty() ? 0 : resume.next_batch);
        r->set_global_step(resume.global_step);
        r->set_checkpoint_sha256(resume.sha256);
        Emit(*entry, std::move(ev));
      }
    }
    if (status.ok() && spec.kind() == trainer::v1::SWEEP) {
      const train::SweepPlan plan = ToPlan(spec.sweep());
      auto trials = train::ExpandTrials(plan);
      std::set<int> finished;
      {
        absl::MutexLock lock(&mu_);
        for (const auto& t : entry->job.trials()) finished.insert(t.trial());
        if (trials.ok()) {
          int requested = 0;
          for (const auto& t : *trials) requested += t.epochs;
          entry->job.mutable_sweep_summary()->set_epochs_requested(requested);
        }
      }
      auto outcome = trials.ok() ? train::RunSweep(config, plan, *trials, finished, dir, &sink,
                                                   entry->cancel)
                                 : absl::StatusOr<train::SweepResult>(trials.status());
      if (outcome.ok()) {
        absl::MutexLock lock(&mu_);
        auto* ranked = entry->job.mutable_trials();
        std::stable_sort(ranked->begin(), ranked->end(),
                         [](const trainer::v1::TrialResult& a,
                            const trainer::v1::TrialResult& b) {
                           return a.final().validation_loss() < b.final().validation_loss();
                         });
        // The sweep's weights are its best trial's.
        const std::string best = (fs::path(dir) / absl::StrCat("trial-", (*ranked)[0].trial()))
                                     .string();
        for (const auto& [from, to] : {std::pair{best + ".pth", config.output_pth},
                                       std::pair{best + ".safetensors",
                                                 config.output_safetensors}}) {
          fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
          if (ec) {
            status = absl::InternalError(absl::StrCat("cannot copy ", from, ": ", ec.message()));
          }
        }
      } else {
        status = outcome.status();
      }
    } else if (status.ok()) {
      status = train::Train(config, &sink, entry->cancel).status();
    }
  }

  std::string sha;
  int64_t size = 0;
  if (status.ok()) {
    auto digest = Sha256File((fs::path(dir) / "weights.pth").string());
    if (digest.ok()) {
      sha = *digest;
      size = static_cast<int64_t>(fs::file_size(fs::path(dir) / "weights.pth", ec));
    } else {
      status = digest.status();
    }
  }

  absl::MutexLock lock(&mu_);
  Job& job = entry->job;
  job.set_attempts_without_progress(0);  // it ended on its own
  if (!entry->store_error.ok()) {
    status = absl::Status(entry->store_error.code(),
                          absl::StrCat("cannot record the job's progress: ",
                                       entry->store_error.message()));
  }
  if (status.ok()) {
    job.set_weights_sha256(sha);
    job.set_weights_size(size);
    SetState(*entry, trainer::v1::SUCCEEDED, "");
  } else if (absl::IsCancelled(status) && entry->interrupted) {
    SetState(*entry, trainer::v1::QUEUED,
             absl::StrCat("interrupted by daemon shutdown at ", job.checkpoint_epochs(),
                          " epochs (global step ", job.checkpoint_global_step(),
                          ", checkpointed); it continues when traind restarts"));
  } else if (absl::IsCancelled(status)) {
    SetState(*entry, trainer::v1::CANCELLED, "cancelled by request");
  } else {
    SetState(*entry, trainer::v1::FAILED, std::string(status.message()));
  }
}

}  // namespace traind::jobs
