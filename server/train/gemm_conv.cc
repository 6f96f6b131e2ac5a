#include "server/train/gemm_conv.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>

#include <atomic>
#include <vector>

#include "server/train/autocast.h"
#include "server/train/split_backward.h"
#include "server/train/winograd_conv.h"

namespace traind::train {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

std::atomic<GemmConvMode> g_mode{GemmConvMode::kAuto};

// A 3x3 convolution's output size along one axis, padding 1.
int64_t OutputSize(int64_t in, int64_t stride) { return (in - 1) / stride + 1; }

// The 3x3 patches of x (NCHW, bfloat16), padding 1: [N*Ho*Wo, 9*C], each row
// one output pixel's patch in (kernel row, kernel column, channel) order,
// which is the memory order of a channels-last weight [K, C, 3, 3].
torch::Tensor Patches(const torch::Tensor& x, int64_t stride, int64_t ho, int64_t wo) {
  const int64_t n = x.size(0);
  const int64_t c = x.size(1);
  // NHWC with a zero border (a copy: x's layout does not matter).
  torch::Tensor padded = at::constant_pad_nd(x.permute({0, 2, 3, 1}), {0, 0, 1, 1, 1, 1});
  const int64_t sw = c;
  const int64_t sh = padded.size(2) * c;
  const int64_t sn = padded.size(1) * sh;
  return padded.as_strided({n, ho, wo, 3, 3, c}, {sn, sh * stride, sw * stride, sh, sw, 1})
      .reshape({n * ho * wo, 9 * c});
}

// [K, C, 3, 3] as the [K, 9*C] matrix of Patches' columns (a view when the
// weight is channels-last, as traind's are).
torch::Tensor WeightMatrix(const torch::Tensor& w) {
  return w.permute({0, 2, 3, 1}).reshape({w.size(0), 9 * w.size(1)});
}

struct GemmConv3x3 : public torch::autograd::Function<GemmConv3x3> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& w, int64_t stride) {
    // Named for the profiler (bench/profile_step.py counts the GEMMs in it
    // as convolution time).
    RECORD_FUNCTION("traind::gemm_conv_forward", std::vector<c10::IValue>());
    const int64_t n = x.size(0);
    const int64_t ho = OutputSize(x.size(2), stride);
    const int64_t wo = OutputSize(x.size(3), stride);
    torch::Tensor patches = Patches(x, stride, ho, wo);
    torch::Tensor y = at::mm(patches, WeightMatrix(w).t());  // [N*Ho*Wo, K]
    ctx->save_for_backward({x, w, patches});
    ctx->saved_data["stride"] = stride;
    // NHWC memory viewed as NCHW: channels-last, as oneDNN's output is.
    return y.view({n, ho, wo, w.size(0)}).permute({0, 3, 1, 2});
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    RECORD_FUNCTION("traind::gemm_conv_backward", std::vector<c10::IValue>());
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const torch::Tensor& w = saved[1];
    const torch::Tensor& patches = saved[2];
    const int64_t stride = ctx->saved_data["stride"].toInt();
    const torch::Tensor& gy = grads[0];
    torch::Tensor gx;
    torch::Tensor gw;
    // The weight gradient first: a split backward pass (split_backward.h)
    // computes it beside the input gradient.
    if (ctx->needs_input_grad(1)) {
      auto weight_gradient = [gy, patches, k = w.size(0), c = w.size(1)] {
        torch::Tensor gy_rows = gy.permute({0, 2, 3, 1}).reshape({-1, k});  // [N*Ho*Wo, K]
        return at::mm(gy_rows.t(), patches)                                 // [K, 9*C]
            .view({k, 3, 3, c})
            .permute({0, 3, 1, 2});  // channels-last [K, C, 3, 3]
      };
      if (!QueueWeightGradient(w, weight_gradient)) gw = weight_gradient();
    }
    if (ctx->needs_input_grad(0)) {
      gx = std::get<0>(at::convolution_backward(gy, x, w, c10::nullopt, {stride, stride}, {1, 1},
                                                {1, 1}, false, {0, 0}, 1, {true, false, false}));
    }
    return {gx, gw, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor Conv3x3Patches(const torch::Tensor& x, int64_t stride) {
  return Patches(x, stride, OutputSize(x.size(2), stride), OutputSize(x.size(3), stride));
}

bool CpuHasOneDnnBf16Gemms() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bf16");
  }();
  return has;
#else
  return false;
#endif
}

void SetGemmConvMode(GemmConvMode mode) { g_mode.store(mode); }

bool UsesGemmConv(const torch::nn::Conv2dImpl& conv, const torch::Tensor& x) {
  const auto& o = conv.options;
  const auto& w = conv.weight;
  if (x.dim() != 4 || !x.device().is_cpu() || conv.bias.defined() || w.dim() != 4 ||
      w.size(2) != 3 || w.size(3) != 3 || o.groups() != 1 || (*o.dilation())[0] != 1 ||
      (*o.dilation())[1] != 1 || (*o.stride())[0] != (*o.stride())[1]) {
    return false;
  }
  const bool bf16 = x.scalar_type() == torch::kBFloat16 ||
                    (autocast::Enabled(torch::kCPU) &&
                     autocast::Dtype(torch::kCPU) == torch::kBFloat16);
  if (!bf16) return false;
  switch (g_mode.load(std::memory_order_relaxed)) {
    case GemmConvMode::kOff:
      return false;
    case GemmConvMode::kAuto:
      if (!CpuHasOneDnnBf16Gemms()) return false;
      break;
    case GemmConvMode::kOn:
      break;
  }
  const int64_t stride = (*o.stride())[0];
  return OutputSize(x.size(2), stride) * OutputSize(x.size(3), stride) <= kGemmConvMaxPixels;
}

torch::Tensor Conv3x3Forward(torch::nn::Conv2dImpl& conv, const torch::Tensor& x) {
  if (UsesWinogradConv(conv, x)) return WinogradConv3x3(x, conv.weight);
  if (!UsesGemmConv(conv, x)) return ConvForward(conv, x);
  // As autocast would: both operands in bfloat16 (differentiable casts, so
  // float weights get float gradients), the output in bfloat16.
  return GemmConv3x3::apply(x.to(torch::kBFloat16), conv.weight.to(torch::kBFloat16),
                            (*conv.options.stride())[0]);
}

}  // namespace traind::train
