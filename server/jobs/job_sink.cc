// The engine bridge: progress of a run becomes the job's events, fields and
// TensorBoard records.
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/jobs/job_entry.h"

namespace traind::jobs {
namespace {

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
  m->set_forward_seconds(r.phases.forward_seconds);
  m->set_backward_seconds(r.phases.backward_seconds);
  m->set_allreduce_seconds(r.phases.allreduce_seconds);
  m->set_update_seconds(r.phases.update_seconds);
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

void ToProto(const train::Evaluation& ev, const Job& job, trainer::v1::Evaluation* out) {
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
}

}  // namespace

JobManager::Sink::Sink(JobManager* manager, std::shared_ptr<Entry> entry,
                       const trainer::v1::JobSpec& spec)
    : m_(manager),
      e_(std::move(entry)),
      learning_rate_(spec.learning_rate()),
      backbone_learning_rate_(spec.backbone_learning_rate()) {}

void JobManager::Sink::OnDataset(const train::DatasetSummary& d) {
  absl::MutexLock io(&e_->io_mu);
  {
    absl::MutexLock lock(&m_->mu_);
    Job& job = m_->Held(*e_).job;
    job.set_num_classes(static_cast<int>(d.class_names.size()));
    job.clear_class_names();
    for (const auto& c : d.class_names) job.add_class_names(c);
    job.set_train_images(d.train_images);
    job.set_validation_images(d.validation_images);
  }
  m_->Persist(*e_);
}

void JobManager::Sink::OnBatch(const train::BatchProgress& b) {
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
  {
    absl::MutexLock lock(&m_->mu_);
    m_->Held(*e_).images_per_second = b.images_per_second;
    m->set_attempt(m_->Held(*e_).job.attempt());
  }
  m_->Emit(*e_, std::move(ev));
}

void JobManager::Sink::OnEpoch(const train::EpochResult& r) {
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
  absl::MutexLock io(&e_->io_mu);
  {
    absl::MutexLock lock(&m_->mu_);
    ev.mutable_epoch()->set_attempt(m_->Held(*e_).job.attempt());
    *m_->Held(*e_).job.mutable_latest() = ev.epoch();
    if (m_->Held(*e_).job.spec().kind() == trainer::v1::SWEEP) {
      auto* summary = m_->Held(*e_).job.mutable_sweep_summary();
      summary->set_epochs_trained(summary->epochs_trained() + 1);
    }
  }
  m_->Emit(*e_, std::move(ev));
  m_->Persist(*e_);
}

void JobManager::Sink::OnEvaluation(const train::Evaluation& ev) {
  absl::MutexLock io(&e_->io_mu);
  {
    absl::MutexLock lock(&m_->mu_);
    Job& job = m_->Held(*e_).job;
    if (job.spec().kind() == trainer::v1::SWEEP) return;
    ToProto(ev, job, job.mutable_evaluation());
  }
  m_->Persist(*e_);
}

absl::Status JobManager::Sink::OnCheckpoint(const train::CheckpointInfo& c) {
  CheckpointRecord record;
  record.epoch = c.epoch;
  record.next_batch = c.next_batch;
  record.global_step = c.global_step;
  record.path = c.path;
  record.sha256 = c.sha256;
  record.size = c.size;
  return m_->RecordCheckpoint(*e_, record);
}

void JobManager::Sink::OnPlacement(const train::Placement& p) {
  absl::MutexLock io(&e_->io_mu);
  {
    absl::MutexLock lock(&m_->mu_);
    auto* out = m_->Held(*e_).job.mutable_placement();
    out->set_launcher(p.launcher);
    out->set_world_size(p.world_size);
    out->set_scheduler_job(p.scheduler_job);
    out->clear_ranks();
    for (const auto& r : p.ranks) out->add_ranks(r);
  }
  m_->Persist(*e_);
}

void JobManager::Sink::OnWaiting(const std::string& reason) {
  absl::MutexLock io(&e_->io_mu);
  {
    absl::MutexLock lock(&m_->mu_);
    // QUEUED again when the scheduler's reason changes (the launcher calls
    // only then); never over CANCELLING.
    const auto state = m_->Held(*e_).job.state();
    if (state != trainer::v1::RUNNING && state != trainer::v1::QUEUED) return;
  }
  m_->SetState(*e_, trainer::v1::QUEUED, reason);
}

void JobManager::Sink::OnStarted() {
  absl::MutexLock io(&e_->io_mu);
  {
    absl::MutexLock lock(&m_->mu_);
    if (m_->Held(*e_).job.state() != trainer::v1::QUEUED) return;
  }
  m_->SetState(*e_, trainer::v1::RUNNING, "");
}

void JobManager::Sink::OnInfo(const std::string& text) {
  Log(trainer::v1::LogMessage::INFO, text);
}

void JobManager::Sink::OnWarning(const std::string& text) {
  Log(trainer::v1::LogMessage::WARNING, text);
}

void JobManager::Sink::OnTrialStarted(const train::TrialSpec& spec, int run) {
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
  m_->Emit(*e_, std::move(ev));
}

void JobManager::Sink::OnTrialFinished(const train::TrialOutcome& o) {
  JobEvent ev;
  ToProto(o, ev.mutable_trial_finished()->mutable_result());
  absl::MutexLock io(&e_->io_mu);
  {
    absl::MutexLock lock(&m_->mu_);
    // Recorded with the job at once: finished trials stay finished across
    // restarts.
    *m_->Held(*e_).job.add_trials() = ev.trial_finished().result();
    auto* summary = m_->Held(*e_).job.mutable_sweep_summary();
    summary->set_trials_finished(m_->Held(*e_).job.trials_size());
    if (!o.stopped.empty()) summary->set_trials_stopped(summary->trials_stopped() + 1);
  }
  m_->Emit(*e_, std::move(ev));
  m_->Persist(*e_);
}

void JobManager::Sink::Log(trainer::v1::LogMessage::Level level, const std::string& text) {
  JobEvent ev;
  ev.mutable_log()->set_level(level);
  ev.mutable_log()->set_text(text);
  m_->Emit(*e_, std::move(ev));
}

void JobManager::Sink::Scalars(int run, int epoch, int64_t step,
                               std::initializer_list<std::pair<const char*, double>> values,
                               bool flush) {
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
        auto created = EventFileWriter::Create(m_->layout_.RunsDir(e_->id, trial));
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

std::pair<double, double> JobManager::Sink::LearningRates(int trial) {
  absl::MutexLock lock(&tb_mu_);
  auto it = learning_rates_.find(trial);
  if (it != learning_rates_.end()) return it->second;
  return {learning_rate_, backbone_learning_rate_};
}

}  // namespace traind::jobs
