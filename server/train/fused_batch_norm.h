// BatchNorm, then the residual add and the ReLU that follow it in a ResNet
// block, as one pass over memory forward and two backward, for bfloat16
// channels-last activations on the CPU.
//
// LibTorch 1.13's BatchNorm is slow on bfloat16 activations with float
// parameters (the mixed precision of bf16 autocast): on a 2-core AVX-512
// BF16 CPU, the stem's 32x64x64x64 map took 1.3 ms forward and 3.1 ms
// backward in training mode, where copying it takes 0.17 ms, and the ReLU
// after it (in place) and its backward are two more passes. Here the batch
// statistics, the normalisation, the add and the ReLU run in float over the
// bfloat16 values, 64 channels at a time in vector registers; the backward
// pass reads the input, the output (for the ReLU's mask) and the gradient.
//
// Same arithmetic as LibTorch's sequence: float statistics (summed per
// 256-row block in float, the blocks in double, so the result does not depend
// on the thread count), the biased variance for normalising and the unbiased
// one for the running variance, each result rounded to bfloat16 where the
// sequence rounds it (after BatchNorm, after the add). Outputs agree with the
// sequence's within one bfloat16 rounding step, gradients within bfloat16
// rounding (tests/train/fused_batch_norm_test.cc).
//
// Float activations stay LibTorch's: its sums' order is part of traind's
// exact agreement with PyTorch in fp32. Fused, a 2-rank job trained for an
// epoch ended 0.01 from PyTorch DDP's weights (tests/integration/
// distributed_test.py allows 1e-4): float statistics a few ulps apart change
// near-zero gradients, whose sign Adam turns into a whole step. Tried again
// (2026-12-03) for jobs with Winograd on, whose one-step check allows such
// flips: with the fused forward pass and LibTorch's backward operators on its
// statistics, the stem's conv1.weight failed that check. The max pooling
// after the stem hands each window's gradient to its largest value, so a
// last-bit difference in the stem's output moves whole gradients to other
// pixels at near-ties. With the stem left to LibTorch the check passed, but
// the step was no faster than the noise (the stem's BatchNorm, the largest,
// had been most of a 3-14 % gain beside bench/neighbour.py).
//
// Thread-safety: none of its own; runs on the caller's thread and its
// intra-op threads.
#ifndef TRAIND_SERVER_TRAIN_FUSED_BATCH_NORM_H_
#define TRAIND_SERVER_TRAIN_FUSED_BATCH_NORM_H_

#include <torch/torch.h>

namespace traind::train {

// relu(bn(x) + residual): `residual` may be undefined (no add), and without
// `relu` the result is bn(x) + residual. In training mode the module's
// running statistics and num_batches_tracked advance as bn->forward's do.
// Fused when UsesFusedBatchNorm(bn, x, residual); otherwise exactly
// bn->forward(x), then `+= residual` and `relu_()` in place.
torch::Tensor BatchNormAct(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x,
                           const torch::Tensor& residual, bool relu);

// The fused path's conditions: enabled, `x` a 4-d bfloat16 CPU tensor in
// channels-last memory with a multiple of 64 channels and more than one value
// per channel, `residual` (if defined) the same shape, type and layout, `bn`
// affine with float parameters and running statistics, and, in evaluation
// mode, no gradient wanted.
bool UsesFusedBatchNorm(const torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x,
                        const torch::Tensor& residual);

// Process-wide; on by default. Off, BatchNormAct is always LibTorch's
// sequence (for side-by-side benchmarks: engine_bench --fused_bn 0).
void SetFusedBatchNormEnabled(bool enabled);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_FUSED_BATCH_NORM_H_
