// Internal to server/jobs: a job as the manager holds it, and the sink that
// turns an engine's progress into the job's events. Not for other layers.
#ifndef TRAIND_SERVER_JOBS_JOB_ENTRY_H_
#define TRAIND_SERVER_JOBS_JOB_ENTRY_H_

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/jobs/job_manager.h"
#include "server/jobs/tfevents.h"
#include "server/train/config.h"
#include "server/train/sweep.h"

namespace traind::jobs {

// The names the manager's files (job_*.cc) share.
namespace fs = std::filesystem;
using trainer::v1::Job;
using trainer::v1::JobEvent;
using trainer::v1::JobSpec;
using trainer::v1::JobState;

inline int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

inline absl::Status NoJob(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("no job \"", id, "\""));
}

// A const id, an atomic cancel token, the io_mu that orders a state change
// with its writes, and what the manager's mu_ guards: the job and its
// worker's flags. Those are reached only through JobManager::Held(entry),
// which requires mu_ (checked by the thread-safety build), so that no access
// goes unguarded by oversight.
struct JobManager::EntryState {
  trainer::v1::Job job;
  bool interrupted = false;  // by shutdown
  // A worker thread has the job (RUNNING, CANCELLING, or QUEUED while a
  // scheduler holds its ranks back).
  bool on_worker = false;
  absl::Status store_error;      // a failed write, sticky
  double images_per_second = 0;  // latest batch
  // Scheduling (scheduler.h). While on_worker: the slots it holds, when it
  // got them, and why it is stopping at its next checkpoint (paused, or
  // preempted by another job). While waiting, its place and reason are in
  // the manager's queue_.
  int slots = 0;
  int64_t started = 0;
  bool pause_requested = false;
  std::string preempted_by;
};

struct JobManager::Entry {
  Entry(int64_t index, std::string id) : index(index), id(std::move(id)) {}
  const int64_t index;
  const std::string id;
  train::CancelToken cancel;
  // Held across a state change and its writes (the row, the state event),
  // so that they follow the order of the changes; never taken under mu_.
  absl::Mutex io_mu;

 private:
  friend class JobManager;
  EntryState state_;  // JobManager::Held(*this), under mu_
};

inline JobManager::EntryState& JobManager::Held(Entry& entry) { return entry.state_; }

// Turns engine progress into job events, TensorBoard records and job
// fields. Called on the job's worker thread (sweep runs side by side: on
// several).
class JobManager::Sink final : public train::SweepSink {
 public:
  Sink(JobManager* manager, std::shared_ptr<Entry> entry, const trainer::v1::JobSpec& spec);

  void OnDataset(const train::DatasetSummary& d) override;
  void OnBatch(const train::BatchProgress& b) override;
  void OnEpoch(const train::EpochResult& r) override;
  void OnEvaluation(const train::Evaluation& ev) override;
  absl::Status OnCheckpoint(const train::CheckpointInfo& c) override;
  void OnInfo(const std::string& text) override;
  void OnPlacement(const train::Placement& placement) override;
  void OnWaiting(const std::string& reason) override;
  void OnStarted() override;
  void OnWarning(const std::string& text) override;
  void OnTrialStarted(const train::TrialSpec& spec, int run) override;
  void OnTrialFinished(const train::TrialOutcome& o) override;

 private:
  void Log(trainer::v1::LogMessage::Level level, const std::string& text);
  // TensorBoard scalars of run `run` (0 outside sweeps) at `epoch`, into the
  // job's folder or, in a sweep, into the folder of every trial that this
  // run trains up to that epoch. A file that cannot be written is reported
  // once and given up: the job itself goes on.
  void Scalars(int run, int epoch, int64_t step,
               std::initializer_list<std::pair<const char*, double>> values, bool flush);
  std::pair<double, double> LearningRates(int trial);

  JobManager* const m_;
  const std::shared_ptr<Entry> e_;
  const double learning_rate_;
  const double backbone_learning_rate_;
  absl::Mutex tb_mu_;
  bool tb_failed_ ABSL_GUARDED_BY(tb_mu_) = false;
  std::map<int, std::unique_ptr<EventFileWriter>> writers_ ABSL_GUARDED_BY(tb_mu_);
  // Sweep runs and the (trial, epochs) they train.
  std::map<int, std::vector<std::pair<int, int>>> run_trials_ ABSL_GUARDED_BY(tb_mu_);
  std::map<int, std::pair<double, double>> learning_rates_ ABSL_GUARDED_BY(tb_mu_);
};

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_JOB_ENTRY_H_
