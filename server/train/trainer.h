// One training run (fine-tune or scratch) and sweeps of runs: a config in, a
// result out, progress through a sink, cancellation through a token. No
// LibTorch types in this header.
//
// Thread-safety: runs may proceed concurrently on different threads; each
// uses its own model, optimizer and generators.
#ifndef TRAIND_SERVER_TRAIN_TRAINER_H_
#define TRAIND_SERVER_TRAIN_TRAINER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/train/config.h"

namespace traind::train {

// Trains as `config` says and writes the final weights to the output paths.
// CANCELLED when `cancel` fired; INVALID_ARGUMENT / FAILED_PRECONDITION for
// bad data or weights; INTERNAL for a numeric failure (NaN loss).
absl::StatusOr<TrainResult> Train(const TrainConfig& config, ProgressSink* sink,
                                  const CancelToken& cancel);

struct TrialSpec {
  int epochs = 1;
  double learning_rate = 1e-3;
  double backbone_learning_rate = 1e-4;
};

struct TrialOutcome {
  int trial = 0;  // from 1
  TrialSpec spec;
  EpochResult final;
  std::string output_pth;
  std::string output_safetensors;
};

// Progress of a sweep: the run's events plus trial boundaries.
class SweepSink : public ProgressSink {
 public:
  virtual void OnTrialStarted(int trial, const TrialSpec& spec) = 0;
  virtual void OnTrialFinished(const TrialOutcome& outcome) = 0;
};

// Runs one fine-tune trial per entry of `trials` (base's epochs and learning
// rates replaced), each writing its weights under `output_dir`/trial-N.*.
// Returns the outcomes ranked by final validation loss, best first.
absl::StatusOr<std::vector<TrialOutcome>> RunSweep(
    const TrainConfig& base, const std::vector<TrialSpec>& trials,
    const std::string& output_dir, SweepSink* sink, const CancelToken& cancel);

// Checks that `path` is a state_dict (torch.save zip or safetensors) that
// fits a ResNet-18 backbone (any classifier shape): INVALID_ARGUMENT naming
// the problem (legacy format, truncation, missing/extra keys, wrong shapes),
// NOT_FOUND if there is no such file.
absl::Status CheckWeightsFile(const std::string& path);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_TRAINER_H_
