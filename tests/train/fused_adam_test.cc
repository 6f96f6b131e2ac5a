#include "server/train/fused_adam.h"

#include "server/train/model.h"
#include "server/train/step.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <vector>

namespace traind::train {
namespace {

// Parameters shaped as a network's: a channels-last conv weight, a matrix,
// a vector whose length is no multiple of any vector width.
std::vector<torch::Tensor> Params() {
  torch::manual_seed(3);
  return {torch::randn({64, 32, 3, 3}).contiguous(torch::MemoryFormat::ChannelsLast),
          torch::randn({101, 512}) * 0.1, torch::randn({37}), torch::randn({5, 7})};
}

std::vector<torch::Tensor> Clone(const std::vector<torch::Tensor>& ps) {
  std::vector<torch::Tensor> out;
  for (const auto& p : ps) out.push_back(p.clone().set_requires_grad(true));
  return out;
}

std::vector<torch::optim::OptimizerParamGroup> Groups(const std::vector<torch::Tensor>& ps) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{ps[0], ps[1]},
                      std::make_unique<torch::optim::AdamOptions>(1e-3));
  groups.emplace_back(std::vector<torch::Tensor>{ps[2], ps[3]},
                      std::make_unique<torch::optim::AdamOptions>(
                          torch::optim::AdamOptions(2e-4).betas({0.8, 0.99}).eps(1e-6)));
  return groups;
}

// Same gradients for both; the last parameter gets none in odd steps.
void SetGrads(std::vector<torch::Tensor>& ps, int step) {
  torch::manual_seed(100 + step);
  for (size_t i = 0; i < ps.size(); ++i) {
    auto g = torch::randn_like(ps[i]) * (i == 1 ? 1e-4 : 1e-2);
    ps[i].mutable_grad() = (i == 3 && step % 2 == 1) ? torch::Tensor() : g;
  }
}

// ATen's float kernels use fused multiply-add where it picks its AVX2 or
// AVX-512 kernels, which need AVX2 and FMA.
bool AtenUsesFma() {
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

TEST(FusedAdamTest, StepsAsTorchAdamDoes) {
  auto base = Params();
  auto ours = Clone(base), theirs = Clone(base);
  FusedAdam fused(Groups(ours), torch::optim::AdamOptions(1e-3));
  torch::optim::Adam reference(Groups(theirs), torch::optim::AdamOptions(1e-3));
  for (int step = 0; step < 6; ++step) {
    SetGrads(ours, step);
    SetGrads(theirs, step);
    fused.step();
    reference.step();
  }
  for (size_t i = 0; i < ours.size(); ++i) {
    SCOPED_TRACE(i);
    ASSERT_FALSE(torch::equal(ours[i], base[i]));  // it moved
    if (AtenUsesFma()) {
      EXPECT_TRUE(torch::equal(ours[i], theirs[i]))
          << "max difference " << (ours[i] - theirs[i]).abs().max().item<float>();
    } else {
      EXPECT_TRUE(torch::allclose(ours[i], theirs[i], 1e-6, 1e-7));
    }
    EXPECT_TRUE(ours[i].is_contiguous(base[i].suggest_memory_format()));
  }
  // The state is torch::optim::Adam's: step counts and moments alike.
  for (size_t g = 0; g < 2; ++g) {
    for (size_t i = 0; i < 2; ++i) {
      const auto& p = fused.param_groups()[g].params()[i];
      const auto& q = reference.param_groups()[g].params()[i];
      const auto& s = static_cast<torch::optim::AdamParamState&>(
          *fused.state().at(OptimizerStateKey(p)));
      const auto& r = static_cast<torch::optim::AdamParamState&>(
          *reference.state().at(OptimizerStateKey(q)));
      EXPECT_EQ(s.step(), r.step());
      EXPECT_TRUE(torch::allclose(s.exp_avg(), r.exp_avg(), 0, 0));
      EXPECT_TRUE(torch::allclose(s.exp_avg_sq(), r.exp_avg_sq(), 0, 0));
    }
  }
}

TEST(FusedAdamTest, TakesTorchAdamsPathForWhatItDoesNotFuse) {
  auto base = Params();
  auto ours = Clone(base), theirs = Clone(base);
  auto options = torch::optim::AdamOptions(1e-3).weight_decay(0.01).amsgrad(true);
  FusedAdam fused(ours, options);
  torch::optim::Adam reference(theirs, options);
  for (int step = 0; step < 3; ++step) {
    SetGrads(ours, step);
    SetGrads(theirs, step);
    fused.step();
    reference.step();
  }
  for (size_t i = 0; i < ours.size(); ++i) EXPECT_TRUE(torch::equal(ours[i], theirs[i])) << i;
}

TEST(FusedAdamTest, AcceptsGradientsInAnotherLayoutOrType) {
  auto p = torch::randn({8, 4, 3, 3}).contiguous(torch::MemoryFormat::ChannelsLast);
  auto ours = p.clone().set_requires_grad(true), theirs = p.clone().set_requires_grad(true);
  FusedAdam fused({ours}, torch::optim::AdamOptions(1e-2));
  torch::optim::Adam reference({theirs}, torch::optim::AdamOptions(1e-2));
  const auto g = torch::randn({8, 4, 3, 3}).to(torch::kBFloat16);  // contiguous, bf16
  ours.mutable_grad() = g;
  theirs.mutable_grad() = g.to(torch::kFloat).contiguous(torch::MemoryFormat::ChannelsLast);
  fused.step();
  reference.step();
  EXPECT_TRUE(torch::allclose(ours, theirs, 1e-6, 1e-7));
  EXPECT_FALSE(torch::equal(ours, p));
}

// Two equal networks, channels-last as the trainer holds them.
std::pair<ResNet, ResNet> TwinNetworks(int64_t classes) {
  torch::manual_seed(5);
  ResNet a = ResNet18(classes), b = ResNet18(classes);
  torch::NoGradGuard no_grad;
  auto pa = a->parameters(), pb = b->parameters();
  for (size_t i = 0; i < pa.size(); ++i) pb[i].copy_(pa[i]);
  for (auto* m : {&a, &b}) {
    for (auto& p : (*m)->parameters()) {
      if (p.dim() == 4) p.set_data(p.data().contiguous(torch::MemoryFormat::ChannelsLast));
    }
  }
  return {a, b};
}

// bf16 steps reading FusedAdam's weight copies come out exactly as autocast's
// per-step casts with LibTorch's Adam: parameters, moments and BatchNorm
// statistics alike.
TEST(FusedAdamTest, Bf16StepsThroughWeightCopiesEqualAutocastCasts) {
  auto [ours, theirs] = TwinNetworks(10);
  // Fine-tune style: the stem and layer1 frozen (no copies for them).
  for (auto* m : {&ours, &theirs}) {
    for (auto& p : (*m)->named_parameters()) {
      if (p.key().rfind("conv1", 0) == 0 || p.key().rfind("layer1", 0) == 0) {
        p.value().set_requires_grad(false);
      }
    }
  }
  auto trainable = [](ResNet& m) {
    std::vector<torch::Tensor> out;
    for (auto& p : m->parameters()) {
      if (p.requires_grad()) out.push_back(p);
    }
    return out;
  };
  FusedAdam fused(trainable(ours), torch::optim::AdamOptions(1e-3));
  torch::optim::Adam reference(trainable(theirs), torch::optim::AdamOptions(1e-3));
  for (int step = 0; step < 3; ++step) {
    torch::manual_seed(50 + step);
    const auto x = torch::randn({4, 3, 32, 32}).contiguous(torch::MemoryFormat::ChannelsLast);
    const auto y = torch::randint(0, 10, {4});
    const auto a = TrainStep(ours, fused, x, y, /*bf16=*/true);
    const auto b = TrainStep(theirs, reference, x, y, /*bf16=*/true);
    EXPECT_EQ(a.loss.item<float>(), b.loss.item<float>()) << step;
  }
  // The copies were read: the trainable convolutions' gradients are theirs.
  const auto& layer4_weight = ours->named_parameters()["layer4.0.conv1.weight"];
  EXPECT_FALSE(layer4_weight.grad().defined());
  const auto copy_grad = fused.Gradient(layer4_weight);
  ASSERT_TRUE(copy_grad.defined());
  EXPECT_EQ(copy_grad.scalar_type(), torch::kBFloat16);
  auto pa = ours->named_parameters(), pb = theirs->named_parameters();
  for (const auto& item : pa) {
    SCOPED_TRACE(item.key());
    if (AtenUsesFma()) {
      EXPECT_TRUE(torch::equal(item.value(), pb[item.key()]));
    } else {
      EXPECT_TRUE(torch::allclose(item.value(), pb[item.key()], 1e-5, 1e-6));
    }
  }
  auto ba = ours->named_buffers(), bb = theirs->named_buffers();
  for (const auto& item : ba) {
    SCOPED_TRACE(item.key());
    EXPECT_TRUE(torch::allclose(item.value(), bb[item.key()], 1e-5, 1e-6));
  }
}

TEST(FusedAdamTest, Bf16CopyFollowsWritesFromOutsideTheOptimizer) {
  auto p = torch::randn({8, 4, 3, 3})
               .contiguous(torch::MemoryFormat::ChannelsLast)
               .set_requires_grad(true);
  FusedAdam optimizer({p}, torch::optim::AdamOptions(1e-3));
  const auto first = optimizer.Bf16Copy(p);
  ASSERT_TRUE(first.defined());
  EXPECT_TRUE(first.requires_grad());
  EXPECT_TRUE(torch::equal(first, p.detach().to(torch::kBFloat16)));
  {
    torch::NoGradGuard no_grad;
    p.mul_(3);  // as a checkpoint restore or a broadcast from rank 0 writes it
  }
  EXPECT_TRUE(torch::equal(optimizer.Bf16Copy(p), p.detach().to(torch::kBFloat16)));
  // A step keeps the copy in step with the parameter it writes.
  optimizer.Bf16Copy(p).mutable_grad() = torch::randn({8, 4, 3, 3}).to(torch::kBFloat16);
  optimizer.step();
  EXPECT_TRUE(torch::equal(optimizer.Bf16Copy(p), p.detach().to(torch::kBFloat16)));
  // Not one of its parameters: no copy.
  EXPECT_FALSE(optimizer.Bf16Copy(torch::randn({3})).defined());
}

// A step reports how long each of its phases took, and they add up to no
// more than the step's own wall time; ForwardBackward has no update.
TEST(StepTest, ReportsEachPhasesTime) {
  torch::manual_seed(4);
  ResNet model = ResNet18(10);
  FusedAdam adam(model->parameters(), torch::optim::AdamOptions(1e-3));
  const auto x = torch::randn({2, 3, 32, 32}).contiguous(torch::MemoryFormat::ChannelsLast);
  const auto y = torch::randint(0, 10, {2});
  const auto start = std::chrono::steady_clock::now();
  const StepResult step = TrainStep(model, adam, x, y);
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GT(step.phases.forward_seconds, 0);
  EXPECT_GT(step.phases.backward_seconds, 0);
  EXPECT_GT(step.phases.update_seconds, 0);
  EXPECT_LE(step.phases.forward_seconds + step.phases.backward_seconds + step.phases.update_seconds,
            wall);
  const StepResult half = ForwardBackward(model, adam, x, y);
  EXPECT_GT(half.phases.forward_seconds, 0);
  EXPECT_GT(half.phases.backward_seconds, 0);
  EXPECT_EQ(half.phases.update_seconds, 0);
  EXPECT_EQ(step.phases.allreduce_seconds, 0);
}

}  // namespace
}  // namespace traind::train
