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
// bf16 steps: Bf16Copy() hands out a bfloat16 copy of a parameter for the
// forward pass to read in place of the float one, which autocast would cast
// afresh every step; the copy's gradient, in bfloat16, is what the next
// step() reads, and step() writes the copy as it writes the parameter. That
// saves the cast of every trainable weight forward, the cast of its gradient
// back, and half the gradient's reads, with the same values as autocast's
// casts (round to nearest even, exact widening).
//
// It keeps torch::optim::Adam's state (AdamParamState per parameter), so
// checkpoints are unchanged and either class restores the other's. Options
// it does not fuse (amsgrad, weight decay) and parameters that are not dense
// float tensors on the CPU take torch::optim::Adam's own step.
//
// Thread-safety: as torch::optim::Adam (one thread steps at a time).
#ifndef TRAIND_SERVER_TRAIN_FUSED_ADAM_H_
#define TRAIND_SERVER_TRAIN_FUSED_ADAM_H_

#include <cstdint>
#include <string>
#include <unordered_map>

#include <torch/optim/adam.h>

namespace traind::train {

// The key torch::optim's optimizers keep a parameter's state under (its
// TensorImpl's address); FusedAdam and checkpoints use the same.
std::string OptimizerStateKey(const torch::Tensor& p);

class FusedAdam : public torch::optim::Adam {
 public:
  using torch::optim::Adam::Adam;

  torch::Tensor step(LossClosure closure = nullptr) override;

  // The bfloat16 copy of parameter `p` that a bf16 forward pass should read:
  // a leaf that requires grad, equal to `p` rounded to bfloat16 (remade when
  // `p` was written by anything but step(), such as a checkpoint restore).
  // Undefined when `p` is not one of this optimizer's parameters or cannot
  // take the fused update.
  torch::Tensor Bf16Copy(const torch::Tensor& p);

  // The gradient step() would apply to `p`: its own, else its copy's
  // (bfloat16), else undefined.
  torch::Tensor Gradient(const torch::Tensor& p) const;

  // Drops the gradients of the parameters and of their copies.
  void DropGradients();

 private:
  struct Copy {
    torch::Tensor value;   // bfloat16, p's layout
    const void* data = nullptr;  // p's storage and version when `value` was made
    int64_t version = 0;
  };
  bool FusesAll() const;

  std::unordered_map<const c10::TensorImpl*, Copy> copies_;
};

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_FUSED_ADAM_H_
