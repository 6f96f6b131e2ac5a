#include "server/train/folded_eval.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "server/train/gemm_conv.h"
#include "server/train/model.h"
#include "server/train/step.h"

namespace traind::train {
namespace {

double RelativeError(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got.to(torch::kFloat) - want).norm() / want.norm()).item<double>();
}

float WorstError(const torch::Tensor& got, const torch::Tensor& want) {
  return (got.to(torch::kFloat) - want).abs().max().item<float>();
}

// A ResNet-18 in evaluation mode whose BatchNorms are not the identity
// (random scales, shifts and running statistics, as a trained network's),
// so that folding them is exercised; weights channels-last, as traind's.
ResNet TrainedLookingNetwork(int64_t classes) {
  torch::manual_seed(7);
  ResNet model = ResNet18(classes);
  torch::NoGradGuard no_grad;
  for (auto& m : model->modules(/*include_self=*/false)) {
    if (auto* bn = m->as<torch::nn::BatchNorm2d>()) {
      bn->weight.uniform_(0.5, 1.5);
      bn->bias.normal_(0.0, 0.2);
      bn->running_mean.normal_(0.0, 0.3);
      bn->running_var.uniform_(0.5, 2.0);
    }
  }
  for (auto& p : model->parameters()) {
    if (p.dim() == 4) p.set_data(p.data().contiguous(torch::MemoryFormat::ChannelsLast));
  }
  model->eval();
  return model;
}

class FoldedEvalTest : public ::testing::Test {
 protected:
  void TearDown() override { SetFoldedEvalEnabled(true); }
};

// The folded network's logits are as close to float32's as bfloat16
// autocast's are, for a full batch and a short last one, on one folding.
TEST_F(FoldedEvalTest, LogitsAreAsCloseToFloatAsAutocasts) {
  ResNet model = TrainedLookingNetwork(101);
  auto folded = FoldedResNet::Make(*model);
  if (folded == nullptr) {
    ASSERT_FALSE(CpuHasOneDnnBf16Gemms()) << "AVX-512 BF16 here, yet no folded evaluation";
    GTEST_SKIP() << "no oneDNN bfloat16 convolutions on this CPU (no AVX-512 BF16)";
  }
  torch::NoGradGuard no_grad;
  for (int64_t batch : {6, 3}) {
    SCOPED_TRACE(batch);
    const torch::Tensor x = torch::randn({batch, 3, 64, 64});
    const torch::Tensor want = model->forward(x);
    torch::Tensor autocast;
    {
      ScopedBf16Autocast scope(true);
      autocast = model->forward(x);
    }
    const torch::Tensor got = folded->Forward(x);
    EXPECT_EQ(got.scalar_type(), torch::kBFloat16);
    EXPECT_EQ(got.scalar_type(), autocast.scalar_type());
    ASSERT_EQ(got.sizes(), want.sizes());
    const double got_rel = RelativeError(got, want), autocast_rel = RelativeError(autocast, want);
    EXPECT_LE(got_rel, 1.25 * autocast_rel + 1e-4)
        << "folded relative error " << got_rel << ", autocast's " << autocast_rel;
    // And bfloat16-close at all (a wrong fold is off by the logits' scale).
    EXPECT_LT(got_rel, 0.05);
    const float scale = want.abs().max().item<float>();
    EXPECT_LE(WorstError(got, want), 2 * WorstError(autocast, want) + 1e-3 * scale);
    // The same argmax wherever float32's top two are not within bfloat16's
    // reach of each other.
    const auto top2 = std::get<0>(want.topk(2, 1));
    const torch::Tensor clear = (top2.select(1, 0) - top2.select(1, 1)) > 0.05 * scale;
    EXPECT_TRUE(
        got.to(torch::kFloat).argmax(1).eq(want.argmax(1)).logical_or(~clear).all().item<bool>());
  }
}

// Folding reads the weights once: a folded network keeps computing with
// them, and the next folding sees the new ones.
TEST_F(FoldedEvalTest, FoldingReadsTheWeightsOnce) {
  ResNet model = TrainedLookingNetwork(10);
  auto folded = FoldedResNet::Make(*model);
  if (folded == nullptr) GTEST_SKIP() << "no oneDNN bfloat16 convolutions on this CPU";
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({2, 3, 32, 32});
  const torch::Tensor before = folded->Forward(x);
  model->layer(3)->children()[0]->as<BasicBlockImpl>()->bn2()->running_mean.add_(5.0);
  EXPECT_TRUE(folded->Forward(x).equal(before));
  EXPECT_FALSE(FoldedResNet::Make(*model)->Forward(x).equal(before));
}

TEST_F(FoldedEvalTest, NotMadeInTrainingModeOrWhenTurnedOff) {
  ResNet model = TrainedLookingNetwork(10);
  model->train();
  EXPECT_EQ(FoldedResNet::Make(*model), nullptr);
  model->eval();
  SetFoldedEvalEnabled(false);
  EXPECT_EQ(FoldedResNet::Make(*model), nullptr);
  SetFoldedEvalEnabled(true);
  EXPECT_EQ(FoldedResNet::Make(*model) != nullptr, CpuHasOneDnnBf16Gemms());
}

}  // namespace
}  // namespace traind::train
