#include "server/train/trainer.h"

#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <tuple>

#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "common/file_util.h"
#include "common/sha256.h"
#include "server/train/gemm_conv.h"
#include "server/train/model.h"
#include "server/train/weights.h"
#include "tests/test_util.h"

namespace traind::train {
namespace {

namespace fs = std::filesystem;

class RecordingSink : public ProgressSink {
 public:
  void OnDataset(const DatasetSummary& d) override { dataset = d; }
  void OnBatch(const BatchProgress& b) override {
    losses.push_back(b.loss);
    batches.push_back(b);
    if (interrupt && b.epoch == interrupt_epoch && b.batch == interrupt_batch) {
      interrupt->Interrupt();
    }
  }
  absl::Status OnCheckpoint(const CheckpointInfo& c) override {
    checkpoints.push_back(c);
    return absl::OkStatus();
  }
  void OnEpoch(const EpochResult& e) override {
    epochs.push_back(e);
    if (interrupt && e.epoch == interrupt_after_epoch) interrupt->Interrupt();
  }
  void OnInfo(const std::string&) override {}
  void OnWarning(const std::string& w) override { warnings.push_back(w); }

  DatasetSummary dataset;
  std::vector<double> losses;
  std::vector<BatchProgress> batches;
  std::vector<EpochResult> epochs;
  std::vector<std::string> warnings;
  std::vector<CheckpointInfo> checkpoints;
  // Interrupts (as a shutdown does) after this batch.
  CancelToken* interrupt = nullptr;
  int interrupt_epoch = 0;
  int interrupt_batch = 0;
  // Or after this epoch ended, before the next one's first batch.
  int interrupt_after_epoch = 0;
};

std::string Slurp(const fs::path& p) {
  auto bytes = ReadFile(p.string());
  return bytes.ok() ? *bytes : std::string();
}

class TrainerTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing_util::FreshTestDir("trainer_test");
    out_ = testing_util::FreshTestDir("trainer_test_out");  // not inside the dataset
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
  fs::path out_;
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

// bf16 where the CPU only emulates it trains, and says why it is slow; on a
// CPU with AVX-512 BF16 nothing is said.
TEST_F(TrainerTest, Bf16IsWarnedAboutWhereTheCpuEmulatesIt) {
  RecordingSink sink;
  CancelToken cancel;
  TrainConfig c = Config(1);
  c.epochs = 1;
  c.bf16 = true;
  ASSERT_TRUE(Train(c, &sink, cancel).ok());
  int said = 0;
  for (const auto& w : sink.warnings) {
    said += w.find("precision bf16: this CPU has no AVX-512 BF16") != std::string::npos;
  }
  EXPECT_EQ(said, CpuHasOneDnnBf16Gemms() ? 0 : 1);
}

// As PyTorch: a last batch of one image is trained on unless BatchNorm would
// see a single value per channel (a 1x1 deepest feature map, <= 32 px), and
// `batches` counts the batches that produce events.
TEST_F(TrainerTest, ALastBatchOfOneImageIsSkippedOnlyWherePyTorchRaises) {
  for (int size : {32, 48}) {
    RecordingSink sink;
    CancelToken cancel;
    TrainConfig c = Config(1);
    c.epochs = 1;
    c.batch_size = 23;  // 24 training images: 23 + 1
    c.data.image_size = size;
    ASSERT_TRUE(Train(c, &sink, cancel).ok()) << size;
    const size_t expected = size == 32 ? 1 : 2;
    ASSERT_EQ(sink.batches.size(), expected) << size;
    for (const auto& b : sink.batches) EXPECT_EQ(b.batches, static_cast<int>(expected)) << size;
    EXPECT_EQ(sink.warnings.size(), size == 32 ? 1u : 0u) << size;
    if (size == 32) {
      EXPECT_NE(sink.warnings[0].find("PyTorch raises"), std::string::npos);
    }
  }
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
    // The steps' own time, phase by phase: each measured, together inside
    // the steps' time, and no allreduce outside a data-parallel job.
    EXPECT_GT(e.phases.forward_seconds, 0);
    EXPECT_GT(e.phases.backward_seconds, 0);
    EXPECT_GT(e.phases.update_seconds, 0);
    EXPECT_EQ(e.phases.allreduce_seconds, 0);
    EXPECT_LE(e.phases.forward_seconds + e.phases.backward_seconds + e.phases.update_seconds,
              e.step_seconds);
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

namespace traind::train {
namespace {

// A run interrupted mid-epoch and continued from its checkpoint, or continued
// from an epoch-end checkpoint, ends with exactly the weights of a run that
// was never interrupted: same batches, same losses, same bytes.
// In fp32, and in bf16, whose steps read the optimizer's bfloat16 weight
// copies: a restore must reach them too.
// (bf16, fine-tune)
class ResumeTest : public TrainerTest,
                   public testing::WithParamInterface<std::tuple<bool, bool>> {};

TEST_P(ResumeTest, ResumedRunsEndBitIdenticalToAnUninterruptedRun) {
  TrainConfig base = Config(1);
  base.epochs = 3;
  base.bf16 = std::get<0>(GetParam());
  if (std::get<1>(GetParam())) {
    // A fine-tune job as the daemon runs one on 2 cores: its frozen trunk
    // one batch ahead (step.h), which an interrupt drops before its
    // checkpoint. The starting weights: any ResNet-18 state_dict.
    base.kind = Kind::kFinetune;
    base.threads = 2;
    base.winograd = true;
    torch::manual_seed(3);
    ResNet start = ResNet18(1000);
    NamedTensors t;
    for (auto& [name, v] : StateDict(*start)) t.emplace_back(name, v.detach().contiguous());
    auto bytes = SerializeSafetensors(t);
    ASSERT_TRUE(bytes.ok());
    base.initial_weights = (out_ / "start.safetensors").string();
    ASSERT_TRUE(WriteFileAtomically(base.initial_weights, *bytes).ok());
  }
  auto variant = [&](const std::string& name) {
    TrainConfig c = base;
    c.checkpoint_dir = (out_ / ("ck-" + name)).string();
    c.output_safetensors = (out_ / (name + ".safetensors")).string();
    return c;
  };
  CancelToken none;
  RecordingSink full;
  const TrainConfig straight = variant("straight");
  ASSERT_TRUE(Train(straight, &full, none).ok());
  ASSERT_EQ(full.checkpoints.size(), 3u);  // after each epoch
  EXPECT_EQ(full.checkpoints[0].epoch, 2);
  EXPECT_EQ(full.checkpoints[0].next_batch, 0);
  for (const auto& c : full.checkpoints) EXPECT_EQ(Sha256Hex(Slurp(c.path)), c.sha256);

  // Interrupted after batch 2 of epoch 2: a checkpoint before batch 3.
  TrainConfig interrupted = variant("interrupted");
  CancelToken token;
  RecordingSink first;
  first.interrupt = &token;
  first.interrupt_epoch = 2;
  first.interrupt_batch = 2;
  EXPECT_EQ(Train(interrupted, &first, token).status().code(), absl::StatusCode::kCancelled);
  ASSERT_EQ(first.checkpoints.size(), 2u);
  const CheckpointInfo mid = first.checkpoints[1];
  EXPECT_EQ(mid.epoch, 2);
  EXPECT_EQ(mid.next_batch, 3);
  EXPECT_EQ(mid.global_step, 5 + 3);

  TrainConfig resumed = interrupted;
  resumed.resume_from = mid.path;
  RecordingSink second;
  ASSERT_TRUE(Train(resumed, &second, none).ok());
  // The batches after the checkpoint, then epoch 3's.
  ASSERT_EQ(second.losses.size(), full.losses.size() - 8);
  EXPECT_TRUE(std::equal(second.losses.begin(), second.losses.end(), full.losses.begin() + 8));
  ASSERT_EQ(second.epochs.size(), 2u);
  EXPECT_EQ(second.epochs[0].epoch, 2);
  EXPECT_EQ(second.epochs[0].train_loss, full.epochs[1].train_loss);  // whole-epoch totals
  EXPECT_EQ(second.epochs[1].validation_loss, full.epochs[2].validation_loss);
  EXPECT_EQ(Slurp(resumed.output_safetensors), Slurp(straight.output_safetensors));
  // The resumed epoch's phase times carry its steps before the interrupt.
  auto mid_tensors = ParseSafetensors(Slurp(mid.path));
  ASSERT_TRUE(mid_tensors.ok()) << mid_tensors.status();
  double forward_before = -1;
  for (const auto& [name, t] : *mid_tensors) {
    if (name == "state/forward_seconds") forward_before = t.item<double>();
  }
  EXPECT_GT(forward_before, 0);
  EXPECT_GT(second.epochs[0].phases.forward_seconds, forward_before);
  EXPECT_LT(second.epochs[0].phases.forward_seconds, second.epochs[0].step_seconds);

  // A checkpoint from before the phase times resumes, their sums from 0.
  const std::set<std::string> phase_names = {"state/forward_seconds", "state/backward_seconds",
                                             "state/allreduce_seconds", "state/update_seconds"};
  NamedTensors older;
  for (const auto& [name, t] : *mid_tensors) {
    if (!phase_names.count(name)) older.emplace_back(name, t);
  }
  ASSERT_EQ(older.size(), mid_tensors->size() - 4);
  auto older_bytes = SerializeSafetensors(older);
  ASSERT_TRUE(older_bytes.ok());
  TrainConfig from_older = variant("older");
  from_older.resume_from = (out_ / "older.safetensors").string();
  ASSERT_TRUE(WriteFileAtomically(from_older.resume_from, *older_bytes).ok());
  RecordingSink sixth;
  ASSERT_TRUE(Train(from_older, &sixth, none).ok());
  ASSERT_EQ(sixth.epochs.size(), 2u);
  EXPECT_EQ(sixth.epochs[0].train_loss, full.epochs[1].train_loss);
  EXPECT_GT(sixth.epochs[0].phases.forward_seconds, 0);  // the steps after it
  EXPECT_EQ(Slurp(from_older.output_safetensors), Slurp(straight.output_safetensors));

  // From the end of epoch 1.
  TrainConfig from_epoch = variant("from-epoch");
  from_epoch.resume_from = first.checkpoints[0].path;
  RecordingSink third;
  ASSERT_TRUE(Train(from_epoch, &third, none).ok());
  EXPECT_EQ(third.losses.size(), 10u);
  EXPECT_EQ(Slurp(from_epoch.output_safetensors), Slurp(straight.output_safetensors));

  // Interrupted between epochs (a pause that arrives during validation):
  // the checkpoint before epoch 2's first batch already holds epoch 2's
  // order, and the resumed run trains that order, not a second draw.
  TrainConfig between = variant("between");
  CancelToken stop_between;
  RecordingSink fourth;
  fourth.interrupt = &stop_between;
  fourth.interrupt_after_epoch = 1;
  EXPECT_EQ(Train(between, &fourth, stop_between).status().code(), absl::StatusCode::kCancelled);
  ASSERT_EQ(fourth.checkpoints.size(), 2u);
  EXPECT_EQ(fourth.checkpoints[1].epoch, 2);
  EXPECT_EQ(fourth.checkpoints[1].next_batch, 0);
  TrainConfig after_between = between;
  after_between.resume_from = fourth.checkpoints[1].path;
  RecordingSink fifth;
  ASSERT_TRUE(Train(after_between, &fifth, none).ok());
  EXPECT_TRUE(std::equal(fifth.losses.begin(), fifth.losses.end(), full.losses.begin() + 5));
  EXPECT_EQ(Slurp(after_between.output_safetensors), Slurp(straight.output_safetensors));
}

INSTANTIATE_TEST_SUITE_P(Precisions, ResumeTest, testing::Combine(testing::Bool(), testing::Bool()),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "Bf16" : "Fp32") +
                                  (std::get<1>(info.param) ? "FineTune" : "Scratch");
                         });

TEST_F(TrainerTest, DamagedOrForeignCheckpointsAreRefusedWithTheReason) {
  TrainConfig c = Config(1);
  c.epochs = 1;
  c.checkpoint_dir = (out_ / "ck").string();
  RecordingSink sink;
  CancelToken none;
  ASSERT_TRUE(Train(c, &sink, none).ok());
  ASSERT_EQ(sink.checkpoints.size(), 1u);
  const std::string good = Slurp(sink.checkpoints[0].path);

  auto resume_with = [&](const std::string& bytes) {
    const std::string path = (out_ / "bad.safetensors").string();
    EXPECT_TRUE(WriteFileAtomically(path, bytes).ok());
    TrainConfig r = c;
    r.epochs = 2;
    r.resume_from = path;
    RecordingSink s;
    return Train(r, &s, none).status();
  };
  absl::Status truncated = resume_with(good.substr(0, good.size() / 2));
  EXPECT_EQ(truncated.code(), absl::StatusCode::kDataLoss) << truncated;
  EXPECT_NE(truncated.message().find("checkpoint"), absl::string_view::npos) << truncated;

  // A checkpoint of a run with another number of classes.
  TrainConfig other = c;
  other.data.exclude_classes = {"c2"};
  other.checkpoint_dir = (out_ / "ck-other").string();
  RecordingSink other_sink;
  auto other_run = Train(other, &other_sink, none);
  ASSERT_TRUE(other_run.ok()) << other_run.status();
  absl::Status foreign = resume_with(Slurp(other_sink.checkpoints[0].path));
  EXPECT_EQ(foreign.code(), absl::StatusCode::kDataLoss) << foreign;
  EXPECT_NE(foreign.message().find("fc.weight"), absl::string_view::npos) << foreign;
}

}  // namespace
}  // namespace traind::train
