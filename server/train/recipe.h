// The reference recipe's pieces, shared by the trainer and the golden tests:
// model initialisation, freezing and optimizer groups (the step itself is in
// step.h).
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
#include "server/train/step.h"

namespace traind::train {

// Scratch: Xavier-uniform for every Conv2d and Linear weight, zero biases.
// Fine-tune: config.initial_weights without its classifier, then a new
// Linear(512, num_classes) with a Xavier-uniform weight. Initialisation draws
// from a generator seeded with config.data.seed.
absl::StatusOr<ResNet> BuildModel(const TrainConfig& config, int64_t num_classes);

// Scratch: Adam over every parameter at learning_rate. Fine-tune: freezes
// every block outside config.trainable_blocks and fc, then Adam with two
// groups: fc at learning_rate, the trainable blocks at backbone_learning_rate.
// The Adam is FusedAdam (fused_adam.h): the same arithmetic in one pass.
std::unique_ptr<torch::optim::Adam> BuildOptimizer(ResNet& model, const TrainConfig& config);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_RECIPE_H_
