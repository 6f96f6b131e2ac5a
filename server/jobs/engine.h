// The seam between the job lifecycle and training: what a worker asks of an
// engine (train a job's config, run a sweep's trials, check a weights file),
// with progress, checkpoints and cancellation through the engine's sink and
// token. The LibTorch engine is one implementation; tests use a fast fake,
// so the lifecycle (queue, cancel, restart, resume, sweeps' trial accounting,
// ownership) is tested without training a network. Remote ranks will be
// another.
//
// Thread-safety: an engine may run several jobs at once, each call on its
// own worker thread.
#ifndef TRAIND_SERVER_JOBS_ENGINE_H_
#define TRAIND_SERVER_JOBS_ENGINE_H_

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/train/config.h"
#include "server/train/sweep.h"
#include "server/train/trainer.h"

namespace traind::jobs {

class Engine {
 public:
  virtual ~Engine() = default;

  // One run: trains as `config` says (resuming from config.resume_from when
  // set), reports through `sink`, writes config.output_pth and
  // config.output_safetensors. CANCELLED when `cancel` fired.
  virtual absl::Status Train(const train::TrainConfig& config, train::ProgressSink* sink,
                             const train::CancelToken& cancel) = 0;

  // The trials of a sweep not in `finished`; each trial's weights go to
  // `output_dir`/trial-N.{pth,safetensors} (see JobLayout).
  virtual absl::StatusOr<train::SweepResult> Sweep(
      const train::TrainConfig& base, const train::SweepPlan& plan,
      const std::vector<train::TrialSpec>& trials, const std::set<int>& finished,
      const std::string& output_dir, train::SweepSink* sink,
      const train::CancelToken& cancel) = 0;

  // Whether a run of `config` still goes on outside this process (a Slurm
  // job whose ranks kept training while the daemon restarted): Train then
  // takes it up where it is, the same attempt, no checkpoint restored.
  virtual bool StillRunning(const train::TrainConfig& config) { return false; }

  // Refuses, at submit, starting weights the engine could not load.
  virtual absl::Status CheckWeights(const std::string& path) = 0;

  // Refuses, at submit, a dataset the engine could not train on (no class
  // folders, an empty class folder, too few images for the split), naming
  // the problem. Lists files; decodes nothing.
  virtual absl::Status CheckDataset(const train::DataConfig& data) = 0;

  // Refuses, at submit, a distributed block the engine cannot run (a
  // backend this LibTorch lacks), naming the field. In-process engines run
  // world size 1 only.
  virtual absl::Status CheckDistributed(const train::DistributedConfig& dist) {
    if (dist.world_size <= 1) return absl::OkStatus();
    return absl::InvalidArgumentError(
        "distributed.world_size: this daemon trains in one process only");
  }
};

// Marks an engine's error as "the attempt was lost, not the job's fault" (a
// rank died, the collective broke): the job runs again from its newest
// checkpoint, bounded like a daemon restart by attempts without progress.
absl::Status AttemptLost(absl::Status status);
bool IsAttemptLost(const absl::Status& status);

// Trains on LibTorch in this process (server/train).
std::unique_ptr<Engine> NewLibTorchEngine();

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_ENGINE_H_
