// The engine's core: one training step and bfloat16 autocast. Depends on LibTorch alone (no OpenCV, gRPC, SQLite or Abseil), so
// that it and bench/engine_bench build against any LibTorch, CUDA builds
// included (see bench/gpu_check.sh).
//
// Thread-safety: autocast state is thread-local; TrainStep acts on objects
// owned by the caller.
#ifndef TRAIND_SERVER_TRAIN_STEP_H_
#define TRAIND_SERVER_TRAIN_STEP_H_

#include <torch/torch.h>

#include "server/train/config.h"
#include "server/train/model.h"

namespace traind::train {

// Runs the ops of its scope in bfloat16 where LibTorch's autocast policy for
// `device` allows (convolutions, linear layers) and in float32 elsewhere
// (losses, reductions); parameters and optimizer state stay float32.
class ScopedBf16Autocast {
 public:
  explicit ScopedBf16Autocast(bool enabled, torch::DeviceType device = torch::kCPU);
  ~ScopedBf16Autocast();
  ScopedBf16Autocast(const ScopedBf16Autocast&) = delete;
  ScopedBf16Autocast& operator=(const ScopedBf16Autocast&) = delete;

 private:
  const bool enabled_;
  const torch::DeviceType device_;
  bool was_enabled_ = false;
  c10::ScalarType was_dtype_ = c10::ScalarType::BFloat16;
};

struct StepResult {
  torch::Tensor logits;
  torch::Tensor loss;  // mean cross-entropy of the batch
  // Wall-clock seconds of the step's phases: forward (and the loss),
  // backward, and the optimizer's update (TrainStep only); no allreduce here
  // (Run's data-parallel step adds its own). On the CPU the work itself; on
  // a GPU only the launching of its kernels.
  StepPhases phases;
};

// Drops the gradients, then forward in training mode, cross-entropy and
// backward (no update): the first half of a step, the half that data-parallel
// ranks run before averaging their gradients. In bf16 with a FusedAdam, the
// trainable convolutions read its bfloat16 weight copies, so their gradients
// land on the copies: read them with GradientOf.
StepResult ForwardBackward(ResNet& model, torch::optim::Optimizer& optimizer,
                           const torch::Tensor& images, const torch::Tensor& labels,
                           bool bf16 = false);

// One step: forward in training mode, cross-entropy, backward, update; the
// forward pass under bfloat16 autocast (on the images' device) when `bf16`.
StepResult TrainStep(ResNet& model, torch::optim::Optimizer& optimizer,
                     const torch::Tensor& images, const torch::Tensor& labels,
                     bool bf16 = false);

// The gradient the optimizer's next step applies to `p` (for FusedAdam, its
// bfloat16 copy's after a bf16 backward); undefined if none.
torch::Tensor GradientOf(torch::optim::Optimizer& optimizer, const torch::Tensor& p);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_STEP_H_
