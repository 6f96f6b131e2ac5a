#include "server/train/fused_batch_norm.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <limits>
#include <ostream>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "server/train/model.h"
#include "server/train/step.h"

namespace traind::train {
namespace {

struct Case {
  int64_t batch, channels, size;
  bool residual, relu;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.batch << "x" << c.channels << "x" << c.size << "x" << c.size
      << (c.residual ? ", + residual" : "") << (c.relu ? ", ReLU" : "");
}

// A bfloat16 channels-last activation whose channels have different means
// and spreads, as convolution outputs do.
torch::Tensor Activation(const Case& c, double offset) {
  torch::Tensor scale = torch::rand({1, c.channels, 1, 1}) * 3 + 0.1;
  torch::Tensor shift = torch::randn({1, c.channels, 1, 1}) * offset;
  return (torch::randn({c.batch, c.channels, c.size, c.size}) * scale + shift)
      .to(torch::kBFloat16)
      .contiguous(torch::MemoryFormat::ChannelsLast);
}

// Two BatchNorms with the same random parameters and running statistics.
std::pair<torch::nn::BatchNorm2d, torch::nn::BatchNorm2d> TwoBatchNorms(int64_t channels) {
  torch::nn::BatchNorm2d a(channels);
  torch::nn::BatchNorm2d b(channels);
  torch::NoGradGuard no_grad;
  a->weight.uniform_(0.5, 1.5);
  a->bias.normal_(0, 0.5);
  a->running_mean.normal_(0, 1);
  a->running_var.uniform_(0.5, 2);
  b->weight.copy_(a->weight);
  b->bias.copy_(a->bias);
  b->running_mean.copy_(a->running_mean);
  b->running_var.copy_(a->running_var);
  return {a, b};
}

// LibTorch's own sequence (the fused path switched off).
torch::Tensor Unfused(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x,
                      const torch::Tensor& residual, bool relu) {
  SetFusedBatchNormEnabled(false);
  torch::Tensor y = BatchNormAct(bn, x, residual, relu);
  SetFusedBatchNormEnabled(true);
  return y;
}

// `got` (bfloat16) against LibTorch's `want`: every element within one
// bfloat16 rounding step (2^-7 relative) of `want`, or of what was added to
// it, and nearly all of them identical: the same arithmetic, where only the
// last float bits of the per-channel terms may differ.
void ExpectSameRounding(const torch::Tensor& got, const torch::Tensor& want,
                        const torch::Tensor& added, const char* what) {
  ASSERT_EQ(got.scalar_type(), torch::kBFloat16) << what;
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_TRUE(got.is_contiguous(torch::MemoryFormat::ChannelsLast)) << what;
  torch::Tensor g = got.to(torch::kFloat);
  torch::Tensor w = want.to(torch::kFloat);
  torch::Tensor bound =
      (w.abs() + (added.defined() ? added.to(torch::kFloat).abs() : w.abs())) * (1.0 / 128);
  EXPECT_LE(((g - w).abs() - bound).max().item<float>(), 0.0f)
      << what << ": max |diff| " << (g - w).abs().max().item<float>();
  const double same = g.eq(w).to(torch::kDouble).mean().item<double>();
  EXPECT_GE(same, 0.99) << what << ": only " << same << " of the elements identical";
}

// A bfloat16 result within its rounding (2^-8 relative) of `want`, plus a
// sliver of the largest for float sums.
void ExpectWithinBf16(const torch::Tensor& got, const torch::Tensor& want, const char* what) {
  ASSERT_TRUE(got.defined()) << what;
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  torch::Tensor g = got.to(torch::kDouble);
  torch::Tensor bound = want.abs() * (1.0 / 256) + want.abs().max() * 1e-4;
  EXPECT_LE(((g - want).abs() - bound).max().item<double>(), 0.0)
      << what << ": max |diff| " << (g - want).abs().max().item<double>() << ", max |want| "
      << want.abs().max().item<double>();
}

// Float results of sums over bfloat16 values, against double arithmetic.
void ExpectClose(const torch::Tensor& got, const torch::Tensor& want, double rtol,
                 const char* what) {
  ASSERT_TRUE(got.defined()) << what;
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  torch::Tensor g = got.to(torch::kDouble);
  torch::Tensor w = want.to(torch::kDouble);
  const double scale = w.abs().max().item<double>();
  EXPECT_LE((g - w).abs().max().item<double>(), rtol * scale)
      << what << ": max |diff| " << (g - w).abs().max().item<double>() << ", max |want| " << scale;
}

// A ResNet-18 for 10 classes from `seed`, its convolution weights
// channels-last as traind's are.
ResNet ChannelsLastResNet18(uint64_t seed) {
  torch::manual_seed(seed);
  ResNet model = ResNet18(10);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) {
    if (p.dim() == 4) p.set_data(p.data().contiguous(torch::MemoryFormat::ChannelsLast));
  }
  return model;
}

class FusedBatchNormTest : public ::testing::TestWithParam<Case> {};

TEST_P(FusedBatchNormTest, TrainingForwardAndBackwardAsLibTorch) {
  const Case c = GetParam();
  torch::manual_seed(7);
  auto [fused_bn, plain_bn] = TwoBatchNorms(c.channels);
  const torch::Tensor x = Activation(c, /*offset=*/4.0);
  const torch::Tensor residual = c.residual ? Activation(c, 1.0) : torch::Tensor();
  const torch::Tensor x1 = x.clone().requires_grad_();
  const torch::Tensor x2 = x.clone().requires_grad_();
  torch::Tensor r1, r2;
  if (c.residual) {
    r1 = residual.clone().requires_grad_();
    r2 = residual.clone().requires_grad_();
  }

  ASSERT_TRUE(UsesFusedBatchNorm(*fused_bn, x1, r1));
  torch::Tensor got = BatchNormAct(*fused_bn, x1, r1, c.relu);
  torch::Tensor want = Unfused(*plain_bn, x2, r2, c.relu);
  ExpectSameRounding(got, want, residual, "output");

  // Running statistics advance as LibTorch's (unbiased variance).
  EXPECT_TRUE(torch::allclose(fused_bn->running_mean, plain_bn->running_mean, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(fused_bn->running_var, plain_bn->running_var, 1e-5, 1e-6));
  EXPECT_EQ(fused_bn->num_batches_tracked.item<int64_t>(), 1);
  EXPECT_EQ(plain_bn->num_batches_tracked.item<int64_t>(), 1);

  const torch::Tensor dy = torch::randn(got.sizes());
  (got.to(torch::kFloat) * dy).sum().backward();
  (want.to(torch::kFloat) * dy).sum().backward();
  // The gradients against double arithmetic on the same bfloat16 operands
  // (LibTorch's own sums are less exact where the incoming gradient is not
  // channels-last: bias gradients 0.5 % off).
  torch::Tensor g = dy.to(torch::kBFloat16).to(torch::kDouble);
  if (c.relu) g = g * got.gt(0).to(torch::kDouble);
  const std::vector<int64_t> dims{0, 2, 3};
  const torch::Tensor xd = x.to(torch::kDouble);
  const torch::Tensor centred = xd - xd.mean(dims, /*keepdim=*/true);
  const double count = static_cast<double>(x.numel() / c.channels);
  const torch::Tensor invstd =
      1 / (centred.pow(2).sum(dims, true) / count + fused_bn->options.eps()).sqrt();
  const torch::Tensor sum_g = g.sum(dims, true);
  const torch::Tensor dot = (g * centred).sum(dims, true);
  const torch::Tensor w = fused_bn->weight.to(torch::kDouble).view({1, -1, 1, 1});
  const torch::Tensor dx = (g - sum_g / count - centred * invstd.pow(2) * dot / count) * invstd * w;
  ExpectWithinBf16(x1.grad(), dx, "input gradient");
  ExpectClose(fused_bn->weight.grad(), (dot * invstd).flatten(), 1e-5, "weight gradient");
  ExpectClose(fused_bn->bias.grad(), sum_g.flatten(), 1e-5, "bias gradient");
  if (c.residual) {
    // The add passes the (masked) gradient on unchanged: bit for bit.
    EXPECT_TRUE(torch::equal(r1.grad(), r2.grad()));
  }
}

TEST_P(FusedBatchNormTest, EvaluationAsLibTorch) {
  const Case c = GetParam();
  torch::manual_seed(8);
  auto [fused_bn, plain_bn] = TwoBatchNorms(c.channels);
  fused_bn->eval();
  plain_bn->eval();
  const torch::Tensor x = Activation(c, 1.0);
  const torch::Tensor residual = c.residual ? Activation(c, 1.0) : torch::Tensor();
  torch::NoGradGuard no_grad;
  ASSERT_TRUE(UsesFusedBatchNorm(*fused_bn, x, residual));
  ExpectSameRounding(BatchNormAct(*fused_bn, x, residual, c.relu),
                     Unfused(*plain_bn, x, residual, c.relu), residual, "output");
  EXPECT_TRUE(torch::equal(fused_bn->running_mean, plain_bn->running_mean));
  EXPECT_EQ(fused_bn->num_batches_tracked.item<int64_t>(), 0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, FusedBatchNormTest,
                         ::testing::Values(Case{8, 64, 16, false, true},   // the stem's
                                           Case{4, 128, 8, true, true},    // a block's end
                                           Case{4, 256, 6, false, false},  // a downsample's
                                           Case{32, 512, 4, true, false},
                                           Case{12, 64, 7, true, true}));  // a part block

TEST(FusedBatchNorm, ResultDoesNotDependOnThreadCount) {
  torch::manual_seed(9);
  const Case c{16, 64, 32, true, true};
  const torch::Tensor x = Activation(c, 2.0);
  const torch::Tensor residual = Activation(c, 1.0);
  auto run = [&](int threads) {
    torch::set_num_threads(threads);
    torch::manual_seed(10);  // the same parameters each time
    torch::nn::BatchNorm2d bn = TwoBatchNorms(c.channels).first;
    const torch::Tensor xg = x.clone().requires_grad_();
    torch::Tensor y = BatchNormAct(*bn, xg, residual, true);
    y.to(torch::kFloat).sum().backward();
    return std::make_tuple(y, xg.grad(), bn->running_var.clone(), bn->weight.grad());
  };
  const auto one = run(1);
  const auto two = run(2);
  EXPECT_TRUE(torch::equal(std::get<0>(one), std::get<0>(two)));
  EXPECT_TRUE(torch::equal(std::get<1>(one), std::get<1>(two)));
  EXPECT_TRUE(torch::equal(std::get<2>(one), std::get<2>(two)));
  EXPECT_TRUE(torch::equal(std::get<3>(one), std::get<3>(two)));
}

TEST(FusedBatchNorm, OtherCasesAreLibTorchsSequenceExactly) {
  torch::manual_seed(11);
  const Case c{4, 64, 8, true, true};
  const torch::Tensor bf16 = Activation(c, 1.0);
  const torch::Tensor residual = Activation(c, 1.0);
  struct Other {
    const char* what;
    torch::Tensor x, residual;
  };
  const Other others[] = {
      {"NCHW memory", bf16.contiguous(), residual.contiguous()},
      {"float NCHW memory", bf16.to(torch::kFloat).contiguous(),
       residual.to(torch::kFloat).contiguous()},
      {"32 channels", bf16.narrow(1, 0, 32).contiguous(torch::MemoryFormat::ChannelsLast),
       residual.narrow(1, 0, 32).contiguous(torch::MemoryFormat::ChannelsLast)},
      {"float residual", bf16, residual.to(torch::kFloat)},
      {"bfloat16 residual", bf16.to(torch::kFloat), residual},
  };
  for (const Other& o : others) {
    auto [bn_a, bn_b] = TwoBatchNorms(o.x.size(1));
    ASSERT_FALSE(UsesFusedBatchNorm(*bn_a, o.x, o.residual)) << o.what;
    torch::Tensor got = BatchNormAct(*bn_a, o.x, o.residual, true);
    torch::Tensor want = bn_b->forward(o.x);
    want += o.residual;
    want.relu_();
    EXPECT_TRUE(torch::equal(got, want)) << o.what;
  }
  // Evaluation mode with a gradient wanted: LibTorch's (no fused backward).
  auto [bn, unused] = TwoBatchNorms(64);
  bn->eval();
  EXPECT_FALSE(UsesFusedBatchNorm(*bn, bf16.clone().requires_grad_(), {}));
  // One value per channel: LibTorch's error, not a division by zero.
  const torch::Tensor single = bf16.narrow(0, 0, 1).narrow(2, 0, 1).narrow(3, 0, 1).contiguous(
      torch::MemoryFormat::ChannelsLast);
  auto [train_bn, unused2] = TwoBatchNorms(64);
  EXPECT_FALSE(UsesFusedBatchNorm(*train_bn, single, {}));
  EXPECT_THROW(BatchNormAct(*train_bn, single, {}, true), c10::Error);
}

// Float activations take LibTorch's statistics and backward operators and
// its normalisation's arithmetic in one pass: the results are LibTorch's bit
// for bit, outputs, running statistics and every gradient.
class FloatBatchNormTest : public ::testing::TestWithParam<Case> {};

torch::Tensor FloatActivation(const Case& c, double offset) {
  torch::Tensor scale = torch::rand({1, c.channels, 1, 1}) * 3 + 0.1;
  torch::Tensor shift = torch::randn({1, c.channels, 1, 1}) * offset;
  return (torch::randn({c.batch, c.channels, c.size, c.size}) * scale + shift)
      .contiguous(torch::MemoryFormat::ChannelsLast);
}

TEST_P(FloatBatchNormTest, TrainingBitForBitAsLibTorch) {
  const Case c = GetParam();
  torch::manual_seed(17);
  auto [fused_bn, plain_bn] = TwoBatchNorms(c.channels);
  const torch::Tensor x = FloatActivation(c, 4.0);
  const torch::Tensor x1 = x.clone().requires_grad_();
  const torch::Tensor x2 = x.clone().requires_grad_();
  torch::Tensor r1, r2;
  if (c.residual) {
    r1 = FloatActivation(c, 1.0).requires_grad_();
    r2 = r1.detach().clone().requires_grad_();
  }
  ASSERT_TRUE(UsesFusedBatchNorm(*fused_bn, x1, r1))
      << "the float path does not reproduce this LibTorch build's BatchNorm";
  const torch::Tensor got = BatchNormAct(*fused_bn, x1, r1, c.relu);
  const torch::Tensor want = Unfused(*plain_bn, x2, r2, c.relu);
  EXPECT_TRUE(got.is_contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(torch::equal(got, want)) << "max |diff| " << (got - want).abs().max().item<float>();
  EXPECT_TRUE(torch::equal(fused_bn->running_mean, plain_bn->running_mean));
  EXPECT_TRUE(torch::equal(fused_bn->running_var, plain_bn->running_var));
  EXPECT_EQ(fused_bn->num_batches_tracked.item<int64_t>(), 1);

  // An incoming gradient in each layout a convolution's backward may give.
  for (const auto format : {torch::MemoryFormat::ChannelsLast, torch::MemoryFormat::Contiguous}) {
    for (const torch::Tensor* t : std::array<const torch::Tensor*, 4>{&x1, &x2, &r1, &r2}) {
      if (t->defined() && t->grad().defined()) t->grad().zero_();
    }
    for (auto* bn : {&fused_bn, &plain_bn}) {
      (*bn)->weight.mutable_grad() = torch::Tensor();
      (*bn)->bias.mutable_grad() = torch::Tensor();
    }
    const torch::Tensor dy = torch::randn(got.sizes()).contiguous(format);
    torch::autograd::backward({got}, {dy}, /*retain_graph=*/true);
    torch::autograd::backward({want}, {dy}, /*retain_graph=*/true);
    EXPECT_TRUE(torch::equal(x1.grad(), x2.grad())) << "input gradient";
    EXPECT_TRUE(torch::equal(fused_bn->weight.grad(), plain_bn->weight.grad()))
        << "weight gradient";
    EXPECT_TRUE(torch::equal(fused_bn->bias.grad(), plain_bn->bias.grad())) << "bias gradient";
    if (c.residual) {
      EXPECT_TRUE(torch::equal(r1.grad(), r2.grad())) << "residual gradient";
    }
  }
}

TEST_P(FloatBatchNormTest, EvaluationBitForBitAsLibTorch) {
  const Case c = GetParam();
  torch::manual_seed(18);
  auto [fused_bn, plain_bn] = TwoBatchNorms(c.channels);
  fused_bn->eval();
  plain_bn->eval();
  const torch::Tensor x = FloatActivation(c, 1.0);
  const torch::Tensor residual = c.residual ? FloatActivation(c, 1.0) : torch::Tensor();
  torch::NoGradGuard no_grad;
  ASSERT_TRUE(UsesFusedBatchNorm(*fused_bn, x, residual));
  EXPECT_TRUE(torch::equal(BatchNormAct(*fused_bn, x, residual, c.relu),
                           Unfused(*plain_bn, x, residual, c.relu)));
  EXPECT_TRUE(torch::equal(fused_bn->running_var, plain_bn->running_var));
  EXPECT_EQ(fused_bn->num_batches_tracked.item<int64_t>(), 0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, FloatBatchNormTest,
                         ::testing::Values(Case{8, 64, 16, false, true},   // the stem's
                                           Case{4, 128, 8, true, true},    // a block's end
                                           Case{4, 256, 6, false, false},  // a downsample's
                                           Case{32, 512, 4, true, false},
                                           Case{6, 24, 5, true, true}));  // any channel count

// A whole fp32 ResNet-18 step, BatchNorms fused and as LibTorch's sequence:
// the same logits, loss, gradients and running statistics, bit for bit, and
// the same evaluation logits after it.
TEST(FloatBatchNorm, ResNetStepBitForBitAsLibTorchsSequence) {
  auto make = [] { return ChannelsLastResNet18(19); };
  ResNet fused = make();
  ResNet plain = make();
  torch::manual_seed(20);
  const torch::Tensor images =
      torch::randn({6, 3, 64, 64}).contiguous(torch::MemoryFormat::ChannelsLast);
  const torch::Tensor labels = torch::randint(0, 10, {6});
  // How many of the graph's nodes are the float path's (ResNet-18 has 20
  // BatchNorms, every one of them fused when enabled).
  auto float_nodes = [](const torch::Tensor& loss) {
    std::vector<torch::autograd::Node*> stack{loss.grad_fn().get()};
    std::set<torch::autograd::Node*> seen;
    int count = 0;
    while (!stack.empty()) {
      torch::autograd::Node* node = stack.back();
      stack.pop_back();
      if (node == nullptr || !seen.insert(node).second) continue;
      if (node->name().find("FloatBatchNorm") != std::string::npos) ++count;
      for (const auto& edge : node->next_edges()) stack.push_back(edge.function.get());
    }
    return count;
  };
  auto step = [&](ResNet& model, bool enabled) {
    SetFusedBatchNormEnabled(enabled);
    torch::Tensor logits = model->forward(images);
    torch::Tensor loss = torch::nn::functional::cross_entropy(logits, labels);
    EXPECT_EQ(float_nodes(loss), enabled ? 20 : 0);
    loss.backward();
    model->eval();
    torch::NoGradGuard no_grad;
    torch::Tensor eval_logits = model->forward(images);
    SetFusedBatchNormEnabled(true);
    return std::make_pair(logits, eval_logits);
  };
  const auto got = step(fused, true);
  const auto want = step(plain, false);
  EXPECT_TRUE(torch::equal(got.first, want.first)) << "training logits";
  EXPECT_TRUE(torch::equal(got.second, want.second)) << "evaluation logits";
  const auto plain_params = plain->named_parameters();
  for (const auto& item : fused->named_parameters()) {
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    EXPECT_TRUE(torch::equal(item.value().grad(), plain_params[item.key()].grad())) << item.key();
  }
  const auto plain_buffers = plain->named_buffers();
  for (const auto& item : fused->named_buffers()) {
    EXPECT_TRUE(torch::equal(item.value(), plain_buffers[item.key()])) << item.key();
  }
}

TEST(FusedBatchNorm, NanPropagatesAsInLibTorch) {
  const Case c{2, 64, 4, false, true};
  torch::Tensor x = Activation(c, 0.0);
  x.index_put_({0, 3, 1, 1}, std::numeric_limits<float>::quiet_NaN());
  auto [bn, unused] = TwoBatchNorms(64);
  torch::Tensor y = BatchNormAct(*bn, x, {}, true);
  // The NaN reaches channel 3's statistics, so all of that channel is NaN
  // (the ReLU keeps a NaN); other channels are finite.
  EXPECT_TRUE(y.select(1, 3).isnan().all().item<bool>());
  EXPECT_TRUE(y.select(1, 4).isfinite().all().item<bool>());
}

// The whole network in bf16 autocast, fused and not: the fused function
// inside autograd and autocast, with saved outputs, residual gradients and
// the downsample paths (which add and ReLU each BatchNorm takes is
// model.cc's, checked against torchvision by the golden test). The logits
// agree closely. The gradients of an untrained network on 8 images are
// dominated by bf16 rounding either way (each 30-60 % of its largest element
// away from float32's), so they are held to float32's: the fused path as
// close to it as LibTorch's bf16 sequence, on average over all parameters.
// (A residual gradient left unmasked makes the fused error 3.3 times
// LibTorch's; the ReLU before the add moves the logits by 13 times the bound.)
TEST(FusedBatchNorm, ResNetInBf16AsWithLibTorchsSequence) {
  auto make = [] { return ChannelsLastResNet18(12); };
  ResNet fused = make();
  ResNet plain = make();
  ResNet float32 = make();
  torch::manual_seed(13);
  const torch::Tensor images =
      torch::randn({8, 3, 64, 64}).contiguous(torch::MemoryFormat::ChannelsLast);
  const torch::Tensor labels = torch::randint(0, 10, {8});
  auto step = [&](ResNet& model, bool enabled, bool bf16) {
    SetFusedBatchNormEnabled(enabled);
    ScopedBf16Autocast autocast(bf16);
    torch::Tensor logits = model->forward(images).to(torch::kFloat);
    torch::nn::functional::cross_entropy(logits, labels).backward();
    SetFusedBatchNormEnabled(true);
    return logits;
  };
  const torch::Tensor got = step(fused, true, true);
  const torch::Tensor want = step(plain, false, true);
  step(float32, true, false);
  const double scale = want.abs().max().item<double>();
  EXPECT_LE((got - want).abs().max().item<double>(), 0.05 * scale);

  const auto fused_params = fused->named_parameters();
  const auto plain_params = plain->named_parameters();
  double fused_error = 0;
  double plain_error = 0;
  for (const auto& item : float32->named_parameters()) {
    const torch::Tensor reference = item.value().grad();
    const double largest = reference.abs().max().item<double>();
    ASSERT_TRUE(fused_params[item.key()].grad().defined()) << item.key();
    fused_error +=
        (fused_params[item.key()].grad() - reference).abs().max().item<double>() / largest;
    plain_error +=
        (plain_params[item.key()].grad() - reference).abs().max().item<double>() / largest;
  }
  EXPECT_LE(fused_error, 1.25 * plain_error)
      << "mean relative gradient error: fused " << fused_error / fused_params.size()
      << ", LibTorch's bf16 " << plain_error / plain_params.size();
  const auto fused_buffers = fused->named_buffers();
  const auto plain_buffers = plain->named_buffers();
  for (const char* name : {"bn1.running_var", "layer3.0.downsample.1.running_mean",
                           "layer4.1.bn2.running_var", "layer4.1.bn2.num_batches_tracked"}) {
    EXPECT_TRUE(torch::allclose(fused_buffers[name].to(torch::kDouble),
                                plain_buffers[name].to(torch::kDouble), 1e-2, 1e-3))
        << name;
  }

  // Evaluation (validation) through the fused path too.
  fused->eval();
  plain->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor eval_got = [&] {
    ScopedBf16Autocast autocast(true);
    return fused->forward(images).to(torch::kFloat);
  }();
  SetFusedBatchNormEnabled(false);
  const torch::Tensor eval_want = [&] {
    ScopedBf16Autocast autocast(true);
    return plain->forward(images).to(torch::kFloat);
  }();
  SetFusedBatchNormEnabled(true);
  EXPECT_LE((eval_got - eval_want).abs().max().item<double>(),
            0.05 * eval_want.abs().max().item<double>());
}

}  // namespace
}  // namespace traind::train
