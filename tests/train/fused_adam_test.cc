#include "server/train/fused_adam.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

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
          *fused.state().at(c10::guts::to_string(p.unsafeGetTensorImpl())));
      const auto& r = static_cast<torch::optim::AdamParamState&>(
          *reference.state().at(c10::guts::to_string(q.unsafeGetTensorImpl())));
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

}  // namespace
}  // namespace traind::train
