#include "server/train/weights.h"

#include <filesystem>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "server/train/model.h"

namespace traind::train {
namespace {

NamedTensors Sample() {
  torch::manual_seed(3);
  return {{"a.weight", torch::randn({3, 4})},
          {"a.bias", torch::randn({4})},
          {"bn.num_batches_tracked", torch::tensor(int64_t{17})}};
}

void ExpectSame(const NamedTensors& a, const NamedTensors& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_EQ(a[i].second.scalar_type(), b[i].second.scalar_type());
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  }
}

TEST(WeightsTest, TorchArchiveRoundTrip) {
  auto bytes = SerializeTorchArchive(Sample());
  ASSERT_TRUE(bytes.ok());
  auto back = ParseTorchArchive(*bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSame(Sample(), *back);
}

TEST(WeightsTest, TorchArchiveHoldsViewsAndEveryStateDictDtype) {
  torch::Tensor base = torch::arange(40, torch::kFloat).reshape({5, 8});
  const NamedTensors in = {
      {"slice", base.slice(/*dim=*/1, 2, 6)},  // a view: strided, offset 2
      {"transposed", base.t()},
      {"scalar", torch::tensor(int64_t{1} << 40)},
      {"empty", torch::zeros({0, 3})},
      {"half", torch::randn({4}).to(torch::kHalf)},
      {"bf16", torch::randn({4}).to(torch::kBFloat16)},
      {"double", torch::randn({2, 2}, torch::kDouble)},
      {"flags", torch::tensor({true, false})}};
  auto bytes = SerializeTorchArchive(in);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  // torch.save's form, not TorchScript's typed dict.
  EXPECT_EQ(bytes->find("restore_type_tag"), std::string::npos);
  EXPECT_NE(bytes->find("collections\nOrderedDict"), std::string::npos);
  auto back = ParseTorchArchive(*bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSame(in, *back);
  EXPECT_TRUE((*back)[0].second.is_contiguous());
}

TEST(WeightsTest, ReadsTheTypedDictsTraindWroteBefore) {
  // Weights from traind before it wrote torch.save's form: LibTorch's pickler.
  c10::Dict<std::string, torch::Tensor> dict;
  for (const auto& [name, t] : Sample()) dict.insert(name, t);
  const std::vector<char> old = torch::pickle_save(dict);
  auto back = ParseTorchArchive(std::string(old.begin(), old.end()));
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSame(Sample(), *back);
}

TEST(WeightsTest, SafetensorsRoundTrip) {
  auto bytes = SerializeSafetensors(Sample());
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(bytes->size() % 8, (3 * 4 * 4 + 4 * 4 + 8) % 8);
  auto back = ParseSafetensors(*bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSame(Sample(), *back);
}

TEST(WeightsTest, TruncatedAndForeignFilesGetClearErrors) {
  auto pth = *SerializeTorchArchive(Sample());
  for (size_t cut : {size_t{10}, pth.size() / 2, pth.size() - 30}) {
    auto r = ParseTorchArchive(pth.substr(0, cut));
    EXPECT_FALSE(r.ok()) << cut;
  }
  auto st = *SerializeSafetensors(Sample());
  EXPECT_FALSE(ParseSafetensors(st.substr(0, st.size() - 4)).ok());
  EXPECT_FALSE(ParseSafetensors(st.substr(0, 5)).ok());
  // A legacy (non-zip) torch.save file starts with a pickle PROTO opcode.
  auto legacy = ParseTorchArchive(std::string("\x80\x02\x8a\x0a", 4) + std::string(40, 'x'));
  ASSERT_FALSE(legacy.ok());
  EXPECT_NE(legacy.status().message().find("legacy"), std::string::npos);
  EXPECT_FALSE(ParseTorchArchive("plain text, not a checkpoint").ok());
}

TEST(WeightsTest, CopyIntoModuleNamesMissingExtraAndMisshapenKeys) {
  ResNet model = ResNet18(10);
  NamedTensors sd;
  for (auto& [name, t] : StateDict(*model)) sd.emplace_back(name, t.clone());
  ResNet other = ResNet18(10);
  ASSERT_TRUE(CopyIntoModule(sd, *other).ok());
  EXPECT_TRUE(torch::equal(StateDict(*other)[0].second, sd[0].second));

  NamedTensors missing(sd.begin() + 1, sd.end());
  auto st = CopyIntoModule(missing, *other);
  EXPECT_NE(st.message().find("missing keys [conv1.weight]"), std::string::npos) << st;
  NamedTensors extra = sd;
  extra.emplace_back("bogus", torch::zeros({1}));
  EXPECT_NE(CopyIntoModule(extra, *other).message().find("unexpected keys [bogus]"),
            std::string::npos);
  NamedTensors wrong = sd;
  wrong.back().second = torch::zeros({3});
  EXPECT_NE(CopyIntoModule(wrong, *other).message().find("wrong shapes [fc.bias"),
            std::string::npos);
  // A classifier of another shape can be skipped (fine-tuning replaces it).
  ResNet big = ResNet18(1000);
  NamedTensors imagenet;
  for (auto& [name, t] : StateDict(*big)) imagenet.emplace_back(name, t);
  EXPECT_TRUE(CopyIntoModule(imagenet, *other, {"fc.weight", "fc.bias"}).ok());
}

TEST(WeightsTest, LoadStateDictTellsFormatByContent) {
  const auto dir = std::filesystem::path(testing::TempDir()) / "weights_test";
  std::filesystem::create_directories(dir);
  const std::string a = (dir / "a.bin").string(), b = (dir / "b.bin").string();
  ASSERT_TRUE(WriteFileAtomically(a, *SerializeTorchArchive(Sample())).ok());
  ASSERT_TRUE(WriteFileAtomically(b, *SerializeSafetensors(Sample())).ok());
  ExpectSame(Sample(), *LoadStateDict(a));
  ExpectSame(Sample(), *LoadStateDict(b));
  auto missing = LoadStateDict((dir / "none").string());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace traind::train
