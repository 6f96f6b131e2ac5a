#include "server/worker/local_engine.h"

#include "server/train/classifier.h"
#include "server/train/data.h"
#include "server/train/trainer.h"

namespace traind::worker {
namespace {

class LocalModel final : public jobs::Model {
 public:
  explicit LocalModel(std::unique_ptr<train::Classifier> classifier)
      : classifier_(std::move(classifier)) {}
  absl::StatusOr<std::vector<std::vector<train::Prediction>>> Classify(
      const std::vector<std::string>& encoded_images, int top_k) const override {
    return classifier_->Classify(encoded_images, top_k);
  }

 private:
  const std::unique_ptr<train::Classifier> classifier_;
};

class LocalEngine final : public jobs::Engine {
 public:
  absl::Status Train(const jobs::RunRequest& run, train::ProgressSink* sink,
                     const train::CancelToken& cancel) override {
    return train::Train(run.config, sink, cancel).status();
  }
  absl::StatusOr<std::vector<train::TrialSpec>> PlanSweep(const train::SweepPlan& plan) override {
    return train::ExpandTrials(plan);
  }
  absl::StatusOr<train::SweepResult> Sweep(const jobs::SweepRequest& r, train::SweepSink* sink,
                                           const train::CancelToken& cancel) override {
    return train::RunSweep(r.base, r.plan, r.trials, r.finished, r.output_dir, sink, cancel);
  }
  absl::Status CheckWeights(const std::string& path) override {
    return train::CheckWeightsFile(path);
  }
  absl::Status CheckDataset(const train::DataConfig& data) override {
    return train::ScanDataset(data).status();
  }
  absl::StatusOr<std::shared_ptr<const jobs::Model>> LoadModel(const std::string& weights_path,
                                                               int num_classes,
                                                               int image_size) override {
    auto classifier = train::Classifier::Load(weights_path, num_classes, image_size);
    if (!classifier.ok()) return classifier.status();
    return std::make_shared<const LocalModel>(std::move(*classifier));
  }
};

}  // namespace

std::unique_ptr<jobs::Engine> NewLocalEngine() { return std::make_unique<LocalEngine>(); }

}  // namespace traind::worker
