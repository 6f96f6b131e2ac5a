#include "server/jobs/engine.h"

#include "server/train/data.h"

namespace traind::jobs {
namespace {

constexpr char kLostPayload[] = "type.traind/attempt-lost";

class LibTorchEngine final : public Engine {
 public:
  absl::Status Train(const train::TrainConfig& config, train::ProgressSink* sink,
                     const train::CancelToken& cancel) override {
    return train::Train(config, sink, cancel).status();
  }
  absl::StatusOr<train::SweepResult> Sweep(const train::TrainConfig& base,
                                           const train::SweepPlan& plan,
                                           const std::vector<train::TrialSpec>& trials,
                                           const std::set<int>& finished,
                                           const std::string& output_dir,
                                           train::SweepSink* sink,
                                           const train::CancelToken& cancel) override {
    return train::RunSweep(base, plan, trials, finished, output_dir, sink, cancel);
  }
  absl::Status CheckWeights(const std::string& path) override {
    return train::CheckWeightsFile(path);
  }
  absl::Status CheckDataset(const train::DataConfig& data) override {
    return train::ScanDataset(data).status();
  }
};

}  // namespace

absl::Status AttemptLost(absl::Status status) {
  status.SetPayload(kLostPayload, absl::Cord("1"));
  return status;
}

bool IsAttemptLost(const absl::Status& status) {
  return status.GetPayload(kLostPayload).has_value();
}

std::unique_ptr<Engine> NewLibTorchEngine() { return std::make_unique<LibTorchEngine>(); }

}  // namespace traind::jobs
