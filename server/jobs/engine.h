// The seam between the job lifecycle and training: what a worker asks of an
// engine (train one attempt of a job, plan and run a sweep's trials, check a
// weights file, load a trained model for Classify), with progress,
// checkpoints and cancellation through the engine's sink and token. The
// in-process LibTorch engine (server/worker) and the distributed engine
// (server/launch) plug in here; tests use a fast fake, so the lifecycle
// (queue, cancel, restart, resume, sweeps' trial accounting, ownership,
// Classify's rules) is tested without training a network. Nothing here links
// LibTorch.
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
#include "trainer/v1/training_service.pb.h"

namespace traind::jobs {

// One attempt of a job: what to train, and where its ranks run.
struct RunRequest {
  train::TrainConfig config;
  // As the spec says, defaults applied; world_size 1: in this process.
  trainer::v1::Distributed distributed;
};

// The trials of a sweep still to train.
struct SweepRequest {
  train::TrainConfig base;  // every trial's settings but its own
  train::SweepPlan plan;
  std::vector<train::TrialSpec> trials;  // PlanSweep's
  std::set<int> finished;                // trials not to report again
  // Each trial's weights go to output_dir/trial-N.{pth,safetensors} (see
  // JobLayout).
  std::string output_dir;
};

// A trained model that classifies encoded images.
class Model {
 public:
  virtual ~Model() = default;
  // For each image, its top_k classes, most probable first; INVALID_ARGUMENT
  // naming the image index when one does not decode. Called from several
  // threads at once.
  virtual absl::StatusOr<std::vector<std::vector<train::Prediction>>> Classify(
      const std::vector<std::string>& encoded_images, int top_k) const = 0;
};

class Engine {
 public:
  virtual ~Engine() = default;

  // One attempt: trains as run.config says (resuming from
  // config.resume_from when set), reports through `sink`, writes
  // config.output_pth and config.output_safetensors. CANCELLED when
  // `cancel` fired.
  virtual absl::Status Train(const RunRequest& run, train::ProgressSink* sink,
                             const train::CancelToken& cancel) = 0;

  // The trials `plan` expands to; INVALID_ARGUMENT naming the setting when
  // it cannot (checked at submit).
  virtual absl::StatusOr<std::vector<train::TrialSpec>> PlanSweep(
      const train::SweepPlan& plan) = 0;
  virtual absl::StatusOr<train::SweepResult> Sweep(const SweepRequest& request,
                                                   train::SweepSink* sink,
                                                   const train::CancelToken& cancel) = 0;

  // Whether an attempt of `run` still goes on outside this process (a Slurm
  // job whose ranks kept training while the daemon restarted): Train then
  // takes it up where it is, the same attempt, no checkpoint restored.
  virtual bool StillRunning(const RunRequest& run) { return false; }

  // Refuses, at submit, starting weights the engine could not load.
  virtual absl::Status CheckWeights(const std::string& path) = 0;

  // Refuses, at submit, a dataset the engine could not train on (no class
  // folders, an empty class folder, too few images for the split), naming
  // the problem. Lists files; decodes nothing.
  virtual absl::Status CheckDataset(const train::DataConfig& data) = 0;

  // Refuses, at submit, a distributed block the engine cannot run (a
  // backend this LibTorch lacks, a launcher this daemon cannot reach),
  // naming the field. In-process engines run world size 1 only.
  virtual absl::Status CheckDistributed(const trainer::v1::Distributed& dist) {
    if (dist.world_size() <= 1) return absl::OkStatus();
    return absl::InvalidArgumentError(
        "distributed.world_size: this daemon trains in one process only");
  }

  // A state_dict file of a model with `num_classes` outputs, ready to
  // classify images of the size it was trained on.
  virtual absl::StatusOr<std::shared_ptr<const Model>> LoadModel(const std::string& weights_path,
                                                                 int num_classes,
                                                                 int image_size) = 0;
};

// Marks an engine's error as "the attempt was lost, not the job's fault" (a
// rank died, the collective broke): the job runs again from its newest
// checkpoint, bounded like a daemon restart by attempts without progress.
absl::Status AttemptLost(absl::Status status);
bool IsAttemptLost(const absl::Status& status);

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_ENGINE_H_
