#include "server/train/winograd_conv.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ostream>
#include <thread>
#include <utility>

#include "server/train/gemm_conv.h"

namespace traind::train {
namespace {

struct Shape {
  int64_t batch, channels, size;
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << s.batch << " x " << s.channels << " channels, " << s.size << "x" << s.size;
}

torch::nn::Conv2d MakeConv(int64_t in, int64_t out, int64_t stride) {
  torch::nn::Conv2d conv(
      torch::nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false));
  conv->weight.set_data(conv->weight.data().contiguous(torch::MemoryFormat::ChannelsLast));
  return conv;
}

// The output and both gradients of conv at x, under `mode`, for the loss
// sum(y * upstream).
struct Result {
  torch::Tensor y, gx, gw;
};

Result Convolve(torch::nn::Conv2d& conv, const torch::Tensor& x, const torch::Tensor& upstream,
                WinogradMode mode) {
  SetWinogradMode(mode);
  torch::Tensor input = x.detach().clone().requires_grad_(true);
  conv->weight.mutable_grad() = torch::Tensor();
  torch::Tensor y = Conv3x3Forward(*conv, input);
  (y * upstream).sum().backward();
  SetWinogradMode(WinogradMode::kOff);
  return {y.detach(), input.grad(), conv->weight.grad().clone()};
}

double RelativeError(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got.to(torch::kDouble) - want).norm() / want.norm()).item<double>();
}

class WinogradConvTest : public ::testing::TestWithParam<Shape> {
 protected:
  void SetUp() override {
    if (!WinogradAvailable()) {
      GTEST_SKIP() << "oneDNN has no float32 Winograd kernel for this CPU (it has them for "
                      "AVX-512), or traind was built without libdnnl-dev";
    }
  }
};

// Against the same convolution in float64: Winograd's transforms round
// differently from the direct convolution, not worse than float32 allows.
TEST_P(WinogradConvTest, OutputAndGradientsMatchTheConvolutionInDoublePrecision) {
  const Shape s = GetParam();
  torch::manual_seed(7);
  torch::nn::Conv2d conv = MakeConv(s.channels, s.channels, 1);
  torch::Tensor x = torch::randn({s.batch, s.channels, s.size, s.size})
                        .contiguous(torch::MemoryFormat::ChannelsLast);
  torch::Tensor upstream = torch::randn({s.batch, s.channels, s.size, s.size});
  SetWinogradMode(WinogradMode::kAuto);
  ASSERT_TRUE(UsesWinogradConv(*conv, x));
  SetWinogradMode(WinogradMode::kOff);
  const Result wino = Convolve(conv, x, upstream, WinogradMode::kAuto);
  const Result direct = Convolve(conv, x, upstream, WinogradMode::kOff);

  // float64 truth.
  torch::Tensor xd = x.to(torch::kDouble).requires_grad_(true);
  torch::Tensor wd = conv->weight.detach().to(torch::kDouble).requires_grad_(true);
  torch::Tensor yd = torch::conv2d(xd, wd, {}, 1, 1);
  (yd * upstream.to(torch::kDouble)).sum().backward();

  EXPECT_TRUE(wino.y.is_contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_EQ(wino.y.sizes(), yd.sizes());
  EXPECT_EQ(wino.gw.strides(), conv->weight.strides());
  const std::pair<const char*, std::pair<torch::Tensor, torch::Tensor>> checks[] = {
      {"output", {wino.y, direct.y}},
      {"input gradient", {wino.gx, direct.gx}},
      {"weight gradient", {wino.gw, direct.gw}}};
  const torch::Tensor truths[] = {yd.detach(), xd.grad(), wd.grad()};
  for (int i = 0; i < 3; ++i) {
    const double wino_error = RelativeError(checks[i].second.first, truths[i]);
    const double direct_error = RelativeError(checks[i].second.second, truths[i]);
    EXPECT_LT(wino_error, 1e-5) << checks[i].first << " (LibTorch's: " << direct_error << ")";
    // It took the Winograd path: not the direct convolution's bits.
    EXPECT_FALSE(torch::equal(checks[i].second.first, checks[i].second.second)) << checks[i].first;
  }
}

// ResNet-18's stride-1 3x3 shapes (64 to 512 channels), smaller batches.
INSTANTIATE_TEST_SUITE_P(ResNet18, WinogradConvTest,
                         ::testing::Values(Shape{4, 64, 16}, Shape{4, 128, 8}, Shape{2, 256, 8},
                                           Shape{2, 512, 4}));

TEST_F(WinogradConvTest, SameInputsGiveTheSameBits) {
  torch::manual_seed(3);
  torch::nn::Conv2d conv = MakeConv(64, 64, 1);
  torch::Tensor x = torch::randn({4, 64, 8, 8}).contiguous(torch::MemoryFormat::ChannelsLast);
  torch::Tensor upstream = torch::randn({4, 64, 8, 8});
  const Result a = Convolve(conv, x, upstream, WinogradMode::kAuto);
  const Result b = Convolve(conv, x, upstream, WinogradMode::kAuto);
  EXPECT_TRUE(torch::equal(a.y, b.y));
  EXPECT_TRUE(torch::equal(a.gx, b.gx));
  EXPECT_TRUE(torch::equal(a.gw, b.gw));
}

TEST_F(WinogradConvTest, TakesAnInputInEitherLayoutAndAnswersChannelsLast) {
  torch::manual_seed(5);
  torch::nn::Conv2d conv = MakeConv(64, 64, 1);
  torch::Tensor x = torch::randn({2, 64, 8, 8});  // contiguous NCHW
  torch::Tensor upstream = torch::randn({2, 64, 8, 8});
  const Result got = Convolve(conv, x, upstream, WinogradMode::kAuto);
  const Result want = Convolve(conv, x.contiguous(torch::MemoryFormat::ChannelsLast), upstream,
                               WinogradMode::kAuto);
  EXPECT_TRUE(got.y.is_contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(torch::equal(got.y, want.y));
  EXPECT_TRUE(torch::equal(got.gw, want.gw));
}

// A daemon that meets ever more shapes keeps only the most recent ones, and
// a shape whose primitives went is built again.
TEST_F(WinogradConvTest, TheCacheKeepsTheMostRecentShapes) {
  torch::nn::Conv2d conv = MakeConv(64, 64, 1);
  ScopedWinogradMode on(WinogradMode::kAuto);
  torch::NoGradGuard no_grad;
  auto run = [&](int64_t batch) {
    torch::Tensor x =
        torch::randn({batch, 64, 4, 4}).contiguous(torch::MemoryFormat::ChannelsLast);
    EXPECT_TRUE(UsesWinogradConv(*conv, x));
    const double error = RelativeError(Conv3x3Forward(*conv, x),
                                       torch::conv2d(x.to(torch::kDouble),
                                                     conv->weight.to(torch::kDouble), {}, 1, 1));
    EXPECT_LT(error, 1e-5) << "batch " << batch;
  };
  for (int64_t batch = 1; batch <= static_cast<int64_t>(kWinogradCacheCapacity) + 8; ++batch) {
    run(batch);
  }
  EXPECT_EQ(WinogradCachedShapes(), kWinogradCacheCapacity);
  run(1);  // evicted, and built again
  EXPECT_EQ(WinogradCachedShapes(), kWinogradCacheCapacity);
}

// What stays LibTorch's: strided convolutions, bfloat16, the mode off.
TEST(WinogradConvChoice, OnlyFloat32StrideOneConvolutionsInAutoMode) {
  torch::nn::Conv2d strided = MakeConv(64, 128, 2);
  torch::nn::Conv2d plain = MakeConv(64, 64, 1);
  torch::Tensor x = torch::randn({2, 64, 8, 8}).contiguous(torch::MemoryFormat::ChannelsLast);
  EXPECT_EQ(GetWinogradMode(), WinogradMode::kOff);  // the default
  EXPECT_FALSE(UsesWinogradConv(*plain, x));
  SetWinogradMode(WinogradMode::kAuto);
  EXPECT_FALSE(UsesWinogradConv(*strided, x));
  EXPECT_FALSE(UsesWinogradConv(*plain, x.to(torch::kBFloat16)));
  EXPECT_EQ(UsesWinogradConv(*plain, x), WinogradAvailable());
  torch::Tensor tiny = torch::randn({2, 64, 2, 2}).contiguous(torch::MemoryFormat::ChannelsLast);
  EXPECT_FALSE(UsesWinogradConv(*plain, tiny));  // smaller than a Winograd tile
  SetWinogradMode(WinogradMode::kOff);
  EXPECT_FALSE(UsesWinogradConv(*plain, x));
  // Off, the convolution is LibTorch's, to the bit.
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(Conv3x3Forward(*plain, x), plain->forward(x)));
}

// A run's setting holds on its own thread only (two jobs on one daemon may
// differ), nests, and ends with its scope.
TEST(WinogradConvChoice, AScopedModeHoldsOnItsThreadOnly) {
  torch::nn::Conv2d plain = MakeConv(64, 64, 1);
  torch::Tensor x = torch::randn({2, 64, 8, 8}).contiguous(torch::MemoryFormat::ChannelsLast);
  SetWinogradMode(WinogradMode::kOff);
  {
    ScopedWinogradMode on(WinogradMode::kAuto);
    EXPECT_EQ(GetWinogradMode(), WinogradMode::kAuto);
    EXPECT_EQ(UsesWinogradConv(*plain, x), WinogradAvailable());
    WinogradMode elsewhere = WinogradMode::kAuto;
    std::thread([&] { elsewhere = GetWinogradMode(); }).join();
    EXPECT_EQ(elsewhere, WinogradMode::kOff);  // the process-wide mode
    {
      ScopedWinogradMode off(WinogradMode::kOff);
      EXPECT_FALSE(UsesWinogradConv(*plain, x));
      SetWinogradMode(WinogradMode::kAuto);  // the scope still wins
      EXPECT_FALSE(UsesWinogradConv(*plain, x));
      SetWinogradMode(WinogradMode::kOff);
    }
    EXPECT_EQ(GetWinogradMode(), WinogradMode::kAuto);
  }
  EXPECT_EQ(GetWinogradMode(), WinogradMode::kOff);
  EXPECT_FALSE(UsesWinogradConv(*plain, x));
}

}  // namespace
}  // namespace traind::train
