#include "server/train/data.h"

#include <chrono>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>

#include "common/file_util.h"
#include "tests/test_util.h"

namespace traind::train {
namespace {

namespace fs = std::filesystem;

class DataTest : public testing::Test {
 protected:
  void SetUp() override {
    root_ = testing_util::FreshTestDir("data_test");
    cv::Mat img(30, 50, CV_8UC3, cv::Scalar(10, 100, 200));
    for (const char* cls : {"b_cls", "a_cls", "BACKGROUND_Google"}) {
      fs::create_directories(root_ / cls);
      for (int i = 0; i < 5; ++i) {
        img.at<cv::Vec3b>(0, 0)[0] = static_cast<uint8_t>(i);
        cv::imwrite((root_ / cls / ("img" + std::to_string(i) + (i == 3 ? ".JPG" : ".png")))
                        .string(),
                    img);
      }
      std::ofstream(root_ / cls / "notes.txt") << "not an image";
    }
  }
  fs::path root_;
};

TEST_F(DataTest, ListsLikeImageFolder) {
  auto index = ListImageFolder(root_.string(), {"BACKGROUND_Google"});
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->classes, (std::vector<std::string>{"a_cls", "b_cls"}));
  ASSERT_EQ(index->train.size(), 10u);  // .JPG counts, .txt does not
  EXPECT_EQ(index->train[0].label, 0);
  EXPECT_EQ(fs::path(index->train[0].path).filename(), "img0.png");
  EXPECT_EQ(fs::path(index->train[3].path).filename(), "img3.JPG");
  EXPECT_EQ(index->train[5].label, 1);
}

TEST_F(DataTest, SplitIsSeededAndSized) {
  DataConfig config;
  config.dir = root_.string();
  auto a = ScanDataset(config);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->train.size(), 8u);  // floor(10 * 0.8)
  EXPECT_EQ(a->validation.size(), 2u);
  auto b = ScanDataset(config);
  EXPECT_EQ(a->validation[0].path, b->validation[0].path);
  config.seed = 1;
  bool differs = false;
  for (int s = 1; s < 6 && !differs; ++s) {
    config.seed = s;
    auto c = ScanDataset(config);
    differs = c->validation[0].path != a->validation[0].path ||
              c->validation[1].path != a->validation[1].path;
  }
  EXPECT_TRUE(differs);
  config.train_fraction = 0.05;
  EXPECT_EQ(ScanDataset(config).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(DataTest, PresplitFoldersAreUsed) {
  const fs::path pre = root_ / "pre";
  fs::create_directories(pre);
  fs::rename(root_ / "a_cls", pre / "a_cls");
  fs::rename(root_ / "b_cls", pre / "b_cls");
  fs::create_directories(pre / "train");
  fs::create_directories(pre / "val");
  for (const char* cls : {"a_cls", "b_cls"}) {
    fs::copy(pre / cls, pre / "train" / cls);
    fs::copy(pre / cls, pre / "val" / cls);
  }
  DataConfig config;
  config.dir = pre.string();
  auto index = ScanDataset(config);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->train.size(), 10u);
  EXPECT_EQ(index->validation.size(), 10u);
}

TEST_F(DataTest, CorruptImagesAreSkippedWithAWarning) {
  std::ofstream(root_ / "a_cls" / "broken.jpg") << "definitely not a jpeg";
  auto index = ListImageFolder(root_.string(), {"BACKGROUND_Google"});
  ASSERT_TRUE(index.ok());
  std::vector<std::string> warnings;
  DecodedSet set = DecodeImages(index->train, 16, 2, &warnings);
  EXPECT_EQ(set.images.size(), 10u);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("broken.jpg"), std::string::npos);
  EXPECT_EQ(set.images[0].rows, 16);
  EXPECT_EQ(set.images[0].type(), CV_8UC3);
  // OpenCV decodes BGR; the cache holds RGB.
  EXPECT_EQ(set.images[0].at<cv::Vec3b>(8, 8)[0], 200);
}

TEST_F(DataTest, DecodedCacheServesRepeatsAndNoticesChangedFiles) {
  auto index = ListImageFolder(root_.string(), {"BACKGROUND_Google"});
  ASSERT_TRUE(index.ok());
  DecodedImageCache cache(size_t{1} << 20);
  DecodedSet first = DecodeImages(index->train, 16, 2, nullptr, &cache);
  EXPECT_EQ(cache.hits(), 0);
  EXPECT_EQ(cache.bytes(), 10u * 16 * 16 * 3);
  DecodedSet again = DecodeImages(index->train, 16, 2, nullptr, &cache);
  EXPECT_EQ(cache.hits(), 10);
  EXPECT_EQ(cv::norm(first.images[0], again.images[0], cv::NORM_INF), 0);
  // Another size is another entry; a rewritten file is decoded again.
  DecodeImages(index->train, 20, 1, nullptr, &cache);
  EXPECT_EQ(cache.hits(), 10);
  cv::Mat red(30, 50, CV_8UC3, cv::Scalar(0, 0, 255));
  cv::imwrite(index->train[0].path, red);
  fs::last_write_time(index->train[0].path,
                      fs::last_write_time(index->train[0].path) + std::chrono::seconds(5));
  DecodedSet changed = DecodeImages(index->train, 16, 1, nullptr, &cache);
  EXPECT_EQ(cache.hits(), 19);
  EXPECT_EQ(changed.images[0].at<cv::Vec3b>(5, 5), cv::Vec3b(255, 0, 0));  // RGB
  // Bounded: a tiny cache keeps only the newest entries.
  DecodedImageCache small(2 * 16 * 16 * 3);
  DecodeImages(index->train, 16, 1, nullptr, &small);
  EXPECT_LE(small.bytes(), 2u * 16 * 16 * 3);
}

// An OpenCV error while preparing a batch (here: an empty image, which
// OpenCV's rotation refuses with an exception) stops the loader with the reason instead of
// escaping its thread and ending the process.
TEST_F(DataTest, ALoaderErrorIsAStatusNotACrash) {
  DecodedSet set;
  for (int i = 0; i < 8; ++i) {
    set.images.push_back(i == 5 ? cv::Mat() : cv::Mat(16, 16, CV_8UC3, cv::Scalar(90, 60, 30)));
    set.labels.push_back(i % 2);
  }
  std::vector<int64_t> order = {0, 1, 2, 3, 4, 5, 6, 7};
  for (int prefetch : {0, 2}) {
    BatchLoader::Options o;
    o.batch_size = 2;
    o.augment = true;
    o.threads = 2;
    o.prefetch = prefetch;
    BatchLoader loader(set, order, o);
    Batch b;
    int got = 0;
    while (loader.Next(&b)) ++got;
    // Batches 0 and 1 at most (batch 2 holds image 5); with background
    // workers the error may stop them before batch 1 is handed out.
    if (prefetch == 0) {
      EXPECT_EQ(got, 2);
    } else {
      EXPECT_LE(got, 2);
    }
    EXPECT_EQ(loader.status().code(), absl::StatusCode::kInternal) << prefetch;
    EXPECT_NE(loader.status().message().find("loading batch 2"), std::string::npos)
        << loader.status();
  }
}

TEST_F(DataTest, BatchesDoNotDependOnLoaderThreads) {
  auto index = ListImageFolder(root_.string(), {});
  ASSERT_TRUE(index.ok());
  DecodedSet set = DecodeImages(index->train, 24, 1, nullptr);
  std::vector<int64_t> order(set.images.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(order.size() - 1 - i);
  auto run = [&](int threads, int prefetch) {
    BatchLoader::Options o;
    o.batch_size = 4;
    o.augment = true;
    o.seed = 5;
    o.epoch = 2;
    o.threads = threads;
    o.prefetch = prefetch;
    BatchLoader loader(set, order, o);
    std::vector<Batch> out;
    Batch b;
    while (loader.Next(&b)) out.push_back(b);
    return out;
  };
  auto one = run(1, 0), three = run(3, 2), bg = run(1, 4);
  ASSERT_EQ(one.size(), 4u);  // 15 images in batches of 4
  ASSERT_EQ(three.size(), one.size());
  ASSERT_EQ(bg.size(), one.size());
  for (size_t i = 0; i < one.size(); ++i) {
    EXPECT_TRUE(torch::equal(one[i].images, bg[i].images));
  }
  EXPECT_EQ(one.back().images.size(0), 3);
  for (size_t i = 0; i < one.size(); ++i) {
    EXPECT_TRUE(torch::equal(one[i].images, three[i].images));
    EXPECT_TRUE(torch::equal(one[i].labels, three[i].labels));
  }
  EXPECT_EQ(one[0].images.sizes(), (std::vector<int64_t>{4, 3, 24, 24}));
  EXPECT_TRUE(one[0].images.is_contiguous(torch::MemoryFormat::ChannelsLast));
}

TEST(AugmentTest, NoAugmentationIsIdentityAndFlipFlips) {
  cv::Mat img(8, 8, CV_8UC3, cv::Scalar(0, 0, 0));
  img.at<cv::Vec3b>(2, 1) = cv::Vec3b(255, 255, 255);
  AugmentConfig none{0, 0, 0, 0, 0, 0};
  std::mt19937_64 rng(1);
  cv::Mat same = Augment(img, none, rng);
  EXPECT_EQ(cv::norm(same, img, cv::NORM_INF), 0);
  AugmentConfig flip = none;
  flip.hflip_probability = 1;
  cv::Mat flipped = Augment(img, flip, rng);
  EXPECT_EQ(flipped.at<cv::Vec3b>(2, 6), cv::Vec3b(255, 255, 255));
  EXPECT_EQ(flipped.at<cv::Vec3b>(2, 1), cv::Vec3b(0, 0, 0));
}

TEST(AugmentTest, NormalizeUsesImageNetStatistics) {
  cv::Mat img(1, 1, CV_8UC3, cv::Scalar(255, 0, 128));
  float out[3];
  NormalizeInto(img, out);
  EXPECT_NEAR(out[0], (1.0 - 0.485) / 0.229, 1e-5);
  EXPECT_NEAR(out[1], (0.0 - 0.456) / 0.224, 1e-5);
  EXPECT_NEAR(out[2], (128 / 255.0 - 0.406) / 0.225, 1e-5);
}

}  // namespace
}  // namespace traind::train

namespace traind::train {
namespace {

// Found by tests/fuzz/image_fuzzer: bytes with "DICM" where DICOM keeps it
// made OpenCV hand them to GDCM, which aborted the process on an assertion.
// Only the formats ImageFolder reads reach OpenCV now.
TEST(DecodeTest, FuzzerFoundInputsAreErrorsNotCrashes) {
  const auto corpus = std::filesystem::path(__FILE__).parent_path().parent_path() / "fuzz" /
                      "corpus" / "image";
  // The second one starts like a WebP file; WebP's decoder declined it and
  // OpenCV went on down its list to GDCM.
  for (const char* name : {"regression-gdcm-assert", "regression-gdcm-webp-prefix"}) {
    auto bytes = ReadFile((corpus / name).string());
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    auto img = DecodeImageBytes(*bytes, 32);
    EXPECT_EQ(img.status().code(), absl::StatusCode::kInvalidArgument) << name;
  }
  std::string dicom(132, '\0');
  dicom.replace(128, 4, "DICM");
  EXPECT_FALSE(DecodeImageBytes(dicom, 32).ok());
  auto png = ReadFile((corpus / "tiny.png").string());
  ASSERT_TRUE(png.ok());
  auto decoded = DecodeImageBytes(*png, 32);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->rows, 32);
}

}  // namespace
}  // namespace traind::train
