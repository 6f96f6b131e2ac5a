#include "server/train/step.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <utility>
#include <vector>

#include "server/train/fused_adam.h"

namespace traind::train {
namespace {

// LibTorch 2.4 replaced the per-device autocast functions with ones taking
// the device type; the engine builds against both.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool AutocastEnabled(torch::DeviceType d) { return at::autocast::is_autocast_enabled(d); }
void SetAutocastEnabled(torch::DeviceType d, bool on) { at::autocast::set_autocast_enabled(d, on); }
c10::ScalarType AutocastDtype(torch::DeviceType d) { return at::autocast::get_autocast_dtype(d); }
void SetAutocastDtype(torch::DeviceType d, c10::ScalarType t) {
  at::autocast::set_autocast_dtype(d, t);
}
#else
bool AutocastEnabled(torch::DeviceType d) {
  return d == torch::kCPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled();
}
void SetAutocastEnabled(torch::DeviceType d, bool on) {
  if (d == torch::kCPU) {
    at::autocast::set_cpu_enabled(on);
  } else {
    at::autocast::set_enabled(on);
  }
}
c10::ScalarType AutocastDtype(torch::DeviceType d) {
  return d == torch::kCPU ? at::autocast::get_autocast_cpu_dtype()
                          : at::autocast::get_autocast_gpu_dtype();
}
void SetAutocastDtype(torch::DeviceType d, c10::ScalarType t) {
  if (d == torch::kCPU) {
    at::autocast::set_autocast_cpu_dtype(t);
  } else {
    at::autocast::set_autocast_gpu_dtype(t);
  }
}
#endif

// While alive, the model's convolutions read the optimizer's bfloat16 copies
// of their weights (FusedAdam::Bf16Copy) instead of the float weights;
// convolutions without a copy (frozen ones) keep theirs, which autocast casts.
class ScopedBf16Weights {
 public:
  ScopedBf16Weights(FusedAdam* optimizer, ResNet18& model) {
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
  was_enabled_ = AutocastEnabled(device_);
  was_dtype_ = AutocastDtype(device_);
  SetAutocastEnabled(device_, true);
  SetAutocastDtype(device_, at::kBFloat16);
  at::autocast::increment_nesting();
}

ScopedBf16Autocast::~ScopedBf16Autocast() {
  if (!enabled_) return;
  // Weights cast for this scope are cached until the outermost scope ends.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  SetAutocastEnabled(device_, was_enabled_);
  SetAutocastDtype(device_, was_dtype_);
}

StepResult ForwardBackward(ResNet18& model, torch::optim::Optimizer& optimizer,
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
  {
    ScopedBf16Autocast autocast(bf16, images.device().type());
    ScopedBf16Weights weights(bf16 ? fused : nullptr, model);
    r.logits = model->forward(images);
    r.loss = torch::nn::functional::cross_entropy(r.logits, labels);
  }
  r.logits = r.logits.to(torch::kFloat);
  r.loss.backward();
  return r;
}

StepResult TrainStep(ResNet18& model, torch::optim::Optimizer& optimizer,
                     const torch::Tensor& images, const torch::Tensor& labels, bool bf16) {
  StepResult r = ForwardBackward(model, optimizer, images, labels, bf16);
  optimizer.step();
  return r;
}

}  // namespace traind::train
