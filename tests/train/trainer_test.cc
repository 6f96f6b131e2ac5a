#include "server/train/trainer.h"

#include <filesystem>
#include <random>

#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "tests/test_util.h"

namespace traind::train {
namespace {

namespace fs = std::filesystem;

class RecordingSink : public ProgressSink {
 public:
  void OnDataset(const DatasetSummary& d) override { dataset = d; }
  void OnBatch(const BatchProgress& b) override { losses.push_back(b.loss); }
  void OnEpoch(const EpochResult& e) override { epochs.push_back(e); }
  void OnInfo(const std::string&) override {}
  void OnWarning(const std::string& w) override { warnings.push_back(w); }

  DatasetSummary dataset;
  std::vector<double> losses;
  std::vector<EpochResult> epochs;
  std::vector<std::string> warnings;
};

class TrainerTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing_util::FreshTestDir("trainer_test");
    std::mt19937 rng(7);
    for (int k = 0; k < 3; ++k) {
      fs::create_directories(dir_ / ("c" + std::to_string(k)));
      for (int i = 0; i < 10; ++i) {
        cv::Mat img(36, 44, CV_8UC3, cv::Scalar(30 + 80 * k, 200 - 60 * k, 90));
        cv::circle(img, {static_cast<int>(rng() % 40), static_cast<int>(rng() % 30)}, 6,
                   cv::Scalar(rng() % 255, 40, 200), cv::FILLED);
        cv::imwrite((dir_ / ("c" + std::to_string(k)) / (std::to_string(i) + ".png")).string(),
                    img);
      }
    }
  }

  TrainConfig Config(int loader_threads) const {
    TrainConfig c;
    c.kind = Kind::kScratch;
    c.data.dir = dir_.string();
    c.data.image_size = 32;
    c.data.loader_threads = loader_threads;
    c.epochs = 2;
    c.batch_size = 5;
    c.threads = 1;
    return c;
  }

  fs::path dir_;
};

TEST_F(TrainerTest, SameSeedSameMetricsWhateverTheLoaderThreads) {
  RecordingSink one, four;
  CancelToken cancel;
  ASSERT_TRUE(Train(Config(1), &one, cancel).ok());
  ASSERT_TRUE(Train(Config(4), &four, cancel).ok());
  ASSERT_EQ(one.losses.size(), 2u * 5u);  // 24 training images in batches of 5
  EXPECT_EQ(one.losses, four.losses);
  ASSERT_EQ(one.epochs.size(), 2u);
  for (size_t i = 0; i < one.epochs.size(); ++i) {
    EXPECT_EQ(one.epochs[i].train_loss, four.epochs[i].train_loss);
    EXPECT_EQ(one.epochs[i].validation_loss, four.epochs[i].validation_loss);
    EXPECT_EQ(one.epochs[i].validation_accuracy, four.epochs[i].validation_accuracy);
  }
  EXPECT_EQ(one.dataset.class_names, (std::vector<std::string>{"c0", "c1", "c2"}));
}

TEST_F(TrainerTest, EpochTimeIsBrokenDownByPhase) {
  RecordingSink sink;
  CancelToken cancel;
  ASSERT_TRUE(Train(Config(1), &sink, cancel).ok());
  ASSERT_EQ(sink.epochs.size(), 2u);
  for (const EpochResult& e : sink.epochs) {
    EXPECT_GT(e.step_seconds, 0);
    EXPECT_GE(e.data_seconds, 0);
    EXPECT_GT(e.validation_seconds, 0);
    EXPECT_LE(e.step_seconds + e.data_seconds + e.validation_seconds, e.seconds);
    EXPECT_NEAR(e.images_per_second, 24 / e.step_seconds, 1e-6 * e.images_per_second);
  }
}

TEST_F(TrainerTest, CancelledBeforeStartAndBadWeightsAreReported) {
  RecordingSink sink;
  CancelToken cancel;
  cancel.Cancel();
  EXPECT_EQ(Train(Config(1), &sink, cancel).status().code(), absl::StatusCode::kCancelled);
  TrainConfig ft = Config(1);
  ft.kind = Kind::kFinetune;
  ft.initial_weights = (dir_ / "missing.pth").string();
  CancelToken live;
  EXPECT_EQ(Train(ft, &sink, live).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(CheckWeightsFile((dir_ / "missing.pth").string()).code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace traind::train
