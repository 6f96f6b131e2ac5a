#include "server/train/recipe.h"

#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "server/train/fused_adam.h"
#include "server/train/weights.h"

namespace traind::train {
namespace {

// LibTorch's initialisers draw from the global generator; seeding it and
// building a model must not interleave between concurrent jobs.
std::mutex& InitMutex() {
  static std::mutex mu;
  return mu;
}

// The block a parameter belongs to: "conv1" (stem incl. bn1), "layer1".."layer4", "fc".
std::string BlockOf(const std::string& name) {
  const std::string first = name.substr(0, name.find('.'));
  return first == "bn1" ? "conv1" : first;
}

}  // namespace

absl::StatusOr<ResNet> BuildModel(const TrainConfig& config, int64_t num_classes) {
  std::lock_guard<std::mutex> lock(InitMutex());
  torch::manual_seed(config.data.seed);
  ResNet model = ResNet18(num_classes);
  if (config.kind == Kind::kScratch) {
    XavierInit(*model);
    return model;
  }
  if (config.initial_weights.empty()) {
    return absl::FailedPreconditionError(
        "initial_weights: a fine-tune run needs starting weights");
  }
  auto weights = LoadStateDict(config.initial_weights);
  if (!weights.ok()) return weights.status();
  // The classifier is always new: its shape follows this dataset.
  if (auto st = CopyIntoModule(*weights, *model, {"fc.weight", "fc.bias"}); !st.ok()) {
    return st;
  }
  torch::NoGradGuard no_grad;
  torch::nn::init::xavier_uniform_(model->fc()->weight);
  return model;
}

std::unique_ptr<torch::optim::Adam> BuildOptimizer(ResNet& model, const TrainConfig& config) {
  if (config.kind == Kind::kScratch) {
    return std::make_unique<FusedAdam>(model->parameters(),
                                                torch::optim::AdamOptions(config.learning_rate));
  }
  std::set<std::string> trainable(config.trainable_blocks.begin(), config.trainable_blocks.end());
  std::vector<torch::Tensor> head, backbone;
  for (auto& p : model->named_parameters()) {
    const std::string block = BlockOf(p.key());
    if (block == "fc") {
      head.push_back(p.value());
    } else if (trainable.count(block)) {
      backbone.push_back(p.value());
    } else {
      p.value().set_requires_grad(false);
    }
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(head, std::make_unique<torch::optim::AdamOptions>(config.learning_rate));
  if (!backbone.empty()) {
    groups.emplace_back(backbone, std::make_unique<torch::optim::AdamOptions>(
                                      config.backbone_learning_rate));
  }
  return std::make_unique<FusedAdam>(groups,
                                              torch::optim::AdamOptions(config.learning_rate));
}

}  // namespace traind::train
