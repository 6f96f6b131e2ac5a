// Internal to server/train: one training run over loaded data (the epoch
// loop, validation, checkpoints, weights), shared by Train and RunSweep.
// Not part of the engine's surface (trainer.h).
//
// Thread-safety: a Run is used by one thread; runs on different threads are
// independent.
#ifndef TRAIND_SERVER_TRAIN_RUN_H_
#define TRAIND_SERVER_TRAIN_RUN_H_

#include <exception>
#include <functional>
#include <string>

#include <opencv2/core.hpp>
#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "server/train/checkpoint.h"
#include "server/train/collective.h"
#include "server/train/config.h"
#include "server/train/data.h"
#include "server/train/model.h"
#include "server/train/thread_governor.h"

namespace traind::train {

struct LoadedData {
  DatasetIndex index;
  DecodedSet train;
  DecodedSet validation;
};

// Scans and decodes the dataset (through the shared decoded-image cache);
// warns about skipped images; fails when too many are unreadable.
absl::StatusOr<LoadedData> LoadData(const DataConfig& config, ProgressSink* sink);

struct EvalTotals {
  double loss_sum = 0;
  int64_t correct = 0;
  int64_t count = 0;
  Evaluation detail;  // validation passes only
  absl::Status status;  // the loader's, when it stopped early
};

class Run {
 public:
  // With a `collective` of world size > 1 this is one rank of a
  // data-parallel run (see TrainRank in trainer.h).
  Run(const TrainConfig& config, ProgressSink* sink, const CancelToken& cancel,
      Collective* collective = nullptr)
      : config_(config), sink_(sink), cancel_(cancel), collective_(collective) {}

  // Trains config.epochs epochs (from config.resume_from when set), then
  // writes the output weights.
  absl::StatusOr<TrainResult> Execute(const LoadedData& data);

  // Called after each epoch's metrics and checkpoint; false ends the run
  // early (successfully).
  void set_after_epoch(std::function<absl::StatusOr<bool>(const EpochResult&)> f) {
    after_epoch_ = std::move(f);
  }

  // The model's current weights as a torch.save archive and/or safetensors.
  absl::Status WriteWeightsTo(const std::string& pth, const std::string& safetensors);

 private:
  struct EpochState;

  // Device, threads, model, optimizer; reports the dataset.
  absl::Status Prepare(const LoadedData& data, TrainResult* result);
  // Where training starts: config.resume_from's position, or the beginning.
  absl::StatusOr<RunPosition> Resume(const LoadedData& data);
  // One epoch from `pos` (mid-way when resumed there): its batches and its
  // validation pass. Advances pos->global_step.
  absl::StatusOr<EpochResult> TrainEpoch(const LoadedData& data, int epoch, RunPosition* pos);
  absl::Status TrainBatches(const LoadedData& data, EpochState* epoch, RunPosition* pos);
  EvalTotals Evaluate(const DecodedSet& set, int epoch);
  // Data-parallel: this rank's share of an epoch's order (DistributedSampler's
  // rule: padded to a multiple of the world size, every world_size-th).
  std::vector<int64_t> RankShare(const std::vector<int64_t>& order, bool pad) const;
  // Rank 0's parameters and buffers on every rank.
  absl::Status SyncFromRankZero(bool parameters);
  // Forward and backward of this rank's share of a batch, gradients averaged
  // over the ranks with the step's figures and flags in the same allreduce.
  struct SharedStep {
    double loss_sum = 0;  // over every rank's images
    int64_t correct = 0;
    int64_t count = 0;
    bool stop = false;
    bool interrupt = false;
    StepPhases phases;  // this rank's
  };
  absl::StatusOr<SharedStep> DistributedStep(const torch::Tensor& x, const torch::Tensor& y);
  bool distributed() const { return collective_ && collective_->world_size() > 1; }
  int PrefetchDepth() const;
  // Writes `pos` (plus the model, the optimizer and the order generator's
  // state) durably under checkpoint_dir and reports it to the sink.
  absl::Status WriteCheckpoint(RunPosition pos);
  absl::Status WriteWeights();

  const TrainConfig& config_;
  ProgressSink* sink_;
  const CancelToken& cancel_;
  Collective* const collective_;
  torch::Tensor flat_;  // gradients + 5 figures, reused by every step's allreduce
  torch::Device device_{torch::kCPU};
  ResNet model_{nullptr};
  std::unique_ptr<torch::optim::Adam> optimizer_;
  at::Generator order_gen_;
  bool warned_single_ = false;
  // config_.adaptive_threads: the training steps' thread count.
  std::unique_ptr<ThreadGovernor> governor_;
  Evaluation last_evaluation_;
  std::function<absl::StatusOr<bool>(const EpochResult&)> after_epoch_;
};

// Runs `f`, turning LibTorch's and OpenCV's exceptions into a status: none
// may leave the engine.
template <typename F>
auto CatchingLibraryErrors(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("LibTorch: ", e.what_without_backtrace()));
  } catch (const cv::Exception& e) {
    return absl::InternalError(absl::StrCat("OpenCV: ", e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(e.what());
  }
}

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_RUN_H_
