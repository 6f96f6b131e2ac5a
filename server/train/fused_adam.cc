#include "server/train/fused_adam.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/torch.h>

#include "server/train/bf16.h"

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

// The update of elements [0, n); Grad is float or uint16_t (bfloat16 bits);
// with kCopy, `copy` receives the new parameter in bfloat16. (Template
// arguments rather than run-time tests, so every variant vectorizes.)
template <typename Grad, bool kCopy>
inline void UpdateRange(float* __restrict p, const Grad* __restrict g, float* __restrict m,
                        float* __restrict v, uint16_t* __restrict copy, int64_t n,
                        const Coefficients& c) {
  for (int64_t i = 0; i < n; ++i) {
    float grad;
    if constexpr (std::is_same_v<Grad, float>) {
      grad = g[i];
    } else {
      grad = FromBf16(g[i]);
    }
    const float avg = std::fma(grad, c.one_minus_beta1, m[i] * c.beta1);
    const float avg_sq = std::fma(c.one_minus_beta2 * grad, grad, v[i] * c.beta2);
    const float denom = std::sqrt(avg_sq) / c.sqrt_bias_correction2 + c.eps;
    const float updated = p[i] + (c.neg_step * avg) / denom;
    p[i] = updated;
    m[i] = avg;
    v[i] = avg_sq;
    if constexpr (kCopy) copy[i] = ToBf16(updated);
  }
}

TRAIND_VECTOR_CLONES
void Update(float* p, const float* g, float* m, float* v, int64_t n, const Coefficients& c) {
  UpdateRange<float, false>(p, g, m, v, nullptr, n, c);
}

TRAIND_VECTOR_CLONES
void UpdateWithCopy(float* p, const float* g, float* m, float* v, uint16_t* copy, int64_t n,
                    const Coefficients& c) {
  UpdateRange<float, true>(p, g, m, v, copy, n, c);
}

TRAIND_VECTOR_CLONES
void UpdateFromBf16WithCopy(float* p, const uint16_t* g, float* m, float* v, uint16_t* copy,
                            int64_t n, const Coefficients& c) {
  UpdateRange<uint16_t, true>(p, g, m, v, copy, n, c);
}

TRAIND_VECTOR_CLONES
void UpdateFromBf16(float* p, const uint16_t* g, float* m, float* v, int64_t n,
                    const Coefficients& c) {
  UpdateRange<uint16_t, false>(p, g, m, v, nullptr, n, c);
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

std::string OptimizerStateKey(const torch::Tensor& p) {
  return c10::guts::to_string(p.unsafeGetTensorImpl());
}

bool FusedAdam::FusesAll() const {
  for (const auto& group : param_groups_) {
    const auto& o = static_cast<const torch::optim::AdamOptions&>(group.options());
    if (o.amsgrad() || o.weight_decay() != 0) return false;
    for (const auto& p : group.params()) {
      if (!Fusable(p)) return false;
    }
  }
  return true;
}

torch::Tensor FusedAdam::Bf16Copy(const torch::Tensor& p) {
  if (!FusesAll()) return {};
  auto it = copies_.find(p.unsafeGetTensorImpl());
  if (it == copies_.end()) {
    bool mine = false;
    for (const auto& group : param_groups_) {
      for (const auto& q : group.params()) mine = mine || q.is_same(p);
    }
    if (!mine) return {};
    it = copies_.emplace(p.unsafeGetTensorImpl(), Copy{}).first;
  }
  Copy& copy = it->second;
  if (!copy.value.defined() || copy.data != p.data_ptr() || copy.version != p._version()) {
    torch::NoGradGuard no_grad;
    copy.value = p.detach().to(torch::kBFloat16).set_requires_grad(p.requires_grad());
    copy.data = p.data_ptr();
    copy.version = p._version();
  }
  return copy.value;
}

torch::Tensor FusedAdam::Gradient(const torch::Tensor& p) const {
  if (p.grad().defined()) return p.grad();
  auto it = copies_.find(p.unsafeGetTensorImpl());
  return it == copies_.end() ? torch::Tensor() : it->second.value.grad();
}

void FusedAdam::DropGradients() {
  for (auto& group : param_groups_) {
    for (auto& p : group.params()) p.mutable_grad().reset();
  }
  for (auto& [impl, copy] : copies_) {
    if (copy.value.defined()) copy.value.mutable_grad().reset();
  }
}

torch::Tensor FusedAdam::step(LossClosure closure) {
  if (!FusesAll()) return torch::optim::Adam::step(std::move(closure));
  RECORD_FUNCTION("traind::fused_adam_step", std::vector<c10::IValue>());  // for the profiler
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
      auto copy_it = copies_.find(p.unsafeGetTensorImpl());
      Copy* copy = copy_it == copies_.end() || !copy_it->second.value.defined()
                       ? nullptr
                       : &copy_it->second;
      torch::Tensor grad = Gradient(p);
      if (!grad.defined()) continue;
      const std::string key = OptimizerStateKey(p);
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
      // Gradients and moments in another layout (a restored checkpoint's, an
      // averaged gradient's) come to the parameter's first; a bfloat16
      // gradient in its layout is read as it is.
      auto like_p = [&](const torch::Tensor& t, torch::ScalarType type) {
        return t.scalar_type() == type && SameLayout(t, p)
                   ? t
                   : torch::empty_like(p, torch::MemoryFormat::Preserve).to(type).copy_(t);
      };
      const bool bf16_grad = grad.scalar_type() == torch::kBFloat16;
      grad = like_p(grad, bf16_grad ? torch::kBFloat16 : torch::kFloat);
      if (!SameLayout(state.exp_avg(), p)) state.exp_avg(like_p(state.exp_avg(), torch::kFloat));
      if (!SameLayout(state.exp_avg_sq(), p)) {
        state.exp_avg_sq(like_p(state.exp_avg_sq(), torch::kFloat));
      }
      if (copy != nullptr && !SameLayout(copy->value, p)) copy = nullptr;  // remade when next asked
      float* pp = p.data_ptr<float>();
      float* mp = state.exp_avg().data_ptr<float>();
      float* vp = state.exp_avg_sq().data_ptr<float>();
      uint16_t* cp = copy == nullptr ? nullptr
                                     : reinterpret_cast<uint16_t*>(copy->value.data_ptr());
      const void* gp = grad.data_ptr();
      at::parallel_for(0, p.numel(), /*grain_size=*/16384, [&](int64_t begin, int64_t end) {
        const int64_t n = end - begin;
        float *pb = pp + begin, *mb = mp + begin, *vb = vp + begin;
        if (bf16_grad) {
          const auto* gb = static_cast<const uint16_t*>(gp) + begin;
          if (cp != nullptr) {
            UpdateFromBf16WithCopy(pb, gb, mb, vb, cp + begin, n, c);
          } else {
            UpdateFromBf16(pb, gb, mb, vb, n, c);
          }
        } else {
          const auto* gb = static_cast<const float*>(gp) + begin;
          if (cp != nullptr) {
            UpdateWithCopy(pb, gb, mb, vb, cp + begin, n, c);
          } else {
            Update(pb, gb, mb, vb, n, c);
          }
        }
      });
      p.unsafeGetTensorImpl()->bump_version();  // as an in-place ATen op would
      if (copy != nullptr) {
        copy->value.unsafeGetTensorImpl()->bump_version();
        copy->version = p._version();
      } else if (copy_it != copies_.end()) {
        copy_it->second.value = torch::Tensor();  // stale: remade when next asked
      }
    }
  }
  return loss;
}

}  // namespace traind::train
