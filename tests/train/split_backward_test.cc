#include "server/train/split_backward.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <stdexcept>
#include <string>

#include "server/train/fused_adam.h"
#include "server/train/model.h"
#include "server/train/step.h"
#include "server/train/winograd_conv.h"

namespace traind::train {
namespace {

// A 2-thread training thread with Winograd convolutions on, as a job's.
class SplitBackwardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!WinogradAvailable()) {
      GTEST_SKIP() << "the split applies with Winograd convolutions only, and oneDNN has no "
                      "float32 Winograd kernel for this CPU (or traind was built without "
                      "libdnnl-dev)";
    }
    threads_ = at::get_num_threads();
    at::set_num_threads(2);
    SetWinogradMode(WinogradMode::kAuto);
  }
  void TearDown() override {
    SetWinogradMode(WinogradMode::kOff);
    SetSplitBackwardEnabled(true);
    if (threads_ > 0) at::set_num_threads(threads_);
  }

  int threads_ = 0;
};

// A ResNet-18 at 64 px, weights channels-last as traind's: Winograd
// convolutions in layer1-3, LibTorch's for the stem, the strided ones and
// the downsamples.
ResNet Network() {
  torch::manual_seed(3);
  ResNet model = ResNet18(5);
  for (auto& p : model->parameters()) {
    if (p.dim() == 4) p.set_data(p.data().contiguous(torch::MemoryFormat::ChannelsLast));
  }
  return model;
}

// Every parameter's gradient after one ForwardBackward, split or not, as
// the job's FusedAdam would apply it (in bf16, its bfloat16 copies' for the
// trainable convolutions), in float32.
std::map<std::string, torch::Tensor> Gradients(ResNet& model, bool split, bool bf16 = false) {
  SetSplitBackwardEnabled(split);
  torch::manual_seed(11);
  const torch::Tensor images =
      torch::randn({6, 3, 64, 64}).contiguous(torch::MemoryFormat::ChannelsLast);
  const torch::Tensor labels = torch::randint(5, {6}, torch::kLong);
  FusedAdam adam(model->parameters(), torch::optim::AdamOptions(1e-3));
  ForwardBackward(model, adam, images, labels, bf16);
  std::map<std::string, torch::Tensor> grads;
  for (const auto& p : model->named_parameters()) {
    const torch::Tensor g = GradientOf(adam, p.value());
    grads[p.key()] = g.defined() ? g.to(torch::kFloat, /*non_blocking=*/false, /*copy=*/true)
                                 : torch::Tensor();
  }
  return grads;
}

double RelativeError(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got - want).norm() / want.norm()).item<double>();
}

TEST_F(SplitBackwardTest, EveryWeightGetsTheGradientOfTheUnsplitPass) {
  ResNet model = Network();
  ASSERT_TRUE(SplitBackwardApplies());
  const auto whole = Gradients(model, false);
  const auto split = Gradients(model, true);
  ASSERT_EQ(whole.size(), split.size());
  int differ = 0;
  for (const auto& [name, want] : whole) {
    const torch::Tensor& got = split.at(name);
    ASSERT_TRUE(want.defined()) << name;
    ASSERT_TRUE(got.defined()) << name << " got no gradient";
    EXPECT_FALSE(got.requires_grad()) << name;
    EXPECT_EQ(got.sizes(), want.sizes()) << name;
    // The same operators on one thread instead of two (and the stem's in
    // two halves of the batch): sums in another order, nothing more.
    EXPECT_LT(RelativeError(got, want), 1e-5) << name;
    differ += !torch::equal(got, want);
  }
  // The split did run: sums in another order change some last bits.
  EXPECT_GT(differ, 0);
  // One thread for each operator, in a fixed order: the same bits again.
  const auto again = Gradients(model, true);
  for (const auto& [name, got] : split) {
    EXPECT_TRUE(torch::equal(again.at(name), got)) << name;
  }
}

TEST_F(SplitBackwardTest, FrozenWeightsGetNoGradient) {
  ResNet model = Network();
  // A fine-tune job's: the stem, layer1 and layer2 frozen.
  for (const auto& p : model->named_parameters()) {
    const std::string& name = p.key();
    if (name.rfind("layer3", 0) != 0 && name.rfind("layer4", 0) != 0 && name.rfind("fc", 0) != 0) {
      p.value().set_requires_grad(false);
    }
  }
  const auto whole = Gradients(model, false);
  const auto split = Gradients(model, true);
  int trained = 0;
  for (const auto& [name, want] : whole) {
    const torch::Tensor& got = split.at(name);
    ASSERT_EQ(got.defined(), want.defined()) << name;
    if (!want.defined()) continue;
    ++trained;
    EXPECT_LT(RelativeError(got, want), 1e-5) << name;
  }
  EXPECT_GT(trained, 0);
}

TEST_F(SplitBackwardTest, Bf16StepsGiveTheOptimizerCopiesTheirGradients) {
  ResNet model = Network();
  const auto whole = Gradients(model, false, /*bf16=*/true);
  const auto split = Gradients(model, true, /*bf16=*/true);
  int differ = 0;
  for (const auto& [name, want] : whole) {
    const torch::Tensor& got = split.at(name);
    ASSERT_TRUE(want.defined()) << name;
    ASSERT_TRUE(got.defined()) << name << " got no gradient";
    // bfloat16 gradients: summed in another order they may round to the
    // next bfloat16 (2^-8 relative) here and there.
    EXPECT_LT(RelativeError(got, want), 1e-2) << name;
    differ += !torch::equal(got, want);
  }
  EXPECT_GT(differ, 0);
  const auto again = Gradients(model, true, /*bf16=*/true);
  for (const auto& [name, got] : split) {
    EXPECT_TRUE(torch::equal(again.at(name), got)) << name;
  }
}

// y = x * w, elementwise, whose weight gradient goes through
// QueueWeightGradient; `queued` says whether it was taken, `fail` makes the
// queued gradient throw.
struct Scale : public torch::autograd::Function<Scale> {
  static bool queued;
  static bool fail;
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& w) {
    ctx->save_for_backward({x, w});
    return x * w;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor x = saved[0], w = saved[1], gy = grads[0];
    auto gradient = [x, gy]() -> torch::Tensor {
      if (fail) throw std::runtime_error("the weight gradient failed");
      return (gy * x).sum(0);
    };
    queued = QueueWeightGradient(w, gradient);
    return {gy * w, queued ? torch::Tensor() : gradient()};
  }
};
bool Scale::queued = false;
bool Scale::fail = false;

TEST_F(SplitBackwardTest, AQueuedGradientLandsOnItsWeight) {
  torch::Tensor w = torch::full({4}, 2.0, torch::requires_grad());
  torch::Tensor x = torch::arange(8, torch::kFloat).reshape({2, 4}).requires_grad_(true);
  Scale::fail = false;
  Backward(Scale::apply(x, w).sum());
  EXPECT_TRUE(Scale::queued);
  ASSERT_TRUE(w.grad().defined());
  EXPECT_TRUE(torch::equal(w.grad(), torch::tensor({4.0f, 6.0f, 8.0f, 10.0f})));
  EXPECT_TRUE(torch::equal(x.grad(), torch::full({2, 4}, 2.0)));
  // A second pass adds to the gradient there, as autograd does.
  Backward(Scale::apply(x, w).sum());
  EXPECT_TRUE(torch::equal(w.grad(), torch::tensor({8.0f, 12.0f, 16.0f, 20.0f})));
}

TEST_F(SplitBackwardTest, AnErrorOnTheSecondThreadReachesTheCaller) {
  torch::Tensor w = torch::ones({4}, torch::requires_grad());
  torch::Tensor x = torch::ones({3, 4}, torch::requires_grad());
  Scale::fail = true;
  try {
    Backward(Scale::apply(x, w).sum());
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "the weight gradient failed");
  }
  Scale::fail = false;
  EXPECT_FALSE(w.grad().defined());
}

TEST_F(SplitBackwardTest, NotSplitAtOtherThreadCountsOrWhenOff) {
  torch::Tensor w = torch::ones({4}, torch::requires_grad());
  torch::Tensor x = torch::ones({3, 4}, torch::requires_grad());
  Scale::fail = false;
  at::set_num_threads(1);
  Backward(Scale::apply(x, w).sum());
  EXPECT_FALSE(Scale::queued);
  at::set_num_threads(2);
  SetSplitBackwardEnabled(false);
  Backward(Scale::apply(x, w).sum());
  EXPECT_FALSE(Scale::queued);
  SetSplitBackwardEnabled(true);
  SetWinogradMode(WinogradMode::kOff);  // a job that trains as PyTorch does
  Backward(Scale::apply(x, w).sum());
  EXPECT_FALSE(Scale::queued);
  EXPECT_TRUE(torch::equal(w.grad(), torch::full({4}, 9.0)));
}

}  // namespace
}  // namespace traind::train
