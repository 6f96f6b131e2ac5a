// BatchNorm, then the residual add and the ReLU that follow it in a ResNet
// block, as one pass over memory forward and two backward, for bfloat16
// channels-last activations on the CPU; for float ones, LibTorch's
// statistics and backward with the rest in one pass (below).
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
// Float activations take another path, exact: LibTorch's own batch
// statistics (at::batch_norm_update_stats, the sums and running-statistics
// update its BatchNorm runs), then its normalisation's arithmetic with the
// add and the ReLU in one pass, and for the backward pass the very operators
// autograd runs for LibTorch's sequence. Outputs, running statistics and
// gradients are LibTorch's bit for bit (tests/train/fused_batch_norm_test.cc,
// down to a whole ResNet-18 step), so fp32 jobs keep their exact agreement
// with PyTorch. The arithmetic copied is what this LibTorch build's kernel
// computes (its AVX2 and AVX-512 builds contract the multiply-adds into
// FMAs), so the first use in a process checks it on a small activation and
// falls back to LibTorch's sequence where it differs. What it saves is the
// normalisation's second pass, the add's and the ReLU's, and their parallel
// regions: the forward pass of an fp32 fine-tune step at 128 px, 77.4
// against 82.5 ms alone and 130.6 against 135.1 beside bench/neighbour.py
// (engine_bench --bf16 0 --fused_bn 1 against 0, medians of five
// alternating rounds). Its own batch statistics were tried (2026-12-02/03)
// and not kept: sums in another order than LibTorch's, a few ulps apart,
// became gradients moved to other pixels by the stem's max pooling at
// near-ties, and a 2-rank job's one-step check against PyTorch DDP failed on
// conv1.weight.
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

// The fused path's conditions: enabled, `x` a 4-d bfloat16 or float CPU
// tensor in channels-last memory with more than one value per channel (and,
// in bfloat16, a multiple of 64 channels), `residual` (if defined) the same
// shape, type and layout, `bn` affine with float parameters and running
// statistics, in evaluation mode no gradient wanted, and for float the
// process's check against LibTorch passed.
bool UsesFusedBatchNorm(const torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x,
                        const torch::Tensor& residual);

// Process-wide; on by default. Off, BatchNormAct is always LibTorch's
// sequence (for side-by-side benchmarks: engine_bench --fused_bn 0).
void SetFusedBatchNormEnabled(bool enabled);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_FUSED_BATCH_NORM_H_
