// Data-parallel training against its exact reference: two ranks (threads of
// this process, each with its own model, joined by c10d's real TCPStore and
// ProcessGroupGloo on loopback) must end where one process ends that runs
// each rank's share of every global batch through the model separately
// ("ghost batches"), averages their gradients and steps; rank 0's BatchNorm
// statistics are the saved ones. The order, the shares and the padding are
// DistributedSampler's.
#include <filesystem>
#include <random>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "server/train/collective.h"
#include "server/train/data.h"
#include "server/train/recipe.h"
#include "server/train/run.h"
#include "server/train/trainer.h"
#include "server/train/weights.h"
#include "tests/test_util.h"

namespace traind::train {
namespace {

namespace fs = std::filesystem;

class QuietSink : public ProgressSink {
 public:
  void OnDataset(const DatasetSummary&) override {}
  void OnBatch(const BatchProgress& b) override { batches.push_back(b); }
  void OnEpoch(const EpochResult& e) override { epochs.push_back(e); }
  void OnInfo(const std::string&) override {}
  void OnWarning(const std::string&) override {}
  void OnEvaluation(const Evaluation& e) override { evaluation = e; }
  std::vector<BatchProgress> batches;
  std::vector<EpochResult> epochs;
  Evaluation evaluation;
};

// A recipe, in fp32 or in bf16 (whose steps read FusedAdam's bfloat16
// weight copies, so their gradients come from GradientOf).
struct Recipe {
  Kind kind;
  bool bf16;
};

class DistributedTest : public testing::TestWithParam<Recipe> {
 protected:
  void SetUp() override {
    dir_ = testing_util::FreshTestDir("distributed_data");
    out_ = testing_util::FreshTestDir("distributed_out");
    std::mt19937 rng(11);
    for (int k = 0; k < 3; ++k) {
      fs::create_directories(dir_ / ("c" + std::to_string(k)));
      for (int i = 0; i < 21; ++i) {
        cv::Mat img(36, 44, CV_8UC3, cv::Scalar(30 + 80 * k, 200 - 60 * k, 90));
        cv::circle(img, {static_cast<int>(rng() % 40), static_cast<int>(rng() % 30)}, 6,
                   cv::Scalar(rng() % 255, 40, 200), cv::FILLED);
        cv::imwrite((dir_ / ("c" + std::to_string(k)) / (std::to_string(i) + ".png")).string(),
                    img);
      }
    }
  }

  TrainConfig Config() const {
    TrainConfig c;
    c.kind = GetParam().kind;
    c.bf16 = GetParam().bf16;
    c.data.dir = dir_.string();
    c.data.image_size = 40;
    c.data.loader_threads = 1;
    c.epochs = 2;
    c.batch_size = 8;  // 4 per rank
    c.threads = 1;
    c.data.seed = 5;
    if (c.kind == Kind::kFinetune) {
      // A stand-in for ImageNet weights: any ResNet-18 state_dict.
      torch::manual_seed(3);
      ResNet m = ResNet18(1000);
      NamedTensors t;
      for (auto& [name, v] : StateDict(*m)) t.emplace_back(name, v.detach().contiguous());
      const std::string path = (out_ / "initial.safetensors").string();
      auto bytes = SerializeSafetensors(t);
      EXPECT_TRUE(bytes.ok());
      std::FILE* f = std::fopen(path.c_str(), "wb");
      std::fwrite(bytes->data(), 1, bytes->size(), f);
      std::fclose(f);
      c.initial_weights = path;
    }
    return c;
  }

  fs::path dir_, out_;
};

std::vector<int64_t> Share(const std::vector<int64_t>& order, int rank, int world) {
  std::vector<int64_t> padded = order;
  for (size_t i = 0; padded.size() % world != 0; ++i) padded.push_back(order[i]);
  std::vector<int64_t> share;
  for (size_t i = rank; i < padded.size(); i += world) share.push_back(padded[i]);
  return share;
}

// One process, no collective: each rank's share of a global batch through
// the model separately, gradients averaged, one step.
NamedTensors GhostBatchReference(const TrainConfig& config, int world) {
  QuietSink sink;
  auto data = LoadData(config.data, &sink);
  EXPECT_TRUE(data.ok()) << data.status();
  auto model = BuildModel(config, static_cast<int64_t>(data->index.classes.size()));
  EXPECT_TRUE(model.ok());
  ResNet m = *model;
  auto optimizer = BuildOptimizer(m, config);
  for (auto& p : m->parameters()) {
    if (p.dim() == 4) p.set_data(p.data().contiguous(torch::MemoryFormat::ChannelsLast));
  }
  at::Generator order_gen = at::detail::createCPUGenerator(config.data.seed);
  const int n = static_cast<int>(data->train.images.size());
  for (int epoch = 1; epoch <= config.epochs; ++epoch) {
    torch::Tensor perm = torch::randperm(n, order_gen, torch::kLong);
    std::vector<int64_t> order(perm.data_ptr<int64_t>(), perm.data_ptr<int64_t>() + n);
    std::vector<std::unique_ptr<BatchLoader>> loaders;
    for (int r = 0; r < world; ++r) {
      BatchLoader::Options lo;
      lo.batch_size = config.batch_size / world;
      lo.augment = true;
      lo.augmentation = config.data.augmentation;
      lo.seed = config.data.seed;
      lo.epoch = epoch;
      lo.threads = 1;
      loaders.push_back(std::make_unique<BatchLoader>(data->train, Share(order, r, world), lo));
    }
    while (true) {
      std::vector<Batch> batches(world);
      bool more = true;
      for (int r = 0; r < world; ++r) more = loaders[r]->Next(&batches[r]) && more;
      if (!more) break;
      // Ranks 1.. first, their BatchNorm updates undone: the statistics kept
      // are rank 0's.
      std::vector<torch::Tensor> saved;
      for (auto& b : m->buffers()) saved.push_back(b.clone());
      std::vector<std::vector<torch::Tensor>> grads;
      for (int r = world - 1; r >= 0; --r) {
        if (r == 0) {
          torch::NoGradGuard g;
          auto buffers = m->buffers();
          for (size_t i = 0; i < buffers.size(); ++i) buffers[i].copy_(saved[i]);
        }
        ForwardBackward(m, *optimizer, batches[r].images, batches[r].labels, config.bf16);
        std::vector<torch::Tensor> g;
        for (auto& p : m->parameters()) {
          if (p.requires_grad()) g.push_back(GradientOf(*optimizer, p).to(torch::kFloat));
        }
        grads.push_back(std::move(g));
      }
      torch::NoGradGuard g;
      size_t i = 0;
      for (auto& p : m->parameters()) {
        if (!p.requires_grad()) continue;
        torch::Tensor sum = grads[0][i].clone();
        for (int r = 1; r < world; ++r) sum += grads[r][i];
        p.mutable_grad() = sum * (1.f / world);
        ++i;
      }
      optimizer->step();
    }
  }
  NamedTensors out;
  for (auto& [name, t] : StateDict(*m)) out.emplace_back(name, t.detach().contiguous());
  return out;
}

TEST_P(DistributedTest, TwoRanksEqualGhostBatchesOfOneProcess) {
  const int world = 2;
  TrainConfig base = Config();
  // Rank 0 hosts the store on a port it picks; rank 1 learns it from rank 0.
  std::vector<absl::StatusOr<TrainResult>> results(world, absl::UnknownError("not run"));
  std::vector<QuietSink> sinks(world);
  std::vector<CancelToken> cancels(world);
  const int port = 29000 + static_cast<int>(getpid() % 2000);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      TrainConfig c = base;
      if (r == 0) c.output_safetensors = (out_ / "rank0.safetensors").string();
      RankInfo info;
      info.rank = r;
      info.world_size = world;
      info.master_port = port;
      info.timeout_seconds = 60;
      auto collective = ConnectGloo(info);
      if (!collective.ok()) {
        results[r] = collective.status();
        return;
      }
      results[r] = TrainRank(c, collective->get(), &sinks[r], cancels[r]);
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) ASSERT_TRUE(results[r].ok()) << r << ": " << results[r].status();

  const NamedTensors reference = GhostBatchReference(base, world);
  auto got = LoadStateDict((out_ / "rank0.safetensors").string());
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), reference.size());
  double worst = 0;
  std::string worst_name;
  for (size_t i = 0; i < reference.size(); ++i) {
    ASSERT_EQ((*got)[i].first, reference[i].first);
    const double d = ((*got)[i].second.to(torch::kDouble) - reference[i].second.to(torch::kDouble))
                         .abs()
                         .max()
                         .item<double>();
    if (d > worst) {
      worst = d;
      worst_name = reference[i].first;
    }
  }
  EXPECT_LT(worst, 1e-5) << worst_name;
  std::printf("largest difference from the ghost-batch reference: %.3g (%s)\n", worst,
              worst_name.c_str());
  // The weights moved: this is not a comparison of two initialisations.
  auto untrained = BuildModel(base, 3);
  ASSERT_TRUE(untrained.ok());
  const torch::Tensor fc0 = (*untrained)->fc()->weight.detach();
  for (const auto& [name, t] : reference) {
    if (name == "fc.weight") {
      EXPECT_GT((t - fc0).abs().max().item<double>(), 1e-3);
    }
  }
  // Every rank takes ceil(n / 2) images (padded), 4 per step.
  const int n = results[0]->dataset.train_images;
  const size_t steps = static_cast<size_t>(((n + 1) / 2 + 3) / 4);
  EXPECT_EQ(sinks[0].batches.size(), 2 * steps);
  ASSERT_EQ(sinks[0].epochs.size(), 2u);
  // Each rank's steps, phase by phase, the gradient allreduce among them.
  for (const auto& sink : sinks) {
    for (const EpochResult& e : sink.epochs) {
      EXPECT_GT(e.phases.forward_seconds, 0);
      EXPECT_GT(e.phases.backward_seconds, 0);
      EXPECT_GT(e.phases.allreduce_seconds, 0);
      EXPECT_GT(e.phases.update_seconds, 0);
      EXPECT_LE(e.phases.forward_seconds + e.phases.backward_seconds + e.phases.allreduce_seconds +
                    e.phases.update_seconds,
                e.step_seconds);
    }
  }
  // Validation is sharded, yet counts every validation image exactly once.
  EXPECT_EQ(sinks[0].evaluation.images, results[0]->dataset.validation_images);
  EXPECT_EQ(sinks[0].evaluation.images, sinks[1].evaluation.images);
}

INSTANTIATE_TEST_SUITE_P(Recipes, DistributedTest,
                         testing::Values(Recipe{Kind::kFinetune, false},
                                         Recipe{Kind::kScratch, false},
                                         Recipe{Kind::kFinetune, true},
                                         Recipe{Kind::kScratch, true}),
                         [](const auto& info) {
                           return std::string(info.param.kind == Kind::kScratch ? "Scratch"
                                                                                : "Finetune") +
                                  (info.param.bf16 ? "Bf16" : "");
                         });

}  // namespace
}  // namespace traind::train
