// A ResNet's evaluation in bfloat16 on the CPU with every BatchNorm folded
// into the convolution before it, and the ReLU and the residual add done in
// the convolution's own epilogue: one oneDNN primitive per convolution and
// nothing between them, where bfloat16 autocast runs the convolution, casts
// the weight, then a BatchNorm pass (with the add and the ReLU). Maps of at
// most kGemmConvMaxPixels (layer4's) are one matrix product over their 3x3
// patches with the same epilogue, as the training step's are (gemm_conv.h).
// The stem's max pooling is oneDNN's, as in training (max_pool.h): LibTorch
// 1.13's took 5.6 ms on the stem's bfloat16 channels-last 32x64x64x64 map
// (2 threads, AVX-512 EPYC), a tenth of the evaluation step; oneDNN's 0.55.
// Measured there, batch 32 at 128 px: 1.27-1.35x tuned PyTorch's bf16
// evaluation, where autocast's path was 1.11-1.14x (README, "Benchmarks").
//
// In evaluation mode BatchNorm is a fixed affine map per channel, so
// conv(x, w) then BatchNorm is conv(x, w * s) + (beta - mean * s) with
// s = gamma / sqrt(var + eps): the weights are scaled in float and rounded to
// bfloat16 once, the bias stays float, and the sums, the bias, the add and the
// ReLU run in float before the one rounding to bfloat16 of each output. So the
// logits agree with autocast's within bfloat16 rounding, and are as close to
// float32's as autocast's are (tests/train/folded_eval_test.cc).
//
// The folding reads the weights once, at Make: a FoldedResNet serves one
// evaluation pass (Run::Evaluate makes one per validation pass) and does not
// see later changes to the model.
//
// Only where oneDNN has bfloat16 convolutions that sum in float, the CPUs
// where LibTorch's bfloat16 convolutions are oneDNN's (CpuHasOneDnnBf16Gemms):
// elsewhere, and when traind was built without oneDNN's headers, Make returns
// null and evaluation stays the module's forward under autocast.
//
// Thread-safety: like a module, used by one thread at a time; each call runs
// on the caller's intra-op threads.
#ifndef TRAIND_SERVER_TRAIN_FOLDED_EVAL_H_
#define TRAIND_SERVER_TRAIN_FOLDED_EVAL_H_

#include <memory>
#include <vector>

#include <torch/torch.h>

#include "server/train/model.h"

namespace traind::train {

class FoldedResNet {
 public:
  // `model`'s evaluation folded with its weights and running statistics now,
  // or null where folding does not apply: not enabled
  // (SetFoldedEvalEnabled), no oneDNN bfloat16 convolutions on this CPU or
  // in this build, the model not on the CPU, its parameters not float32, or
  // a module in training mode.
  static std::unique_ptr<FoldedResNet> Make(ResNetImpl& model);

  ~FoldedResNet();
  FoldedResNet(const FoldedResNet&) = delete;
  FoldedResNet& operator=(const FoldedResNet&) = delete;

  // The logits of `x` (N x 3 x H x W, float32 or bfloat16, any layout) as
  // model.forward(x) computes them in evaluation mode under bfloat16
  // autocast: a bfloat16 N x classes tensor.
  torch::Tensor Forward(const torch::Tensor& x);

 private:
  struct Conv;
  struct Block {
    Conv* conv1;
    Conv* conv2;
    Conv* downsample;  // null when the block has none
  };

  explicit FoldedResNet(ResNetImpl& model);

  ResNetImpl& model_;  // for the classifier, which stays the module's
  std::vector<std::unique_ptr<Conv>> convs_;
  Conv* stem_ = nullptr;
  std::vector<Block> blocks_;
};

// Process-wide; on by default. Off, Make returns null (engine_bench
// --folded_eval 0, for side-by-side figures).
void SetFoldedEvalEnabled(bool enabled);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_FOLDED_EVAL_H_
