#include "server/train/max_pool.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ostream>

namespace traind::train {
namespace {

struct Case {
  torch::ScalarType type;
  int64_t batch, channels, size;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.type << " " << c.batch << "x" << c.channels << "x" << c.size << "x" << c.size;
}

class MaxPoolTest : public ::testing::TestWithParam<Case> {};

// A ReLU's output on a coarse grid of values: many zeros and many equal
// values in one window, where which maximum takes the gradient shows.
torch::Tensor MapFullOfTies(const Case& c) {
  torch::manual_seed(3);
  return torch::relu(torch::randint(-4, 5, {c.batch, c.channels, c.size, c.size}) * 0.25)
      .to(c.type)
      .contiguous(torch::MemoryFormat::ChannelsLast);
}

// The pooled map is LibTorch's, bit for bit; so is a float32 gradient, and a
// bfloat16 one is within one bfloat16 rounding of float32's on the same
// values (the gradient went to the same element of each window); with two
// thread counts.
TEST_P(MaxPoolTest, AsLibTorchs) {
  const Case c = GetParam();
  const torch::Tensor x = MapFullOfTies(c);
  if (!UsesOneDnnMaxPool(x)) GTEST_SKIP() << "oneDNN has no pooling kernel for this here";
  torch::manual_seed(4);
  const torch::Tensor gy =
      torch::randn({c.batch, c.channels, (c.size - 1) / 2 + 1, (c.size - 1) / 2 + 1})
          .to(c.type)
          .contiguous(torch::MemoryFormat::ChannelsLast);
  auto run = [&](bool ours, const torch::Tensor& input, const torch::Tensor& grad) {
    torch::Tensor xi = input.clone().requires_grad_();
    torch::Tensor y = ours ? MaxPool3x3Stride2(xi) : torch::max_pool2d(xi, 3, 2, 1);
    y.backward(grad);
    return std::make_pair(y.detach(), xi.grad());
  };
  const int threads = torch::get_num_threads();
  for (int t : {1, 2}) {
    SCOPED_TRACE(t);
    torch::set_num_threads(t);
    const auto [want_y, want_gx] = run(false, x, gy);
    const auto [got_y, got_gx] = run(true, x, gy);
    EXPECT_TRUE(got_y.equal(want_y));
    if (c.type == torch::kFloat) {
      EXPECT_TRUE(got_gx.equal(want_gx));
    } else {
      EXPECT_TRUE(got_y.is_contiguous(torch::MemoryFormat::ChannelsLast));
      // float32's gradient on the same values, and per element the sum of
      // the magnitudes it adds up (the scale of its rounding errors).
      const torch::Tensor exact = run(false, x.to(torch::kFloat), gy.to(torch::kFloat)).second;
      const torch::Tensor scale =
          run(false, x.to(torch::kFloat), gy.to(torch::kFloat).abs()).second;
      // Up to four bfloat16 roundings of partial sums, as LibTorch's own
      // bfloat16 backward does (it rounds each sum too).
      const torch::Tensor error = (got_gx.to(torch::kFloat) - exact).abs();
      EXPECT_TRUE(error.le(scale * (4.0 / 256)).all().item<bool>())
          << "max |diff| " << error.max().item<float>();
      const torch::Tensor theirs = (want_gx.to(torch::kFloat) - exact).abs();
      EXPECT_LE(error.max().item<float>(), 2 * theirs.max().item<float>());
      // A gradient that went to another element of its window would be off
      // by its whole size; ties were there to take it.
      EXPECT_GT(x.eq(0).sum().item<int64_t>(), x.numel() / 4);
    }
  }
  torch::set_num_threads(threads);
  torch::NoGradGuard no_grad;
  const torch::Tensor pooled = MaxPool3x3Stride2(x);
  EXPECT_TRUE(pooled.is_contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(pooled.equal(torch::max_pool2d(x, 3, 2, 1)));
}

INSTANTIATE_TEST_SUITE_P(Maps, MaxPoolTest,
                         ::testing::Values(Case{torch::kFloat, 4, 64, 32},
                                           Case{torch::kBFloat16, 4, 64, 32},
                                           Case{torch::kFloat, 3, 64, 17},
                                           Case{torch::kBFloat16, 2, 16, 9}));

// A tensor it does not take (not 4-d) is LibTorch's.
TEST(MaxPool, OtherInputsAreLibTorchs) {
  const torch::Tensor x = torch::randn({3, 8, 8});
  EXPECT_FALSE(UsesOneDnnMaxPool(x));
  EXPECT_TRUE(MaxPool3x3Stride2(x).equal(torch::max_pool2d(x, 3, 2, 1)));
  EXPECT_FALSE(UsesOneDnnMaxPool(torch::randn({1, 8, 8, 8}, torch::kDouble)));
}

}  // namespace
}  // namespace traind::train
