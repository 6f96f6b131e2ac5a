#include "server/train/step.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>

#include <chrono>
#include <functional>
#include <utility>
#include <vector>

#include "server/train/autocast.h"
#include "server/train/fused_adam.h"
#include "server/train/intra_op.h"
#include "server/train/split_backward.h"
#include "server/train/winograd_mode.h"

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

namespace {

// The stem's and the first `stages` stages' BatchNorm buffers.
std::vector<torch::Tensor> TrunkBuffers(ResNet& model, int stages) {
  std::vector<torch::Tensor> out;
  for (const auto& b : model->bn1()->buffers()) out.push_back(b);
  for (int s = 0; s < stages; ++s) {
    for (const auto& b : model->layer(s)->buffers()) out.push_back(b);
  }
  return out;
}

// The frozen trunk's output for `images`, on one intra-op thread, no graph.
torch::Tensor FrozenTrunk(ResNet& model, const torch::Tensor& images, int stages, bool bf16) {
  struct OneThread {
    const int threads = at::get_num_threads();
    OneThread() { UseIntraOpThreads(1); }
    ~OneThread() { UseIntraOpThreads(threads); }
  } one_thread;
  torch::NoGradGuard no_grad;
  ScopedBf16Autocast autocast(bf16, images.device().type());
  return model->ForwardTrunk(images, stages);
}

// Forward and backward; with `frozen_stages` >= 0, the forward pass from
// the trunk's output `trunk` (computed here first where undefined), and
// `side` run with the backward pass (split_backward.h).
StepResult ForwardBackwardFrom(ResNet& model, torch::optim::Optimizer& optimizer,
                               const torch::Tensor& images, const torch::Tensor& labels, bool bf16,
                               int frozen_stages, torch::Tensor trunk,
                               const std::function<void()>& side) {
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
  if (frozen_stages >= 0 && !trunk.defined()) {
    trunk = FrozenTrunk(model, images, frozen_stages, bf16);
  }
  {
    ScopedBf16Autocast autocast(bf16, images.device().type());
    ScopedBf16Weights weights(bf16 ? fused : nullptr, model);
    r.logits =
        frozen_stages >= 0 ? model->ForwardHead(trunk, frozen_stages) : model->forward(images);
    r.loss = torch::nn::functional::cross_entropy(r.logits, labels);
  }
  r.logits = r.logits.to(torch::kFloat);
  const auto forward_end = PhaseClock::now();
  r.phases.forward_seconds = PhaseSeconds(start, forward_end);
  if (bf16 && fused == nullptr) {
    // The weights are cast afresh (no optimizer copies): no leaf gradient
    // the split could move (split_backward.h).
    r.loss.backward();
    if (side) {
      torch::NoGradGuard no_grad;
      side();
    }
  } else {
    Backward(r.loss, side);  // split_backward.h
  }
  r.phases.backward_seconds = PhaseSeconds(forward_end, PhaseClock::now());
  return r;
}

}  // namespace

StepResult ForwardBackward(ResNet& model, torch::optim::Optimizer& optimizer,
                           const torch::Tensor& images, const torch::Tensor& labels, bool bf16) {
  return ForwardBackwardFrom(model, optimizer, images, labels, bf16, /*frozen_stages=*/-1, {},
                             nullptr);
}

StepResult TrainStep(ResNet& model, torch::optim::Optimizer& optimizer,
                     const torch::Tensor& images, const torch::Tensor& labels, bool bf16) {
  StepResult r = ForwardBackward(model, optimizer, images, labels, bf16);
  const auto start = PhaseClock::now();
  optimizer.step();
  r.phases.update_seconds = PhaseSeconds(start, PhaseClock::now());
  return r;
}

int FrozenStages(ResNet& model) {
  auto frozen = [](const torch::nn::Module& m) {
    for (const auto& p : m.parameters()) {
      if (p.requires_grad()) return false;
    }
    return true;
  };
  if (!frozen(*model->conv1()) || !frozen(*model->bn1())) return -1;
  int stages = 0;
  while (stages < 4 && frozen(*model->layer(stages))) ++stages;
  return stages;
}

StepResult TrainStepWithTrunk(ResNet& model, torch::optim::Optimizer& optimizer,
                              const torch::Tensor& images, const torch::Tensor& labels, bool bf16,
                              int frozen_stages, const torch::Tensor& next_images,
                              TrunkAhead* ahead) {
  torch::Tensor trunk = std::move(ahead->output);
  *ahead = TrunkAhead();
  TrunkAhead next;
  std::function<void()> side;
  if (next_images.defined()) {
    // The side task's thread takes this thread's settings: its Winograd
    // mode (autocast's, FrozenTrunk sets).
    side = [&, mode = GetWinogradMode()] {
      ScopedWinogradMode winograd(mode);
      for (const auto& b : TrunkBuffers(model, frozen_stages)) {
        next.buffers_before.push_back(b.clone());
      }
      next.output = FrozenTrunk(model, next_images, frozen_stages, bf16);
    };
  }
  StepResult r;
  try {
    r = ForwardBackwardFrom(model, optimizer, images, labels, bf16, frozen_stages, std::move(trunk),
                            side);
  } catch (...) {
    DropTrunkAhead(model, frozen_stages, &next);
    throw;
  }
  *ahead = std::move(next);
  const auto start = PhaseClock::now();
  optimizer.step();
  r.phases.update_seconds = PhaseSeconds(start, PhaseClock::now());
  return r;
}

void DropTrunkAhead(ResNet& model, int frozen_stages, TrunkAhead* ahead) {
  if (!ahead->buffers_before.empty()) {
    torch::NoGradGuard no_grad;
    const std::vector<torch::Tensor> buffers = TrunkBuffers(model, frozen_stages);
    for (size_t i = 0; i < buffers.size() && i < ahead->buffers_before.size(); ++i) {
      buffers[i].copy_(ahead->buffers_before[i]);
    }
  }
  *ahead = TrunkAhead();
}

}  // namespace traind::train
