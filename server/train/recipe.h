// The reference recipe's pieces, shared by the trainer and the golden tests:
// model initialisation, freezing and optimizer groups, and one training step.
//
// Thread-safety: BuildModel may be called from several threads (it
// serialises use of LibTorch's global generator); the rest act on objects
// owned by the caller.
#ifndef TRAIND_SERVER_TRAIN_RECIPE_H_
#define TRAIND_SERVER_TRAIN_RECIPE_H_

#include <memory>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "server/train/config.h"
#include "server/train/model.h"

namespace traind::train {

// Scratch: Xavier-uniform for every Conv2d and Linear weight, zero biases.
// Fine-tune: config.initial_weights without its classifier, then a new
// Linear(512, num_classes) with a Xavier-uniform weight. Initialisation draws
// from a generator seeded with config.data.seed.
absl::StatusOr<ResNet18> BuildModel(const TrainConfig& config, int64_t num_classes);

// Scratch: Adam over every parameter at learning_rate. Fine-tune: freezes
// every block outside config.trainable_blocks and fc, then Adam with two
// groups: fc at learning_rate, the trainable blocks at backbone_learning_rate.
std::unique_ptr<torch::optim::Adam> BuildOptimizer(ResNet18& model, const TrainConfig& config);

// Runs the ops of its scope in bfloat16 where LibTorch's CPU autocast policy
// allows (convolutions, linear layers) and in float32 elsewhere (losses,
// reductions); parameters and optimizer state stay float32. Thread-local.
class ScopedBf16Autocast {
 public:
  explicit ScopedBf16Autocast(bool enabled);
  ~ScopedBf16Autocast();
  ScopedBf16Autocast(const ScopedBf16Autocast&) = delete;
  ScopedBf16Autocast& operator=(const ScopedBf16Autocast&) = delete;

 private:
  const bool enabled_;
  bool was_enabled_ = false;
  c10::ScalarType was_dtype_ = c10::ScalarType::BFloat16;
};

struct StepResult {
  torch::Tensor logits;
  torch::Tensor loss;  // mean cross-entropy of the batch
};

// One step: forward in training mode, cross-entropy, backward, update; the
// forward pass under bfloat16 autocast when `bf16`.
StepResult TrainStep(ResNet18& model, torch::optim::Optimizer& optimizer,
                     const torch::Tensor& images, const torch::Tensor& labels,
                     bool bf16 = false);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_RECIPE_H_
