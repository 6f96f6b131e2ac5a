// One training run (fine-tune or scratch) and sweeps of runs: a config in, a
// result out, progress through a sink, cancellation through a token. No
// LibTorch types in this header.
//
// Thread-safety: runs may proceed concurrently on different threads; each
// uses its own model, optimizer and generators.
#ifndef TRAIND_SERVER_TRAIN_TRAINER_H_
#define TRAIND_SERVER_TRAIN_TRAINER_H_

#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/train/config.h"
#include "server/train/sweep.h"

namespace traind::train {

class Collective;

// One rank of a data-parallel run over `collective`: the same run as Train,
// with each global batch split over the ranks (DistributedSampler's rule),
// gradients averaged by one allreduce per step and validation sharded. Only
// rank 0's config should name checkpoint and output paths.
absl::StatusOr<TrainResult> TrainRank(const TrainConfig& config, Collective* collective,
                                      ProgressSink* sink, const CancelToken& cancel);

// Trains as `config` says and writes the final weights to the output paths.
// CANCELLED when `cancel` fired; INVALID_ARGUMENT / FAILED_PRECONDITION for
// bad data or weights; INTERNAL for a numeric failure (NaN loss).
absl::StatusOr<TrainResult> Train(const TrainConfig& config, ProgressSink* sink,
                                  const CancelToken& cancel);

// Runs the fine-tune trials of a sweep (base's settings overridden by each
// trial's), one run per group of trials that differ only in epochs, read at
// each trial's epoch count. Trials in `finished` are not reported again (a
// run whose trials are all finished is skipped). ASHA stops runs at plan.asha_rungs. Each trial's weights go to
// `output_dir`/trial-N.{pth,safetensors}.
absl::StatusOr<SweepResult> RunSweep(const TrainConfig& base, const SweepPlan& plan,
                                     const std::vector<TrialSpec>& trials,
                                     const std::set<int>& finished, const std::string& output_dir,
                                     SweepSink* sink, const CancelToken& cancel);

// Checks that `path` is a state_dict (torch.save zip or safetensors) that
// fits a ResNet-18 backbone (any classifier shape): INVALID_ARGUMENT naming
// the problem (legacy format, truncation, missing/extra keys, wrong shapes),
// NOT_FOUND if there is no such file.
absl::Status CheckWeightsFile(const std::string& path);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_TRAINER_H_
