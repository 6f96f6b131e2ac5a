// Adam with the update of each parameter done in one pass over memory.
//
// LibTorch's Adam updates a parameter with seven tensor operations (two for
// each moment, a square root, a division, an addition, the final addcdiv),
// each a full pass over parameter-sized arrays: for the ten million trainable
// parameters of a fine-tune that is about 1.3 GB of memory traffic per step.
// FusedAdam reads the gradient, the parameter and both moments once and
// writes them once, with the same arithmetic in the same order and rounding
// as those operations, so the result is bit-identical wherever ATen's kernels
// use fused multiply-add (every AVX2 or AVX-512 CPU; tests/train/
// fused_adam_test.cc checks it against torch::optim::Adam).
//
// It keeps torch::optim::Adam's state (AdamParamState per parameter), so
// checkpoints are unchanged and either class restores the other's. Options
// it does not fuse (amsgrad, weight decay) and parameters that are not dense
// float tensors on the CPU take torch::optim::Adam's own step.
//
// Thread-safety: as torch::optim::Adam (one thread steps at a time).
#ifndef TRAIND_SERVER_TRAIN_FUSED_ADAM_H_
#define TRAIND_SERVER_TRAIN_FUSED_ADAM_H_

#include <torch/optim/adam.h>

namespace traind::train {

class FusedAdam : public torch::optim::Adam {
 public:
  using torch::optim::Adam::Adam;

  torch::Tensor step(LossClosure closure = nullptr) override;
};

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_FUSED_ADAM_H_
