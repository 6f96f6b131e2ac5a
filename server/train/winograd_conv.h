// ResNet's 3x3, stride-1 convolutions in float32 on the CPU as oneDNN's
// Winograd convolutions (F(4x4, 3x3)), forward, input gradient and weight
// gradient.
//
// LibTorch (and so PyTorch) runs every CPU convolution as oneDNN's direct
// algorithm. oneDNN also has Winograd kernels for AVX-512 CPUs, which do
// 3x3 convolutions in fewer multiplications. Measured on a 2-core AVX-512
// EPYC (Zen 5), batch 32, ResNet-18's 3x3 stride-1 shapes at 128 px (64
// channels at 32x32 to 512 at 4x4), including the reorders between
// channels-last tensors and oneDNN's blocked layouts: forward 30.4 -> 16.8 ms,
// input gradient 29.7 -> 16.6 ms, weight gradient 29.2 -> 17.5 ms (direct ->
// Winograd, summed over the four shapes).
//
// The results differ from the direct convolution's in the last bits (the
// transforms round differently): about 1e-5 of the output's scale. Not
// bit-identical to LibTorch's convolution, so a job's results differ from
// PyTorch's by more than rounding: their outputs and gradients agree within
// about 1e-6 of their scale, but Adam's first steps move a weight by about
// the learning rate whatever its gradient's size, so a gradient within
// rounding of zero whose sign differs moves that weight the other way (one
// step from the same weights: a few elements up to 1.1e-3 apart, the rest
// within 1e-4; tests/golden/golden_test.py checks both). A job's spec says
// whether it uses them (`winograd`; default the daemon's --winograd, on), on
// the daemon's workers and on a distributed job's ranks alike
// (winograd_mode.h): with them, a 2-rank job's first step is checked against
// PyTorch DDP's within rounding, and without them its whole epoch to 1e-4
// (tests/integration/distributed_test.py).
//
// Where oneDNN has no Winograd kernel for the CPU (AVX2 alone) or the shape,
// or traind was built without oneDNN's headers, the convolution stays
// LibTorch's.
//
// Thread-safety: thread-safe. oneDNN's primitives are cached per shape and
// thread count, shared by all threads; each call runs on the caller's
// intra-op threads (UseIntraOpThreads).
#ifndef TRAIND_SERVER_TRAIN_WINOGRAD_CONV_H_
#define TRAIND_SERVER_TRAIN_WINOGRAD_CONV_H_

#include <torch/torch.h>

#include "server/train/winograd_mode.h"

namespace traind::train {

// Maps smaller than this on a side stay LibTorch's (layer4's 2x2 at 64 px).
inline constexpr int64_t kWinogradMinSide = 4;

// The most shapes (batch, channels, map size, thread count) whose oneDNN
// primitives are kept; the least recently used go beyond. ResNet-18 has four
// stride-1 shapes at or above 4x4, and with a short last batch, validation
// batches and two thread counts a job meets about 32. Building one shape's
// primitives takes tens of milliseconds (oneDNN compiles their kernels).
inline constexpr size_t kWinogradCacheCapacity = 64;

// How many shapes' primitives are kept now.
size_t WinogradCachedShapes();

// Whether WinogradConv3x3 takes `conv` and `x`: the calling thread's mode
// (GetWinogradMode) is kAuto, x is a
// float32 4-D CPU tensor outside bfloat16 autocast, conv is 3x3 without
// bias, stride, dilation and groups 1 (padding 1: the caller vouches), its
// maps are at least kWinogradMinSide on a side, and oneDNN has a Winograd
// kernel for the shape.
bool UsesWinogradConv(const torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

// conv(x) through oneDNN's Winograd convolution, differentiable in x and the
// weight. The caller has checked UsesWinogradConv. The output is
// channels-last.
torch::Tensor WinogradConv3x3(const torch::Tensor& x, const torch::Tensor& weight);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_WINOGRAD_CONV_H_
