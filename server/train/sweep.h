// Sweep planning, independent of LibTorch: the trials of a search space
// (grid or seeded random search), the runs that train them (trials that
// differ only in their epoch count share one run), and asynchronous
// successive halving (ASHA) decisions.
#ifndef TRAIND_SERVER_TRAIN_SWEEP_H_
#define TRAIND_SERVER_TRAIN_SWEEP_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/train/config.h"

namespace traind::train {

struct SweepParam {
  std::string name;            // see IsSweepSetting
  std::vector<double> values;  // grid values, or the choices of a random draw
  double min = 0;              // random range when `values` is empty
  double max = 0;
  bool log = false;
};

struct SweepPlan {
  std::vector<int> epochs = {1, 3, 5};
  std::vector<double> learning_rates = {1e-3, 2e-3};
  double backbone_lr_ratio = 0.1;
  std::vector<SweepParam> params;
  bool random = false;
  int random_trials = 8;
  uint64_t random_seed = 0;
  std::vector<int> asha_rungs;  // empty: no early stopping
  double asha_reduction_factor = 3;
  int parallel_runs = 1;  // runs trained side by side, sharing the job's threads
};

struct TrialSpec {
  int trial = 0;  // from 1
  int epochs = 1;
  double learning_rate = 1e-3;
  double backbone_learning_rate = 1e-4;
  // Further searched settings, in the plan's parameter order.
  std::vector<std::pair<std::string, double>> settings;

  // learning rates and settings (not epochs) equal: the trials can share a run.
  bool SameRunAs(const TrialSpec& other) const;
  // Every searched setting, epochs and learning rates first.
  std::vector<std::pair<std::string, double>> AllSettings() const;
};

// Whether `name` can be searched.
bool IsSweepSetting(const std::string& name);

// Sets one searched setting on `config`; INVALID_ARGUMENT naming the setting
// when the value is out of its range.
absl::Status ApplySetting(const std::string& name, double value, TrainConfig* config);

// The trial's epochs, learning rates and settings on `config`.
absl::Status ApplyTrial(const TrialSpec& trial, TrainConfig* config);

// The trials of `plan`, numbered from 1: the grid in order (epochs vary
// fastest, then learning rates, then each parameter), or `random_trials`
// draws from a generator seeded with random_seed (the same every time).
absl::StatusOr<std::vector<TrialSpec>> ExpandTrials(const SweepPlan& plan);

// Trials that share a run: indices into `trials`, sorted by epochs; groups
// in order of their first trial.
std::vector<std::vector<size_t>> GroupRuns(const std::vector<TrialSpec>& trials);

// ASHA's stopping rule, as Ray Tune's ASHAScheduler applies it: at a rung, a
// run continues if its loss is at most the (100 / reduction_factor)-th
// percentile of the losses recorded at that rung before it (the first run at
// a rung always continues); the loss is then recorded.
class AshaRule {
 public:
  AshaRule(std::vector<int> rungs, double reduction_factor);
  bool IsRung(int epoch) const;
  struct Decision {
    bool keep = true;
    double cutoff = 0;  // valid when runs were recorded before
    int earlier = 0;    // runs recorded at the rung before this one
  };
  Decision Judge(int epoch, double validation_loss);

 private:
  std::vector<int> rungs_;
  double reduction_factor_;
  std::map<int, std::vector<double>> recorded_;
};

struct TrialOutcome {
  TrialSpec spec;
  int run = 0;         // the trial whose run trained it
  EpochResult final;   // figures of its last trained epoch
  int epochs_run = 0;
  double seconds = 0;  // wall time of its epochs
  std::string stopped;  // why it stopped early; empty if it ran all its epochs
  std::string output_pth;
  std::string output_safetensors;
};

// Progress of a sweep: the runs' events plus trial boundaries.
class SweepSink : public ProgressSink {
 public:
  virtual void OnTrialStarted(const TrialSpec& trial, int run) = 0;
  virtual void OnTrialFinished(const TrialOutcome& outcome) = 0;
};

struct SweepResult {
  std::vector<TrialOutcome> outcomes;  // trials run by this call, in finishing order
  int epochs_requested = 0;            // all trials' epochs summed
  int epochs_trained = 0;              // by this call
  int trials_stopped = 0;
};

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_SWEEP_H_
