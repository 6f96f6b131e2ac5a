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

// A fine-tune step's frozen trunk one batch ahead.
//
// The recipe's fine-tune freezes the stem, layer1 and layer2 (recipe.h):
// their forward pass is 60 % of the network's work and needs no graph, and
// its result for a batch depends on that batch alone (frozen weights; its
// BatchNorms' batch statistics, whose running statistics matter only to
// evaluation). So the next batch's trunk can run during this step's backward
// pass, on the split pass's second thread (split_backward.h), which then
// takes weight gradients as usual: the backward pass and the next trunk are
// two streams that wait for each other once, at the pass's end, where the
// forward pass's every operator waited for both threads. The trunk always
// runs on one intra-op thread, ahead or not, so a step's results do not
// depend on whether its trunk was computed ahead (a job's first batch, a
// resumed one).

// How many stages after the stem are frozen with it (0-4), or -1 where the
// stem trains: every parameter of the stem and of those stages without
// requires_grad.
int FrozenStages(ResNet& model);

// A trunk computed ahead, for the next step.
struct TrunkAhead {
  torch::Tensor output;  // undefined: none
  // The trunk's BatchNorm buffers (running mean, variance, batch count) as
  // they were before it: DropTrunkAhead puts them back.
  std::vector<torch::Tensor> buffers_before;
};

// TrainStep with the model's first `frozen_stages` stages after the stem
// (FrozenStages >= 0) frozen: their forward pass, on one intra-op thread,
// is `ahead`'s output where defined (computed for these images), else
// computed first. Where `next_images` is defined, their trunk is computed
// during the backward pass into `ahead` (before the update: it reads no
// trainable weight).
StepResult TrainStepWithTrunk(ResNet& model, torch::optim::Optimizer& optimizer,
                              const torch::Tensor& images, const torch::Tensor& labels, bool bf16,
                              int frozen_stages, const torch::Tensor& next_images,
                              TrunkAhead* ahead);

// For a trunk computed ahead whose step will not run (the run stops, or
// checkpoints, first): its BatchNorms' running statistics back to before it,
// and `ahead` emptied.
void DropTrunkAhead(ResNet& model, int frozen_stages, TrunkAhead* ahead);

// The gradient the optimizer's next step applies to `p` (for FusedAdam, its
// bfloat16 copy's after a bf16 backward); undefined if none.
torch::Tensor GradientOf(torch::optim::Optimizer& optimizer, const torch::Tensor& p);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_STEP_H_
