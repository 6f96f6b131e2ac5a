#include "server/train/model.h"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

namespace traind::train {
namespace {

TEST(ModelTest, StateDictNamesAndSizesMatchTorchvision) {
  ResNet model = ResNet18(1000);
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
  ResNet model = ResNet18(1000);
  model->ResetClassifier(7);
  model->eval();
  torch::NoGradGuard no_grad;
  auto out = model->forward(torch::randn({2, 3, 64, 64}));
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 7}));
  EXPECT_EQ(StateDict(*model).back().second.sizes(), (std::vector<int64_t>{7}));
}

TEST(ModelTest, XavierInitZeroesBiasesAndBoundsWeights) {
  ResNet model = ResNet18(10);
  XavierInit(*model);
  auto fc = model->fc();
  EXPECT_EQ(fc->bias.abs().max().item<float>(), 0.0f);
  const double bound = std::sqrt(6.0 / (512 + 10));
  EXPECT_LE(fc->weight.abs().max().item<double>(), bound + 1e-6);
  EXPECT_GT(fc->weight.abs().max().item<double>(), bound * 0.5);
}


// The family is one class: an architecture is a value. Another layer count
// builds that many blocks per stage (torchvision's naming); ResNet18() is
// the ResNet-18 architecture, seed for seed. (golden_test checks ResNet-18's
// forward and backward against torchvision itself.)
TEST(ModelTest, TheArchitectureIsAValue) {
  const Architecture& r18 = ResNet18Architecture();
  EXPECT_STREQ(r18.name, "resnet18");
  EXPECT_EQ(r18.block, Block::kBasic);
  EXPECT_EQ(std::vector<int>(r18.layers, r18.layers + 4), (std::vector<int>{2, 2, 2, 2}));
  const Architecture small{"test", Block::kBasic, {1, 1, 3, 1}};
  ResNet model(small, 5);
  EXPECT_STREQ(model->architecture().name, "test");
  std::set<std::string> blocks;
  for (const auto& [name, t] : StateDict(*model)) {
    if (name.rfind("layer", 0) == 0) blocks.insert(name.substr(0, name.find('.', 7)));
  }
  EXPECT_EQ(blocks, (std::set<std::string>{"layer1.0", "layer2.0", "layer3.0", "layer3.1",
                                           "layer3.2", "layer4.0"}));
  torch::manual_seed(3);
  ResNet a = ResNet18(10);
  torch::manual_seed(3);
  ResNet b(ResNet18Architecture(), 10);
  const auto sa = StateDict(*a), sb = StateDict(*b);
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_EQ(sa[i].first, sb[i].first);
    EXPECT_TRUE(torch::equal(sa[i].second, sb[i].second)) << sa[i].first;
  }
}

}  // namespace
}  // namespace traind::train
