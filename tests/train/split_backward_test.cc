#include "server/train/split_backward.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

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

// A fine-tune network as the recipe freezes it: the stem, layer1 and layer2
// frozen, Adam over layer3, layer4 and fc.
struct FineTune {
  ResNet model = Network();
  std::unique_ptr<FusedAdam> adam;
  FineTune() {
    std::vector<torch::Tensor> trainable;
    for (const auto& p : model->named_parameters()) {
      const std::string& name = p.key();
      if (name.rfind("layer3", 0) == 0 || name.rfind("layer4", 0) == 0 ||
          name.rfind("fc", 0) == 0) {
        trainable.push_back(p.value());
      } else {
        p.value().set_requires_grad(false);
      }
    }
    adam = std::make_unique<FusedAdam>(trainable, torch::optim::AdamOptions(1e-3));
  }
};

std::vector<torch::Tensor> Batches(int count) {
  torch::manual_seed(12);
  std::vector<torch::Tensor> out;
  for (int i = 0; i < count; ++i) {
    out.push_back(torch::randn({6, 3, 64, 64}).contiguous(torch::MemoryFormat::ChannelsLast));
  }
  return out;
}

void ExpectSameState(ResNet& got, ResNet& want) {
  const auto want_params = want->named_parameters();
  for (const auto& p : got->named_parameters()) {
    EXPECT_TRUE(torch::equal(p.value(), want_params[p.key()])) << p.key();
  }
  const auto want_buffers = want->named_buffers();
  for (const auto& b : got->named_buffers()) {
    EXPECT_TRUE(torch::equal(b.value(), want_buffers[b.key()])) << b.key();
  }
}

TEST_F(SplitBackwardTest, FrozenStagesFollowTheTrainableParameters) {
  FineTune tune;
  EXPECT_EQ(FrozenStages(tune.model), 2);
  ResNet scratch = Network();
  EXPECT_EQ(FrozenStages(scratch), -1);
  for (auto& p : scratch->parameters()) p.set_requires_grad(false);
  for (auto& p : scratch->fc()->parameters()) p.set_requires_grad(true);
  EXPECT_EQ(FrozenStages(scratch), 4);
}

// Steps whose trunk was computed ahead, during the step before, end with
// the weights and BatchNorm statistics of steps that computed each trunk
// first (a job's first step, a resumed one), bit for bit: the trunk runs on
// one thread either way, and on the split pass's second thread it runs
// beside the backward pass without touching what that pass reads.
TEST_F(SplitBackwardTest, TrunkAheadGivesTheStepsOfTrunksComputedInPlace) {
  // As a job's thread holds its mode: the split pass's second thread has
  // none of its own.
  SetWinogradMode(WinogradMode::kOff);
  ScopedWinogradMode job_mode(WinogradMode::kAuto);
  const std::vector<torch::Tensor> images = Batches(4);
  const torch::Tensor labels = torch::randint(5, {6}, torch::kLong);
  for (const bool bf16 : {false, true}) {
    FineTune ahead_run, in_place;
    TrunkAhead ahead, none;
    std::vector<double> losses_ahead, losses_in_place;
    for (size_t i = 0; i < images.size(); ++i) {
      const torch::Tensor next = i + 1 < images.size() ? images[i + 1] : torch::Tensor();
      const bool had_trunk = ahead.output.defined();
      EXPECT_EQ(had_trunk, i > 0);
      losses_ahead.push_back(TrainStepWithTrunk(ahead_run.model, *ahead_run.adam, images[i], labels,
                                                bf16, 2, next, &ahead)
                                 .loss.item<double>());
      EXPECT_EQ(ahead.output.defined(), next.defined());
      losses_in_place.push_back(TrainStepWithTrunk(in_place.model, *in_place.adam, images[i],
                                                   labels, bf16, 2, torch::Tensor(), &none)
                                    .loss.item<double>());
      EXPECT_FALSE(none.output.defined());
    }
    EXPECT_EQ(losses_ahead, losses_in_place) << (bf16 ? "bf16" : "fp32");
    ExpectSameState(ahead_run.model, in_place.model);
  }
}

// The trunk on one thread instead of two: a step's logits and loss within
// float rounding of TrainStep's (the frozen stages get no gradient, so their
// last bits move the rest only slightly; after an update Adam turns such
// differences in near-zero gradients into whole steps, so only the first
// step is compared).
TEST_F(SplitBackwardTest, TrunkAheadStepsAreTrainStepsUpToRounding) {
  const std::vector<torch::Tensor> images = Batches(2);
  const torch::Tensor labels = torch::randint(5, {6}, torch::kLong);
  FineTune ahead_run, plain;
  TrunkAhead ahead;
  const StepResult got = TrainStepWithTrunk(ahead_run.model, *ahead_run.adam, images[0], labels,
                                            false, 2, images[1], &ahead);
  const StepResult want = TrainStep(plain.model, *plain.adam, images[0], labels);
  EXPECT_LE((got.logits - want.logits).abs().max().item<double>(),
            1e-4 * want.logits.abs().max().item<double>());
  EXPECT_NEAR(got.loss.item<double>(), want.loss.item<double>(), 1e-5 * want.loss.item<double>());
  EXPECT_GT(got.phases.forward_seconds, 0);
  EXPECT_GT(got.phases.backward_seconds, 0);
  EXPECT_GT(got.phases.update_seconds, 0);
}

// A trunk computed ahead for a step that will not run: dropping it puts its
// BatchNorms' running statistics and batch counts back, so a checkpoint
// written then holds what a run that never computed it holds.
TEST_F(SplitBackwardTest, ADroppedTrunkLeavesNoTraceInTheStatistics) {
  const std::vector<torch::Tensor> images = Batches(2);
  const torch::Tensor labels = torch::randint(5, {6}, torch::kLong);
  FineTune dropped, never;
  TrunkAhead ahead, none;
  TrainStepWithTrunk(dropped.model, *dropped.adam, images[0], labels, false, 2, images[1], &ahead);
  TrainStepWithTrunk(never.model, *never.adam, images[0], labels, false, 2, torch::Tensor(), &none);
  ASSERT_TRUE(ahead.output.defined());
  const auto buffers = never.model->named_buffers();
  EXPECT_FALSE(
      torch::equal(dropped.model->named_buffers()["bn1.running_mean"], buffers["bn1.running_mean"]))
      << "the trunk ahead did not advance the statistics";
  DropTrunkAhead(dropped.model, 2, &ahead);
  EXPECT_FALSE(ahead.output.defined());
  ExpectSameState(dropped.model, never.model);
}

}  // namespace
}  // namespace traind::train
