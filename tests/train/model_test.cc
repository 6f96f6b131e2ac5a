#include "server/train/model.h"

#include <gtest/gtest.h>

namespace traind::train {
namespace {

TEST(ModelTest, StateDictNamesAndSizesMatchTorchvision) {
  ResNet18 model(1000);
  auto sd = StateDict(*model);
  // torchvision resnet18().state_dict(): 122 entries, in this order at the ends.
  ASSERT_EQ(sd.size(), 122u);
  EXPECT_EQ(sd[0].first, "conv1.weight");
  EXPECT_EQ(sd[1].first, "bn1.weight");
  EXPECT_EQ(sd[5].first, "bn1.num_batches_tracked");
  EXPECT_EQ(sd[6].first, "layer1.0.conv1.weight");
  EXPECT_EQ(sd[sd.size() - 2].first, "fc.weight");
  EXPECT_EQ(sd.back().first, "fc.bias");
  int64_t params = 0;
  for (const auto& p : model->parameters()) params += p.numel();
  EXPECT_EQ(params, 11689512);  // torchvision's published count
  bool has_downsample = false;
  for (const auto& [name, t] : sd) {
    if (name == "layer2.0.downsample.0.weight") {
      has_downsample = true;
      EXPECT_EQ(t.sizes(), (std::vector<int64_t>{128, 64, 1, 1}));
    }
    EXPECT_EQ(name.find("layer1.0.downsample"), std::string::npos);
  }
  EXPECT_TRUE(has_downsample);
}

TEST(ModelTest, ForwardShapesAndClassifierReset) {
  ResNet18 model(1000);
  model->ResetClassifier(7);
  model->eval();
  torch::NoGradGuard no_grad;
  auto out = model->forward(torch::randn({2, 3, 64, 64}));
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 7}));
  EXPECT_EQ(StateDict(*model).back().second.sizes(), (std::vector<int64_t>{7}));
}

TEST(ModelTest, XavierInitZeroesBiasesAndBoundsWeights) {
  ResNet18 model(10);
  XavierInit(*model);
  auto fc = model->fc();
  EXPECT_EQ(fc->bias.abs().max().item<float>(), 0.0f);
  const double bound = std::sqrt(6.0 / (512 + 10));
  EXPECT_LE(fc->weight.abs().max().item<double>(), bound + 1e-6);
  EXPECT_GT(fc->weight.abs().max().item<double>(), bound * 0.5);
}

}  // namespace
}  // namespace traind::train
