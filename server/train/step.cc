#include "server/train/step.h"

#include <ATen/autocast_mode.h>

#include <chrono>
#include <utility>
#include <vector>

#include "server/train/autocast.h"
#include "server/train/fused_adam.h"
#include "server/train/split_backward.h"

namespace traind::train {
namespace {

using PhaseClock = std::chrono::steady_clock;

double PhaseSeconds(PhaseClock::time_point from, PhaseClock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// While alive, the model's convolutions read the optimizer's bfloat16 copies
// of their weights (FusedAdam::Bf16Copy) instead of the float weights;
// convolutions without a copy (frozen ones) keep theirs, which autocast casts.
class ScopedBf16Weights {
 public:
  ScopedBf16Weights(FusedAdam* optimizer, ResNet& model) {
    if (optimizer == nullptr) return;
    for (const auto& m : model->modules(/*include_self=*/false)) {
      auto* conv = m->as<torch::nn::Conv2d>();
      if (conv == nullptr) continue;
      torch::Tensor copy = optimizer->Bf16Copy(conv->weight);
      if (!copy.defined()) continue;
      swapped_.emplace_back(conv, conv->weight);
      conv->weight = std::move(copy);
    }
  }
  ~ScopedBf16Weights() {
    for (auto& [conv, weight] : swapped_) conv->weight = std::move(weight);
  }
  ScopedBf16Weights(const ScopedBf16Weights&) = delete;
  ScopedBf16Weights& operator=(const ScopedBf16Weights&) = delete;

 private:
  std::vector<std::pair<torch::nn::Conv2dImpl*, torch::Tensor>> swapped_;
};

}  // namespace

torch::Tensor GradientOf(torch::optim::Optimizer& optimizer, const torch::Tensor& p) {
  if (auto* fused = dynamic_cast<FusedAdam*>(&optimizer)) return fused->Gradient(p);
  return p.grad();
}

ScopedBf16Autocast::ScopedBf16Autocast(bool enabled, torch::DeviceType device)
    : enabled_(enabled), device_(device) {
  if (!enabled_) return;
  was_enabled_ = autocast::Enabled(device_);
  was_dtype_ = autocast::Dtype(device_);
  autocast::SetEnabled(device_, true);
  autocast::SetDtype(device_, at::kBFloat16);
  at::autocast::increment_nesting();
}

ScopedBf16Autocast::~ScopedBf16Autocast() {
  if (!enabled_) return;
  // Weights cast for this scope are cached until the outermost scope ends.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  autocast::SetEnabled(device_, was_enabled_);
  autocast::SetDtype(device_, was_dtype_);
}

StepResult ForwardBackward(ResNet& model, torch::optim::Optimizer& optimizer,
                           const torch::Tensor& images, const torch::Tensor& labels, bool bf16) {
  model->train();
  // Gradients are dropped rather than zeroed (PyTorch 2's default): backward
  // then hands each parameter the gradient it computed instead of adding it
  // into a zero-filled one, two passes over the gradients fewer per step.
  auto* fused = dynamic_cast<FusedAdam*>(&optimizer);
  if (fused != nullptr) {
    fused->DropGradients();
  } else {
    for (auto& group : optimizer.param_groups()) {
      for (auto& p : group.params()) p.mutable_grad().reset();
    }
  }
  StepResult r;
  const auto start = PhaseClock::now();
  {
    ScopedBf16Autocast autocast(bf16, images.device().type());
    ScopedBf16Weights weights(bf16 ? fused : nullptr, model);
    r.logits = model->forward(images);
    r.loss = torch::nn::functional::cross_entropy(r.logits, labels);
  }
  r.logits = r.logits.to(torch::kFloat);
  const auto forward_end = PhaseClock::now();
  r.phases.forward_seconds = PhaseSeconds(start, forward_end);
  if (bf16 && fused == nullptr) {
    // The weights are cast afresh (no optimizer copies): no leaf gradient
    // the split could move (split_backward.h).
    r.loss.backward();
  } else {
    Backward(r.loss);  // split_backward.h
  }
  r.phases.backward_seconds = PhaseSeconds(forward_end, PhaseClock::now());
  return r;
}

StepResult TrainStep(ResNet& model, torch::optim::Optimizer& optimizer,
                     const torch::Tensor& images, const torch::Tensor& labels, bool bf16) {
  StepResult r = ForwardBackward(model, optimizer, images, labels, bf16);
  const auto start = PhaseClock::now();
  optimizer.step();
  r.phases.update_seconds = PhaseSeconds(start, PhaseClock::now());
  return r;
}

}  // namespace traind::train
