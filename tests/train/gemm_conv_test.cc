#include "server/train/gemm_conv.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ostream>
#include <utility>

#include "server/train/step.h"

namespace traind::train {
namespace {

struct Shape {
  int64_t in, out, size, stride;
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << s.in << "->" << s.out << " channels, " << s.size << "x" << s.size << ", stride "
      << s.stride;
}

torch::nn::Conv2d MakeConv(const Shape& s) {
  torch::nn::Conv2d conv(
      torch::nn::Conv2dOptions(s.in, s.out, 3).stride(s.stride).padding(1).bias(false));
  conv->weight.set_data(conv->weight.data().contiguous(torch::MemoryFormat::ChannelsLast));
  return conv;
}

// Every element of `got` within bfloat16 rounding of `want` (float sums of
// the same bfloat16 operands): 2^-8 of itself, plus a sliver of the largest
// for the different order of the sums.
void ExpectWithinBf16(const torch::Tensor& got, const torch::Tensor& want, const char* what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  torch::Tensor g = got.to(torch::kFloat);
  torch::Tensor bound = want.abs() * (1.0 / 256) + want.abs().max() * 1e-3;
  torch::Tensor excess = ((g - want).abs() - bound).max();
  EXPECT_LE(excess.item<float>(), 0.0f)
      << what << ": max |diff| " << (g - want).abs().max().item<float>() << ", max |want| "
      << want.abs().max().item<float>();
}

class GemmConvTest : public ::testing::TestWithParam<Shape> {};

// The forward pass and both gradients against float32 arithmetic on the same
// bfloat16 values.
TEST_P(GemmConvTest, MatchesConvolutionWithinBf16Rounding) {
  const Shape s = GetParam();
  torch::manual_seed(7);
  torch::nn::Conv2d conv = MakeConv(s);
  torch::Tensor x = torch::randn({4, s.in, s.size, s.size})
                        .contiguous(torch::MemoryFormat::ChannelsLast)
                        .requires_grad_(true);
  torch::Tensor y;
  {
    ScopedBf16Autocast autocast(true);
    ASSERT_TRUE(UsesGemmConv(*conv, x));
    y = Conv3x3Forward(*conv, x);
  }
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(y.is_contiguous(torch::MemoryFormat::ChannelsLast));
  torch::Tensor gy = torch::randn(y.sizes()).to(torch::kBFloat16).to(torch::kFloat);
  (y.to(torch::kFloat) * gy).sum().backward();

  // float32 on the bfloat16-rounded operands.
  torch::Tensor x32 = x.detach().to(torch::kBFloat16).to(torch::kFloat).requires_grad_(true);
  torch::Tensor w32 =
      conv->weight.detach().to(torch::kBFloat16).to(torch::kFloat).requires_grad_(true);
  torch::Tensor y32 = torch::conv2d(x32, w32, {}, s.stride, 1);
  (y32 * gy).sum().backward();

  ExpectWithinBf16(y, y32.detach(), "output");
  ASSERT_TRUE(conv->weight.grad().defined());
  EXPECT_EQ(conv->weight.grad().scalar_type(), torch::kFloat);  // the float weight's
  ExpectWithinBf16(conv->weight.grad(), w32.grad(), "weight gradient");
  ExpectWithinBf16(x.grad(), x32.grad(), "input gradient");
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemmConvTest,
                         ::testing::Values(Shape{512, 512, 4, 1},  // layer4 at 128 px
                                           Shape{256, 512, 8, 2},  // layer4's first
                                           Shape{24, 40, 3, 2},    // odd map, stride 2
                                           Shape{8, 16, 4, 1}));

// As precise as oneDNN's bfloat16 convolution: against float32 on the same
// operands, the output's and the weight gradient's relative errors are those
// of the convolution (both round float sums to bfloat16 once).
TEST(GemmConv, AsPreciseAsTheConvolution) {
  torch::manual_seed(10);
  torch::nn::Conv2d conv = MakeConv({256, 256, 4, 1});
  torch::Tensor x = torch::randn({8, 256, 4, 4})
                        .relu()
                        .to(torch::kBFloat16)
                        .contiguous(torch::MemoryFormat::ChannelsLast);
  torch::Tensor w = conv->weight.detach().to(torch::kBFloat16);
  torch::Tensor gy = (torch::randn({8, 256, 4, 4}) * 1e-3).to(torch::kBFloat16);
  auto run = [&](bool gemm) {
    SetGemmConvEnabled(gemm);
    conv->weight = w.clone().requires_grad_(true);
    torch::Tensor y;
    {
      ScopedBf16Autocast autocast(true);
      EXPECT_EQ(UsesGemmConv(*conv, x), gemm);
      y = Conv3x3Forward(*conv, x);
    }
    y.backward(gy.contiguous(torch::MemoryFormat::ChannelsLast));
    SetGemmConvEnabled(true);
    return std::make_pair(y.to(torch::kFloat), conv->weight.grad().to(torch::kFloat));
  };
  const auto [conv_y, conv_gw] = run(false);
  const auto [gemm_y, gemm_gw] = run(true);
  torch::Tensor w32 = w.to(torch::kFloat).requires_grad_(true);
  torch::Tensor y32 = torch::conv2d(x.to(torch::kFloat), w32, {}, 1, 1);
  y32.backward(gy.to(torch::kFloat));
  auto rel = [](const torch::Tensor& a, const torch::Tensor& b) {
    return ((a - b).norm() / b.norm()).item<double>();
  };
  EXPECT_LE(rel(gemm_y, y32), 1.1 * rel(conv_y, y32));
  EXPECT_LE(rel(gemm_gw, w32.grad()), 1.1 * rel(conv_gw, w32.grad()));
  EXPECT_LT(rel(gemm_gw, w32.grad()), 1.0 / 256);  // bfloat16 rounding, not more
}

// A bfloat16 weight (FusedAdam's copy) gets a bfloat16 gradient, laid out as
// the weight is (channels-last), which the optimizer reads directly.
TEST(GemmConv, Bf16WeightGetsChannelsLastBf16Gradient) {
  torch::manual_seed(8);
  torch::nn::Conv2d conv = MakeConv({32, 64, 4, 1});
  conv->weight = conv->weight.detach().to(torch::kBFloat16).requires_grad_(true);
  torch::Tensor x = torch::randn({2, 32, 4, 4}).contiguous(torch::MemoryFormat::ChannelsLast);
  ScopedBf16Autocast autocast(true);
  Conv3x3Forward(*conv, x).to(torch::kFloat).sum().backward();
  const torch::Tensor& g = conv->weight.grad();
  ASSERT_TRUE(g.defined());
  EXPECT_EQ(g.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(g.is_contiguous(torch::MemoryFormat::ChannelsLast));
}

// Everything else is the convolution itself, bit for bit.
TEST(GemmConv, OtherCasesAreTheConvolution) {
  torch::manual_seed(9);
  torch::nn::Conv2d conv = MakeConv({16, 16, 8, 1});
  torch::Tensor small = torch::randn({2, 16, 4, 4}).contiguous(torch::MemoryFormat::ChannelsLast);
  torch::Tensor large = torch::randn({2, 16, 8, 8}).contiguous(torch::MemoryFormat::ChannelsLast);
  // float32 without autocast: the reference arithmetic.
  EXPECT_FALSE(UsesGemmConv(*conv, small));
  EXPECT_TRUE(torch::equal(Conv3x3Forward(*conv, small), conv->forward(small)));
  ScopedBf16Autocast autocast(true);
  EXPECT_TRUE(UsesGemmConv(*conv, small));
  EXPECT_FALSE(UsesGemmConv(*conv, large));  // 8x8 maps: oneDNN is as fast
  EXPECT_TRUE(torch::equal(Conv3x3Forward(*conv, large), conv->forward(large)));
  torch::nn::Conv2d pointwise(torch::nn::Conv2dOptions(16, 16, 1).bias(false));
  EXPECT_FALSE(UsesGemmConv(*pointwise, small));
  torch::nn::Conv2d biased(torch::nn::Conv2dOptions(16, 16, 3).padding(1));
  EXPECT_FALSE(UsesGemmConv(*biased, small));
}

}  // namespace
}  // namespace traind::train
