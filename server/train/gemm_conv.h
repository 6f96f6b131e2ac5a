// A ResNet 3x3 convolution whose output maps are small, in bfloat16 on the
// CPU, as matrix products: the forward pass and the weight gradient are one
// GEMM each over the input's 3x3 patches (oneDNN's brgemm matmul), where
// oneDNN 2.6's convolutions are slowest. The input gradient stays oneDNN's
// convolution backward.
//
// Measured on a 2-core AVX-512 BF16 CPU, batch 32 at 128 px, layer4's 4x4
// maps, inside a training step (engine_bench with ONEDNN_VERBOSE=1): the
// weight gradient of a 512-channel 3x3 convolution took 6.3 ms in oneDNN's
// jit_bf16 kernel and takes 3.4 ms as one GEMM, the forward pass 3.3 and
// 2.8 ms, and only the input gradient still reorders the weights into
// oneDNN's blocked layout (one reorder of each weight per step, not three).
// From 8x8 maps up the convolutions are as fast or faster (the weight
// gradient on 8x8 measured the same both ways), so only maps of at most
// kGemmConvMaxPixels take this path.
//
// Only where LibTorch's bfloat16 GEMMs are oneDNN's (an x86 CPU with
// AVX-512 BF16, where the figures above were taken): there they sum in float
// and round once. On a CPU without AVX-512 (AVX2 alone), LibTorch 1.13 runs
// bfloat16 GEMMs and convolutions in its own loops, which round partial sums
// to bfloat16 as they go (weight gradients off by 2-3 % against float32 on
// the same operands), and the convolution stays LibTorch's there.
//
// Thread-safety: none of its own; runs on the caller's thread.
#ifndef TRAIND_SERVER_TRAIN_GEMM_CONV_H_
#define TRAIND_SERVER_TRAIN_GEMM_CONV_H_

#include <cstdint>

#include <torch/torch.h>

namespace traind::train {

// Output maps of at most this many pixels (layer4's 4x4 at 128 px) go
// through GEMMs.
inline constexpr int64_t kGemmConvMaxPixels = 16;

// conv->forward(x) for a convolution built with padding 1 (ResNet's 3x3
// convolutions; the caller vouches for the padding, which LibTorch's options
// hold in a type that differs between versions). Through GEMMs when `conv` is
// 3x3 without bias, groups and dilation 1, `x` is on the CPU and runs in
// bfloat16 (a bfloat16 input, or bfloat16 autocast), and its output maps are
// small. The result then agrees with the convolution's within bfloat16
// rounding (the sums run in another order); its dtype, shape and
// channels-last layout are the same.
// In float32, a 3x3 stride-1 convolution goes through oneDNN's Winograd kernels
// where it has them, when the daemon turns them on (winograd_conv.h).
torch::Tensor Conv3x3Forward(torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

// The 3x3 patches of `x` (N x C x H x W, any layout), padding 1: an
// [N*Ho*Wo, 9*C] matrix, each row one output pixel's patch in (kernel row,
// kernel column, channel) order, the memory order of a channels-last weight
// [K, C, 3, 3]. A new tensor.
torch::Tensor Conv3x3Patches(const torch::Tensor& x, int64_t stride);

// Whether Conv3x3Forward takes the GEMM path for `conv` and `x`.
bool UsesGemmConv(const torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

// Whether this CPU does LibTorch's bfloat16 matrix products in oneDNN with
// bfloat16 instructions: x86 with AVX-512 BW, VL and DQ (LibTorch's own test
// for oneDNN bfloat16) and AVX-512 BF16.
bool CpuHasOneDnnBf16Gemms();

enum class GemmConvMode {
  kOff,   // every convolution is LibTorch's (engine_bench --gemm_conv 0)
  kAuto,  // GEMMs where CpuHasOneDnnBf16Gemms()
  kOn,    // GEMMs on any CPU (tests; engine_bench --gemm_conv 1)
};

// Process-wide; kAuto by default.
void SetGemmConvMode(GemmConvMode mode);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_GEMM_CONV_H_
