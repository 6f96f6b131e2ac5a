// A fast fake of the training engine for job-lifecycle tests: it reports a
// tiny dataset, `batches` batches per epoch with losses that fall
// deterministically, a checkpoint after every epoch (and at an interrupt),
// and writes small weights files, honouring cancellation and resumption like
// the real engine. Batches can be held at a gate, so a test can keep a job
// running as long as it needs.
//
// Thread-safety: all methods may be called from any thread.
#ifndef TRAIND_TESTS_JOBS_FAKE_ENGINE_H_
#define TRAIND_TESTS_JOBS_FAKE_ENGINE_H_

#include <atomic>
#include <string>

#include "absl/synchronization/mutex.h"
#include "server/jobs/engine.h"

namespace traind::jobs {

class FakeEngine final : public Engine {
 public:
  explicit FakeEngine(int batches_per_epoch = 3) : batches_(batches_per_epoch) {}

  // While held, a run waits before each batch (until Release, Allow or a
  // cancel).
  void Hold() ABSL_LOCKS_EXCLUDED(mu_);
  // While held: lets `n` more batches (or sweep trials) through.
  void Allow(int n) ABSL_LOCKS_EXCLUDED(mu_);
  void Release() ABSL_LOCKS_EXCLUDED(mu_);
  // Interrupted runs stop without a checkpoint, as a killed daemon would.
  void SkipInterruptCheckpoints() { skip_interrupt_checkpoint_ = true; }
  // What StillRunning answers: a previous attempt's ranks kept running.
  void SetStillRunning(bool still) { still_running_ = still; }
  bool StillRunning(const RunRequest&) override { return still_running_.load(); }
  // Batches trained by all runs so far.
  int batches_trained() const { return trained_.load(); }
  // Train calls started so far.
  int runs() const { return runs_.load(); }

  // The config of the last Train call.
  train::TrainConfig last_config() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return last_config_;
  }
  // Models LoadModel gave out.
  int models_loaded() const { return models_loaded_.load(); }

  absl::Status Train(const RunRequest& run, train::ProgressSink* sink,
                     const train::CancelToken& cancel) override;
  // The real planner (train::ExpandTrials: no LibTorch).
  absl::StatusOr<std::vector<train::TrialSpec>> PlanSweep(const train::SweepPlan& plan) override;
  absl::StatusOr<train::SweepResult> Sweep(const SweepRequest& request, train::SweepSink* sink,
                                           const train::CancelToken& cancel) override;
  // A model of files this engine wrote: image i's classes are (its size +
  // k) mod num_classes; "not an image" does not decode.
  absl::StatusOr<std::shared_ptr<const Model>> LoadModel(const std::string& weights_path,
                                                         int num_classes,
                                                         int image_size) override;
  // Files this engine wrote ("fake weights ...") and nothing else.
  absl::Status CheckWeights(const std::string& path) override;
  absl::Status CheckDataset(const train::DataConfig& data) override { return absl::OkStatus(); }

 private:
  // Waits at the gate; false when cancelled meanwhile.
  bool Gate(const train::CancelToken& cancel) ABSL_LOCKS_EXCLUDED(mu_);

  const int batches_;
  std::atomic<int> trained_{0};
  std::atomic<int> runs_{0};
  std::atomic<int> models_loaded_{0};
  std::atomic<bool> skip_interrupt_checkpoint_{false};
  std::atomic<bool> still_running_{false};
  mutable absl::Mutex mu_;
  int budget_ ABSL_GUARDED_BY(mu_) = -1;
  train::TrainConfig last_config_ ABSL_GUARDED_BY(mu_);  // batches let through; -1: no limit
};

}  // namespace traind::jobs

#endif  // TRAIND_TESTS_JOBS_FAKE_ENGINE_H_
