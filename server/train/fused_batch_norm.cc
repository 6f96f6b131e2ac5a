#include "server/train/fused_batch_norm.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "server/train/bf16.h"

namespace traind::train {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

std::atomic<bool> g_enabled{true};

// Channels per register block: 64 floats, four AVX-512 registers, so the
// per-channel sums of one block are four independent chains.
constexpr int64_t kLanes = 64;
// Rows per partial sum. Fixed, so the sums do not depend on the thread count.
constexpr int64_t kBlockRows = 256;

const uint16_t* Bits(const torch::Tensor& t) { return static_cast<const uint16_t*>(t.data_ptr()); }
uint16_t* MutableBits(torch::Tensor& t) { return static_cast<uint16_t*>(t.data_ptr()); }

// The row loops are inlined into each of their callers' clones (bf16.h), so
// that they are compiled, and vectorized, for each clone's CPU.
#define TRAIND_ALWAYS_INLINE inline __attribute__((always_inline))

// The kernels see an activation as [rows, channels] (channels-last memory)
// and loop over it 64 channels at a time.

TRAIND_VECTOR_CLONES
void ColumnSums(const uint16_t* __restrict x, int64_t rows, int64_t channels,
                float* __restrict sums) {
  for (int64_t c0 = 0; c0 < channels; c0 += kLanes) {
    float acc[kLanes] = {};
    for (int64_t r = 0; r < rows; ++r) {
      const uint16_t* p = x + r * channels + c0;
      for (int64_t j = 0; j < kLanes; ++j) acc[j] += FromBf16(p[j]);
    }
    std::copy(acc, acc + kLanes, sums + c0);
  }
}

TRAIND_VECTOR_CLONES
void ColumnSquaredDeviations(const uint16_t* __restrict x, int64_t rows, int64_t channels,
                             const float* __restrict mean, float* __restrict sums) {
  for (int64_t c0 = 0; c0 < channels; c0 += kLanes) {
    float m[kLanes];
    std::copy(mean + c0, mean + c0 + kLanes, m);
    float acc[kLanes] = {};
    for (int64_t r = 0; r < rows; ++r) {
      const uint16_t* p = x + r * channels + c0;
      for (int64_t j = 0; j < kLanes; ++j) {
        const float d = FromBf16(p[j]) - m[j];
        acc[j] += d * d;
      }
    }
    std::copy(acc, acc + kLanes, sums + c0);
  }
}

// y = x * alpha + beta, rounded to bfloat16 as BatchNorm's output is; then
// + residual, rounded as the add's output is; then the ReLU.
template <bool kResidual, bool kRelu>
TRAIND_ALWAYS_INLINE void NormalizeRows(const uint16_t* __restrict x,
                                        const uint16_t* __restrict residual, uint16_t* __restrict y,
                                        int64_t rows, int64_t channels,
                                        const float* __restrict alpha,
                                        const float* __restrict beta) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      float v = FromBf16(x[o + c]) * alpha[c] + beta[c];
      if constexpr (kResidual) v = FromBf16(ToBf16KeepNan(v)) + FromBf16(residual[o + c]);
      if constexpr (kRelu) v = v < 0.0f ? 0.0f : v;  // a NaN stays, as in ATen's ReLU
      y[o + c] = ToBf16KeepNan(v);
    }
  }
}

// Calls rows(residual, relu) with both as compile-time constants
// (std::bool_constant), for the row loops' four variants.
template <typename Rows>
TRAIND_ALWAYS_INLINE void WithResidualAndRelu(bool residual, bool relu, Rows rows) {
  if (residual) {
    if (relu) {
      rows(std::true_type{}, std::true_type{});
    } else {
      rows(std::true_type{}, std::false_type{});
    }
  } else if (relu) {
    rows(std::false_type{}, std::true_type{});
  } else {
    rows(std::false_type{}, std::false_type{});
  }
}

TRAIND_VECTOR_CLONES
void Normalize(const uint16_t* x, const uint16_t* residual, uint16_t* y, int64_t rows,
               int64_t channels, const float* alpha, const float* beta, bool relu) {
  WithResidualAndRelu(residual != nullptr, relu, [&](auto has_residual, auto has_relu) {
    NormalizeRows<has_residual, has_relu>(x, residual, y, rows, channels, alpha, beta);
  });
}

// The gradient reaching BatchNorm's output: dy, or 0 where the ReLU's output
// was not positive (ATen's threshold_backward).
template <bool kRelu>
TRAIND_ALWAYS_INLINE float Masked(uint16_t dy, uint16_t y) {
  if constexpr (kRelu) return FromBf16(y) <= 0.0f ? 0.0f : FromBf16(dy);
  return FromBf16(dy);
}

// Per channel: sum of g and of g * (x - mean), g the masked gradient; with
// `residual_grad`, also writes g there (the add passes it to the residual).
template <bool kRelu, bool kResidualGrad>
TRAIND_ALWAYS_INLINE void BackwardSumsRows(const uint16_t* __restrict x,
                                           const uint16_t* __restrict y,
                                           const uint16_t* __restrict dy,
                                           uint16_t* __restrict residual_grad, int64_t rows,
                                           int64_t channels, const float* __restrict mean,
                                           float* __restrict sum, float* __restrict dot) {
  for (int64_t c0 = 0; c0 < channels; c0 += kLanes) {
    float m[kLanes];
    std::copy(mean + c0, mean + c0 + kLanes, m);
    float s[kLanes] = {};
    float d[kLanes] = {};
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t o = r * channels + c0;
      for (int64_t j = 0; j < kLanes; ++j) {
        const float g = Masked<kRelu>(dy[o + j], kRelu ? y[o + j] : 0);
        if constexpr (kResidualGrad) residual_grad[o + j] = ToBf16(g);  // exact: dy or 0
        s[j] += g;
        d[j] += g * (FromBf16(x[o + j]) - m[j]);
      }
    }
    std::copy(s, s + kLanes, sum + c0);
    std::copy(d, d + kLanes, dot + c0);
  }
}

TRAIND_VECTOR_CLONES
void BackwardSums(const uint16_t* x, const uint16_t* y, const uint16_t* dy, uint16_t* residual_grad,
                  int64_t rows, int64_t channels, const float* mean, float* sum, float* dot) {
  if (y == nullptr) {
    BackwardSumsRows<false, false>(x, y, dy, nullptr, rows, channels, mean, sum, dot);
  } else if (residual_grad != nullptr) {
    BackwardSumsRows<true, true>(x, y, dy, residual_grad, rows, channels, mean, sum, dot);
  } else {
    BackwardSumsRows<true, false>(x, y, dy, nullptr, rows, channels, mean, sum, dot);
  }
}

// Training-mode BatchNorm's input gradient, as ATen's:
//   dx = (g - mean(g) - (x - mean) * k) * invstd * weight,
//   k = mean(g * (x - mean)) * invstd^2.
template <bool kRelu>
TRAIND_ALWAYS_INLINE void BackwardInputRows(
    const uint16_t* __restrict x, const uint16_t* __restrict y, const uint16_t* __restrict dy,
    uint16_t* __restrict dx, int64_t rows, int64_t channels, const float* __restrict mean,
    const float* __restrict grad_mean, const float* __restrict k, const float* __restrict scale) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const float g = Masked<kRelu>(dy[o + c], kRelu ? y[o + c] : 0);
      const float v = (g - grad_mean[c] - (FromBf16(x[o + c]) - mean[c]) * k[c]) * scale[c];
      dx[o + c] = ToBf16KeepNan(v);
    }
  }
}

TRAIND_VECTOR_CLONES
void BackwardInput(const uint16_t* x, const uint16_t* y, const uint16_t* dy, uint16_t* dx,
                   int64_t rows, int64_t channels, const float* mean, const float* grad_mean,
                   const float* k, const float* scale) {
  if (y != nullptr) {
    BackwardInputRows<true>(x, y, dy, dx, rows, channels, mean, grad_mean, k, scale);
  } else {
    BackwardInputRows<false>(x, y, dy, dx, rows, channels, mean, grad_mean, k, scale);
  }
}

// Float activations: LibTorch's own arithmetic, in one pass. Its
// channels-last BatchNorm (the AVX2 and AVX-512 builds of
// batch_norm_kernel.cpp, whose multiply-adds the compiler contracts) computes
// alpha = invstd * weight, beta = fma(-mean, alpha, bias), y = fma(x, alpha,
// beta); the add after it rounds once and the ReLU keeps what is not below 0.
template <bool kResidual, bool kRelu>
TRAIND_ALWAYS_INLINE void NormalizeFloatRows(const float* __restrict x,
                                             const float* __restrict residual, float* __restrict y,
                                             int64_t rows, int64_t channels,
                                             const float* __restrict alpha,
                                             const float* __restrict beta) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      float v = std::fma(x[o + c], alpha[c], beta[c]);
      if constexpr (kResidual) v += residual[o + c];
      if constexpr (kRelu) v = v < 0.0f ? 0.0f : v;
      y[o + c] = v;
    }
  }
}

TRAIND_VECTOR_CLONES
void NormalizeFloat(const float* x, const float* residual, float* y, int64_t rows, int64_t channels,
                    const float* alpha, const float* beta, bool relu) {
  WithResidualAndRelu(residual != nullptr, relu, [&](auto has_residual, auto has_relu) {
    NormalizeFloatRows<has_residual, has_relu>(x, residual, y, rows, channels, alpha, beta);
  });
}

// Per-channel sums over all rows, `width` floats per block from `block(begin,
// end, out)`: the blocks in parallel, their sums added in double, in order.
std::vector<double> SumBlocks(int64_t rows, int64_t width,
                              const std::function<void(int64_t, int64_t, float*)>& block) {
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  std::vector<float> partial(static_cast<size_t>(blocks * width));
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      block(b * kBlockRows, std::min(rows, (b + 1) * kBlockRows), partial.data() + b * width);
    }
  });
  std::vector<double> total(static_cast<size_t>(width), 0.0);
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t i = 0; i < width; ++i) total[i] += partial[b * width + i];
  }
  return total;
}

// Row ranges for the element-wise passes: about 16 K values each.
int64_t RowGrain(int64_t channels) { return std::max<int64_t>(1, 16384 / channels); }

struct FusedBatchNorm : public torch::autograd::Function<FusedBatchNorm> {
  // `residual` empty: none (autograd functions take no undefined inputs).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& residual, const torch::Tensor& weight,
                               const torch::Tensor& bias, const torch::Tensor& running_mean,
                               const torch::Tensor& running_var, bool training, double momentum,
                               double eps, bool relu) {
    RECORD_FUNCTION("traind::fused_batch_norm_forward", std::vector<c10::IValue>());
    const int64_t channels = x.size(1);
    const int64_t rows = x.numel() / channels;
    const uint16_t* xp = Bits(x);
    float* rm = running_mean.data_ptr<float>();
    float* rv = running_var.data_ptr<float>();
    const float* w = weight.data_ptr<float>();
    const float* b = bias.data_ptr<float>();

    torch::Tensor mean_t = torch::empty({channels}, torch::kFloat);
    torch::Tensor invstd_t = torch::empty({channels}, torch::kFloat);
    float* mean = mean_t.data_ptr<float>();
    float* invstd = invstd_t.data_ptr<float>();
    if (training) {
      const std::vector<double> sums =
          SumBlocks(rows, channels, [&](int64_t r0, int64_t r1, float* out) {
            ColumnSums(xp + r0 * channels, r1 - r0, channels, out);
          });
      for (int64_t c = 0; c < channels; ++c) mean[c] = static_cast<float>(sums[c] / rows);
      const std::vector<double> squares =
          SumBlocks(rows, channels, [&](int64_t r0, int64_t r1, float* out) {
            ColumnSquaredDeviations(xp + r0 * channels, r1 - r0, channels, mean, out);
          });
      for (int64_t c = 0; c < channels; ++c) {
        invstd[c] = static_cast<float>(1.0 / std::sqrt(squares[c] / rows + eps));
        const double unbiased = squares[c] / (rows - 1);
        rm[c] = static_cast<float>(momentum * mean[c] + (1 - momentum) * rm[c]);
        rv[c] = static_cast<float>(momentum * unbiased + (1 - momentum) * rv[c]);
      }
    } else {
      for (int64_t c = 0; c < channels; ++c) {
        mean[c] = rm[c];
        invstd[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(rv[c]) + eps));
      }
    }
    std::vector<float> alpha(channels);
    std::vector<float> beta(channels);
    for (int64_t c = 0; c < channels; ++c) {
      alpha[c] = invstd[c] * w[c];
      beta[c] = b[c] - mean[c] * alpha[c];
    }

    torch::Tensor y = torch::empty_like(x, torch::MemoryFormat::ChannelsLast);
    uint16_t* yp = MutableBits(y);
    const bool has_residual = residual.numel() > 0;
    const uint16_t* res = has_residual ? Bits(residual) : nullptr;
    at::parallel_for(0, rows, RowGrain(channels), [&](int64_t r0, int64_t r1) {
      const int64_t o = r0 * channels;
      Normalize(xp + o, res == nullptr ? nullptr : res + o, yp + o, r1 - r0, channels, alpha.data(),
                beta.data(), relu);
    });

    ctx->save_for_backward({x, relu ? y : torch::Tensor(), weight, mean_t, invstd_t});
    ctx->saved_data["residual"] = has_residual;
    return y;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    RECORD_FUNCTION("traind::fused_batch_norm_backward", std::vector<c10::IValue>());
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const torch::Tensor& y = saved[1];  // undefined without the ReLU
    const torch::Tensor& weight = saved[2];
    const float* mean = saved[3].data_ptr<float>();
    const float* invstd = saved[4].data_ptr<float>();
    const bool has_residual = ctx->saved_data["residual"].toBool();
    const int64_t channels = x.size(1);
    const int64_t rows = x.numel() / channels;
    tensor_list out(10);  // one per input of forward()
    if (!grads[0].defined()) return out;
    const torch::Tensor dy =
        grads[0].to(torch::kBFloat16).contiguous(torch::MemoryFormat::ChannelsLast);

    const uint16_t* xp = Bits(x);
    const uint16_t* yp = y.defined() ? Bits(y) : nullptr;
    const uint16_t* dyp = Bits(dy);
    torch::Tensor residual_grad;
    uint16_t* rgp = nullptr;
    if (has_residual && ctx->needs_input_grad(1)) {
      if (y.defined()) {
        residual_grad = torch::empty_like(x, torch::MemoryFormat::ChannelsLast);
        rgp = MutableBits(residual_grad);
      } else {
        residual_grad = dy;  // the add passes the gradient on as it is
      }
    }
    const std::vector<double> sums =
        SumBlocks(rows, 2 * channels, [&](int64_t r0, int64_t r1, float* part) {
          const int64_t o = r0 * channels;
          BackwardSums(xp + o, yp == nullptr ? nullptr : yp + o, dyp + o,
                       rgp == nullptr ? nullptr : rgp + o, r1 - r0, channels, mean, part,
                       part + channels);
        });

    torch::Tensor grad_weight = torch::empty({channels}, torch::kFloat);
    torch::Tensor grad_bias = torch::empty({channels}, torch::kFloat);
    float* gw = grad_weight.data_ptr<float>();
    float* gb = grad_bias.data_ptr<float>();
    for (int64_t c = 0; c < channels; ++c) {
      gb[c] = static_cast<float>(sums[c]);
      gw[c] = static_cast<float>(sums[channels + c] * invstd[c]);
    }

    torch::Tensor dx;
    if (ctx->needs_input_grad(0)) {
      const float* w = weight.data_ptr<float>();
      std::vector<float> grad_mean(channels);
      std::vector<float> k(channels);
      std::vector<float> scale(channels);
      for (int64_t c = 0; c < channels; ++c) {
        grad_mean[c] = static_cast<float>(sums[c] / rows);
        k[c] = static_cast<float>(sums[channels + c] / rows * invstd[c] * invstd[c]);
        scale[c] = invstd[c] * w[c];
      }
      dx = torch::empty_like(x, torch::MemoryFormat::ChannelsLast);
      uint16_t* dxp = MutableBits(dx);
      at::parallel_for(0, rows, RowGrain(channels), [&](int64_t r0, int64_t r1) {
        const int64_t o = r0 * channels;
        BackwardInput(xp + o, yp == nullptr ? nullptr : yp + o, dyp + o, dxp + o, r1 - r0, channels,
                      mean, grad_mean.data(), k.data(), scale.data());
      });
    }
    out[0] = dx;
    out[1] = residual_grad;
    out[2] = ctx->needs_input_grad(2) ? grad_weight : torch::Tensor();
    out[3] = ctx->needs_input_grad(3) ? grad_bias : torch::Tensor();
    return out;
  }
};

// relu(bn(x) + residual) for float activations: LibTorch's statistics
// (at::batch_norm_update_stats: the same sums and running-statistics update
// as its BatchNorm's), then its normalisation, add and ReLU in one pass;
// backward, LibTorch's own operators as its sequence runs them. So results
// are LibTorch's bit for bit where FloatPathMatchesLibTorch().
struct FloatBatchNorm : public torch::autograd::Function<FloatBatchNorm> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& residual, const torch::Tensor& weight,
                               const torch::Tensor& bias, const torch::Tensor& running_mean,
                               const torch::Tensor& running_var, bool training, double momentum,
                               double eps, bool relu) {
    RECORD_FUNCTION("traind::float_batch_norm_forward", std::vector<c10::IValue>());
    const int64_t channels = x.size(1);
    const int64_t rows = x.numel() / channels;
    torch::Tensor mean_t;
    torch::Tensor invstd_t = torch::empty({channels}, torch::kFloat);
    float* invstd = invstd_t.data_ptr<float>();
    if (training) {
      torch::Tensor var_t;
      std::tie(mean_t, var_t) = at::batch_norm_update_stats(x, running_mean, running_var, momentum);
      const float* var = var_t.data_ptr<float>();
      for (int64_t c = 0; c < channels; ++c) {
        invstd[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(var[c]) + eps));
      }
    } else {
      mean_t = running_mean;
      const float* rv = running_var.data_ptr<float>();
      for (int64_t c = 0; c < channels; ++c) {
        invstd[c] = 1.0f / std::sqrt(rv[c] + static_cast<float>(eps));
      }
    }
    const float* mean = mean_t.data_ptr<float>();
    const float* w = weight.data_ptr<float>();
    const float* b = bias.data_ptr<float>();
    std::vector<float> alpha(channels);
    std::vector<float> beta(channels);
    for (int64_t c = 0; c < channels; ++c) {
      alpha[c] = invstd[c] * w[c];
      beta[c] = std::fma(-mean[c], alpha[c], b[c]);
    }

    torch::Tensor y = torch::empty_like(x, torch::MemoryFormat::ChannelsLast);
    const float* xp = x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    const bool has_residual = residual.numel() > 0;
    const float* res = has_residual ? residual.data_ptr<float>() : nullptr;
    at::parallel_for(0, rows, RowGrain(channels), [&](int64_t r0, int64_t r1) {
      const int64_t o = r0 * channels;
      NormalizeFloat(xp + o, res == nullptr ? nullptr : res + o, yp + o, r1 - r0, channels,
                     alpha.data(), beta.data(), relu);
    });
    ctx->save_for_backward({x, relu ? y : torch::Tensor(), weight, mean_t, invstd_t});
    ctx->saved_data["residual"] = has_residual;
    ctx->saved_data["eps"] = eps;
    return y;
  }

  // The ReLU's threshold_backward, the add passing the gradient on, and
  // BatchNorm's native_batch_norm_backward on the forward pass's statistics:
  // the operators autograd runs for LibTorch's sequence.
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const torch::Tensor& y = saved[1];  // undefined without the ReLU
    tensor_list out(10);                // one per input of forward()
    if (!grads[0].defined()) return out;
    const torch::Tensor g = y.defined() ? at::threshold_backward(grads[0], y, 0) : grads[0];
    if (ctx->saved_data["residual"].toBool() && ctx->needs_input_grad(1)) out[1] = g;
    const std::array<bool, 3> wanted = {ctx->needs_input_grad(0), ctx->needs_input_grad(2),
                                        ctx->needs_input_grad(3)};
    if (wanted[0] || wanted[1] || wanted[2]) {
      auto [dx, dw, db] = at::native_batch_norm_backward(
          g, x, saved[2], /*running_mean=*/{}, /*running_var=*/{}, saved[3], saved[4],
          /*train=*/true, ctx->saved_data["eps"].toDouble(), wanted);
      if (wanted[0]) out[0] = dx;
      if (wanted[1]) out[2] = dw;
      if (wanted[2]) out[3] = db;
    }
    return out;
  }
};

bool FloatVector(const torch::Tensor& t, int64_t n) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat &&
         t.is_contiguous() && t.numel() == n;
}

// Whether FloatBatchNorm gives LibTorch's results bit for bit in this
// process: LibTorch's sequence and FloatBatchNorm on a small activation, in
// training (statistics, running statistics, output) and evaluation mode.
// The arithmetic FloatBatchNorm copies is the compiled kernel's (a build
// for CPUs without FMA, or one compiled without contracting multiply-adds,
// would round differently), so it is checked, once, not assumed. No random
// numbers: the generator's sequence is the job's.
bool CheckFloatPath() {
  torch::NoGradGuard no_grad;
  // Float operators as they are, whatever autocast the first caller runs.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  const int64_t channels = 64;
  const auto cl = torch::MemoryFormat::ChannelsLast;
  const torch::Tensor i = torch::arange(2 * channels * 4 * 5, torch::kFloat);
  const torch::Tensor x =
      (i * 0.37).sin().mul(3).add(1.25).view({2, 4, 5, channels}).permute({0, 3, 1, 2});
  const torch::Tensor residual = (i * 0.11).cos().view({2, 4, 5, channels}).permute({0, 3, 1, 2});
  const torch::Tensor c = torch::arange(channels, torch::kFloat);
  const torch::Tensor weight = (c * 0.53).sin().add(1.1);
  const torch::Tensor bias = (c * 0.29).cos();
  if (!x.is_contiguous(cl) || !residual.is_contiguous(cl)) return false;
  for (const bool training : {true, false}) {
    const torch::Tensor mean0 = (c * 0.71).sin();
    const torch::Tensor var0 = (c * 0.43).cos().add(1.5);
    torch::Tensor mean1 = mean0.clone(), var1 = var0.clone();
    torch::Tensor mean2 = mean0.clone(), var2 = var0.clone();
    torch::Tensor want =
        at::batch_norm(x, weight, bias, mean1, var1, training, 0.1, 1e-5, /*cudnn_enabled=*/false);
    want += residual;
    want.relu_();
    const torch::Tensor got = FloatBatchNorm::apply(x, residual, weight, bias, mean2, var2,
                                                    training, 0.1, 1e-5, /*relu=*/true);
    if (!torch::equal(got, want) || !torch::equal(mean1, mean2) || !torch::equal(var1, var2)) {
      return false;
    }
  }
  return true;
}

bool FloatPathMatchesLibTorch() {
  static const bool matches = CheckFloatPath();
  return matches;
}

}  // namespace

void SetFusedBatchNormEnabled(bool enabled) { g_enabled.store(enabled); }

bool UsesFusedBatchNorm(const torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x,
                        const torch::Tensor& residual) {
  if (!g_enabled.load(std::memory_order_relaxed)) return false;
  const auto type = x.scalar_type();
  if (x.dim() != 4 || !x.device().is_cpu() || (type != torch::kBFloat16 && type != torch::kFloat) ||
      !x.is_contiguous(torch::MemoryFormat::ChannelsLast)) {
    return false;
  }
  const int64_t channels = x.size(1);
  if (channels == 0 || x.numel() / channels < 2) return false;
  if (type == torch::kBFloat16 && channels % kLanes != 0) return false;
  if (!bn.options.affine() || !bn.options.track_running_stats() ||
      !FloatVector(bn.weight, channels) || !FloatVector(bn.bias, channels) ||
      !FloatVector(bn.running_mean, channels) || !FloatVector(bn.running_var, channels)) {
    return false;
  }
  if (residual.defined() && (residual.sizes() != x.sizes() || !residual.device().is_cpu() ||
                             residual.scalar_type() != type ||
                             !residual.is_contiguous(torch::MemoryFormat::ChannelsLast))) {
    return false;
  }
  // Evaluation mode has no backward here (nothing in traind trains in it).
  const bool wants_grad =
      torch::GradMode::is_enabled() &&
      (x.requires_grad() || bn.weight.requires_grad() || bn.bias.requires_grad() ||
       (residual.defined() && residual.requires_grad()));
  if (!bn.is_training() && wants_grad) return false;
  return type == torch::kBFloat16 || FloatPathMatchesLibTorch();
}

torch::Tensor BatchNormAct(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x,
                           const torch::Tensor& residual, bool relu) {
  if (!UsesFusedBatchNorm(bn, x, residual)) {
    torch::Tensor y = bn.forward(x);
    if (residual.defined()) y += residual;
    return relu ? y.relu_() : y;
  }
  // As BatchNormImplBase::forward: the batch counter, and the momentum (a
  // cumulative average without one).
  const bool training = bn.is_training();
  double momentum = bn.options.momentum().value_or(0.0);
  if (training) {
    torch::NoGradGuard no_grad;
    bn.num_batches_tracked += 1;
    if (!bn.options.momentum()) momentum = 1.0 / bn.num_batches_tracked.item<double>();
  }
  const torch::Tensor residual_or_empty = residual.defined() ? residual : x.new_empty({0});
  if (x.scalar_type() == torch::kFloat) {
    return FloatBatchNorm::apply(x, residual_or_empty, bn.weight, bn.bias, bn.running_mean,
                                 bn.running_var, training, momentum, bn.options.eps(), relu);
  }
  return FusedBatchNorm::apply(x, residual_or_empty, bn.weight, bn.bias, bn.running_mean,
                               bn.running_var, training, momentum, bn.options.eps(), relu);
}

}  // namespace traind::train
