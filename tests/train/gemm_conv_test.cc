#include "server/train/gemm_conv.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <ostream>
#include <set>
#include <sstream>
#include <string>
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

double RelativeError(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got.to(torch::kFloat) - want).norm() / want.norm()).item<double>();
}

// `gemm` no further from `want` (float32 arithmetic) than LibTorch's own
// bfloat16 convolution `conv` is, on this CPU: overall, and in its worst
// element.
void ExpectNoWorseThanConvolution(const torch::Tensor& gemm, const torch::Tensor& conv,
                                  const torch::Tensor& want, const char* what) {
  ASSERT_EQ(gemm.sizes(), want.sizes()) << what;
  const double gemm_rel = RelativeError(gemm, want);
  const double conv_rel = RelativeError(conv, want);
  EXPECT_LE(gemm_rel, 1.25 * conv_rel + 1e-4)
      << what << ": relative error " << gemm_rel << ", the convolution's " << conv_rel;
  const float gemm_max = (gemm.to(torch::kFloat) - want).abs().max().item<float>();
  const float conv_max = (conv.to(torch::kFloat) - want).abs().max().item<float>();
  EXPECT_LE(gemm_max, 2 * conv_max + 1e-3 * want.abs().max().item<float>())
      << what << ": worst element off by " << gemm_max << ", the convolution's by " << conv_max;
}

// The GEMM path whatever the CPU (kAuto takes it only with AVX-512 BF16);
// back to the default afterwards.
class GemmConvOn : public ::testing::Test {
 protected:
  void SetUp() override { SetGemmConvMode(GemmConvMode::kOn); }
  void TearDown() override { SetGemmConvMode(GemmConvMode::kAuto); }
};

class GemmConvTest : public ::testing::TestWithParam<Shape> {
 protected:
  void TearDown() override { SetGemmConvMode(GemmConvMode::kAuto); }
};

struct Results {
  torch::Tensor y, gw, gx;
};

// The forward pass and both gradients of `conv` (float weight) on `x` under
// bfloat16 autocast, through the GEMMs or through LibTorch's convolution.
Results RunBf16(torch::nn::Conv2d& conv, const torch::Tensor& x, const torch::Tensor& gy,
                bool gemm) {
  SetGemmConvMode(gemm ? GemmConvMode::kOn : GemmConvMode::kOff);
  conv->weight.mutable_grad() = torch::Tensor();
  torch::Tensor xg = x.detach().clone().requires_grad_(true);
  torch::Tensor y;
  {
    ScopedBf16Autocast autocast(true);
    EXPECT_EQ(UsesGemmConv(*conv, xg), gemm);
    y = Conv3x3Forward(*conv, xg);
  }
  (y.to(torch::kFloat) * gy).sum().backward();
  return {y.detach(), conv->weight.grad().clone(), xg.grad().clone()};
}

// The forward pass and both gradients against float32 arithmetic on the same
// bfloat16 values: no worse than LibTorch's bfloat16 convolution on any CPU,
// and within one bfloat16 rounding where oneDNN does the arithmetic.
TEST_P(GemmConvTest, MatchesConvolutionWithinBf16Rounding) {
  const Shape s = GetParam();
  torch::manual_seed(7);
  torch::nn::Conv2d conv = MakeConv(s);
  torch::Tensor x =
      torch::randn({4, s.in, s.size, s.size}).contiguous(torch::MemoryFormat::ChannelsLast);
  const int64_t out = (s.size - 1) / s.stride + 1;
  torch::Tensor gy = torch::randn({4, s.out, out, out}).to(torch::kBFloat16).to(torch::kFloat);
  const Results gemm = RunBf16(conv, x, gy, true);
  const Results lib = RunBf16(conv, x, gy, false);
  EXPECT_EQ(gemm.y.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(gemm.y.is_contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_EQ(gemm.gw.scalar_type(), torch::kFloat);  // the float weight's

  // float32 on the bfloat16-rounded operands.
  torch::Tensor x32 = x.to(torch::kBFloat16).to(torch::kFloat).requires_grad_(true);
  torch::Tensor w32 =
      conv->weight.detach().to(torch::kBFloat16).to(torch::kFloat).requires_grad_(true);
  torch::Tensor y32 = torch::conv2d(x32, w32, {}, s.stride, 1);
  (y32 * gy).sum().backward();

  ExpectNoWorseThanConvolution(gemm.y, lib.y, y32.detach(), "output");
  ExpectNoWorseThanConvolution(gemm.gw, lib.gw, w32.grad(), "weight gradient");
  ExpectNoWorseThanConvolution(gemm.gx, lib.gx, x32.grad(), "input gradient");
  if (CpuHasOneDnnBf16Gemms()) {
    ExpectWithinBf16(gemm.y, y32.detach(), "output");
    ExpectWithinBf16(gemm.gw, w32.grad(), "weight gradient");
    ExpectWithinBf16(gemm.gx, x32.grad(), "input gradient");
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemmConvTest,
                         ::testing::Values(Shape{512, 512, 4, 1},  // layer4 at 128 px
                                           Shape{256, 512, 8, 2},  // layer4's first
                                           Shape{24, 40, 3, 2},    // odd map, stride 2
                                           Shape{8, 16, 4, 1}));

// As precise as LibTorch's bfloat16 convolution: against float32 on the
// same operands, the output's and the weight gradient's relative errors are
// those of the convolution. Where oneDNN does the arithmetic, both round
// float sums to bfloat16 once.
TEST_F(GemmConvOn, AsPreciseAsTheConvolution) {
  torch::manual_seed(10);
  torch::nn::Conv2d conv = MakeConv({256, 256, 4, 1});
  torch::Tensor x = torch::randn({8, 256, 4, 4})
                        .relu()
                        .to(torch::kBFloat16)
                        .contiguous(torch::MemoryFormat::ChannelsLast);
  torch::Tensor w = conv->weight.detach().to(torch::kBFloat16);
  torch::Tensor gy = (torch::randn({8, 256, 4, 4}) * 1e-3).to(torch::kBFloat16);
  auto run = [&](bool gemm) {
    SetGemmConvMode(gemm ? GemmConvMode::kOn : GemmConvMode::kOff);
    conv->weight = w.clone().requires_grad_(true);
    torch::Tensor y;
    {
      ScopedBf16Autocast autocast(true);
      EXPECT_EQ(UsesGemmConv(*conv, x), gemm);
      y = Conv3x3Forward(*conv, x);
    }
    y.backward(gy.contiguous(torch::MemoryFormat::ChannelsLast));
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
  if (CpuHasOneDnnBf16Gemms()) {
    EXPECT_LT(rel(gemm_gw, w32.grad()), 1.0 / 256);  // bfloat16 rounding, not more
  }
}

// By default the GEMMs are taken only where LibTorch's bfloat16 GEMMs are
// oneDNN's, which the CPU's flags tell; elsewhere the result is LibTorch's
// convolution bit for bit.
TEST(GemmConv, TakenByDefaultOnlyWithAvx512Bf16) {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  std::set<std::string> flags;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    for (std::string w; words >> w;) flags.insert(w);
    break;
  }
  if (!flags.empty()) {  // x86 Linux
    const bool want = flags.count("avx512bw") && flags.count("avx512vl") &&
                      flags.count("avx512dq") && flags.count("avx512_bf16");
    EXPECT_EQ(CpuHasOneDnnBf16Gemms(), want);
  }
  torch::manual_seed(11);
  torch::nn::Conv2d conv = MakeConv({32, 32, 4, 1});
  torch::Tensor x = torch::randn({2, 32, 4, 4}).contiguous(torch::MemoryFormat::ChannelsLast);
  ScopedBf16Autocast autocast(true);
  EXPECT_EQ(UsesGemmConv(*conv, x), CpuHasOneDnnBf16Gemms());
  if (!CpuHasOneDnnBf16Gemms()) {
    EXPECT_TRUE(torch::equal(Conv3x3Forward(*conv, x), conv->forward(x)));
  }
  SetGemmConvMode(GemmConvMode::kOff);
  EXPECT_FALSE(UsesGemmConv(*conv, x));
  SetGemmConvMode(GemmConvMode::kAuto);
}

// A bfloat16 weight (FusedAdam's copy) gets a bfloat16 gradient, laid out as
// the weight is (channels-last), which the optimizer reads directly.
TEST_F(GemmConvOn, Bf16WeightGetsChannelsLastBf16Gradient) {
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
TEST_F(GemmConvOn, OtherCasesAreTheConvolution) {
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
