#include "server/train/fused_adam.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/torch.h>

// This file is compiled with -ffp-contract=off (see CMakeLists.txt): every
// multiply-add that rounds once is written as std::fma, every other one
// rounds twice, as in the ATen kernels it mirrors.

namespace traind::train {
namespace {

// One parameter's update in float, as torch::optim::Adam computes it in
// LibTorch 1.13 (exact operation order and roundings):
//   exp_avg.mul_(beta1).add_(grad, 1 - beta1)         m = fma(g, 1-b1, m*b1)
//   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1-b2) v = fma((1-b2)*g, g, v*b2)
//   denom = (exp_avg_sq.sqrt() / sqrt(bc2)).add_(eps) d = sqrt(v) / c + eps
//   p.addcdiv_(exp_avg, denom, -step_size)            p = p + (-s * m) / d
// (ATen's AVX2/AVX-512 kernels use fused multiply-add for add_ and, as
// Debian builds them, for addcmul_.)
struct Coefficients {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bias_correction2, eps, neg_step;
};

#if defined(__x86_64__) && defined(__GNUC__)
// Vectorized for the CPU it runs on; the default clone computes the same.
#define TRAIND_VECTOR_CLONES __attribute__((target_clones("avx512f", "fma", "default")))
#else
#define TRAIND_VECTOR_CLONES
#endif

TRAIND_VECTOR_CLONES
void Update(float* __restrict p, const float* __restrict g, float* __restrict m,
            float* __restrict v, int64_t n, const Coefficients& c) {
  for (int64_t i = 0; i < n; ++i) {
    const float grad = g[i];
    const float avg = std::fma(grad, c.one_minus_beta1, m[i] * c.beta1);
    const float avg_sq = std::fma(c.one_minus_beta2 * grad, grad, v[i] * c.beta2);
    const float denom = std::sqrt(avg_sq) / c.sqrt_bias_correction2 + c.eps;
    p[i] = p[i] + (c.neg_step * avg) / denom;
    m[i] = avg;
    v[i] = avg_sq;
  }
}

bool SameLayout(const torch::Tensor& a, const torch::Tensor& b) {
  return a.sizes() == b.sizes() && a.strides() == b.strides();
}

// Whether `p` can take the fused update (its moments are created in its layout).
bool Fusable(const torch::Tensor& p) {
  return p.device().is_cpu() && p.scalar_type() == torch::kFloat && p.layout() == torch::kStrided &&
         p.is_non_overlapping_and_dense();
}

}  // namespace

torch::Tensor FusedAdam::step(LossClosure closure) {
  for (const auto& group : param_groups_) {
    const auto& o = static_cast<const torch::optim::AdamOptions&>(group.options());
    if (o.amsgrad() || o.weight_decay() != 0) return torch::optim::Adam::step(std::move(closure));
    for (const auto& p : group.params()) {
      if (p.grad().defined() && !Fusable(p)) return torch::optim::Adam::step(std::move(closure));
    }
  }
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const torch::optim::AdamOptions&>(group.options());
    const double beta1 = std::get<0>(o.betas());
    const double beta2 = std::get<1>(o.betas());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const std::string key = c10::guts::to_string(p.unsafeGetTensorImpl());
      auto it = state_.find(key);
      if (it == state_.end()) {
        auto fresh = std::make_unique<torch::optim::AdamParamState>();
        fresh->step(0);
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        it = state_.emplace(key, std::move(fresh)).first;
      }
      auto& state = static_cast<torch::optim::AdamParamState&>(*it->second);
      state.step(state.step() + 1);
      const double bias_correction1 = 1 - std::pow(beta1, state.step());
      const double bias_correction2 = 1 - std::pow(beta2, state.step());
      const Coefficients c{static_cast<float>(beta1),
                           static_cast<float>(1 - beta1),
                           static_cast<float>(beta2),
                           static_cast<float>(1 - beta2),
                           static_cast<float>(std::sqrt(bias_correction2)),
                           static_cast<float>(o.eps()),
                           static_cast<float>(-(o.lr() / bias_correction1))};
      // Gradients, moments restored from a checkpoint or a bf16 gradient
      // come to the parameter's layout and type first.
      auto like_p = [&](const torch::Tensor& t) {
        return t.scalar_type() == torch::kFloat && SameLayout(t, p)
                   ? t
                   : torch::empty_like(p, torch::MemoryFormat::Preserve).copy_(t);
      };
      const torch::Tensor grad = like_p(p.grad());
      if (!SameLayout(state.exp_avg(), p)) state.exp_avg(like_p(state.exp_avg()));
      if (!SameLayout(state.exp_avg_sq(), p)) state.exp_avg_sq(like_p(state.exp_avg_sq()));
      float* pp = p.data_ptr<float>();
      const float* gp = grad.data_ptr<float>();
      float* mp = state.exp_avg().data_ptr<float>();
      float* vp = state.exp_avg_sq().data_ptr<float>();
      at::parallel_for(0, p.numel(), /*grain_size=*/16384, [&](int64_t begin, int64_t end) {
        Update(pp + begin, gp + begin, mp + begin, vp + begin, end - begin, c);
      });
      p.unsafeGetTensorImpl()->bump_version();  // as an in-place ATen op would
    }
  }
  return loss;
}

}  // namespace traind::train
