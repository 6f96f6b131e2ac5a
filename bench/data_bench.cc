// Prints what preparing training batches costs: each augmentation op and a
// whole augmented sample in microseconds on one thread, and the batch
// loader's images/s as a job runs it (samples spread over the intra-op
// threads). Figures, not a test.
//
//   build/bench/data_bench [--dir CALTECH_DIR] [--images 512] [--threads 2]
//
// Without --dir the images are random noise, which makes the colour ops'
// branches unpredictable: use real images for figures.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <opencv2/core.hpp>

#include "bench/flags.h"
#include "server/train/config.h"
#include "server/train/data.h"

namespace {

using traind::bench::Arg;
using traind::bench::StrArg;

using traind::train::AugmentConfig;
using traind::train::BatchLoader;
using traind::train::DecodedSet;

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Microseconds per image of `op` over the whole set, best of three passes.
double PerImageUs(const DecodedSet& set, const std::function<void(const cv::Mat&, int64_t)>& op) {
  double best = 1e30;
  for (int pass = 0; pass < 3; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    for (size_t i = 0; i < set.images.size(); ++i) op(set.images[i], static_cast<int64_t>(i));
    best = std::min(best, Seconds(start));
  }
  return best / set.images.size() * 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = StrArg(argc, argv, "--dir", "");
  const int images = Arg(argc, argv, "--images", 512);
  const int threads = Arg(argc, argv, "--threads", 2);
  const int size = Arg(argc, argv, "--image_size", 128);
  at::set_num_threads(threads);

  DecodedSet set;
  if (dir.empty()) {
    std::mt19937 rng(0);
    for (int i = 0; i < images; ++i) {
      cv::Mat m(size, size, CV_8UC3);
      cv::randu(m, 0, 256);
      set.images.push_back(m);
      set.labels.push_back(i % 10);
    }
  } else {
    traind::train::DataConfig config;
    config.dir = dir;
    auto index = traind::train::ScanDataset(config);
    if (!index.ok()) {
      std::fprintf(stderr, "data_bench: %s\n", std::string(index.status().message()).c_str());
      return 1;
    }
    std::vector<traind::train::ImageRecord> records = index->train;
    // Every class, not the first few: a spread of the dataset's images.
    std::vector<traind::train::ImageRecord> picked;
    const size_t stride = std::max<size_t>(1, records.size() / images);
    for (size_t i = 0; i < records.size() && picked.size() < static_cast<size_t>(images); i += stride) {
      picked.push_back(records[i]);
    }
    std::vector<std::string> warnings;
    const auto start = std::chrono::steady_clock::now();
    set = traind::train::DecodeImages(picked, size, threads, &warnings);
    std::printf("decode+resize %zu images on %d threads: %.0f us/image\n", set.images.size(),
                threads, Seconds(start) / set.images.size() * 1e6 * threads);
  }
  std::printf("%zu images of %d px, %s\n", set.images.size(), size,
              dir.empty() ? "random noise" : dir.c_str());

  const AugmentConfig aug;
  std::vector<float> out(static_cast<size_t>(size) * size * 3);
  struct Op {
    const char* name;
    std::function<void(const cv::Mat&, int64_t)> run;
  };
  const std::vector<Op> ops = {
      {"flip", [](const cv::Mat& m, int64_t) { traind::train::HorizontalFlip(m); }},
      {"rotate", [](const cv::Mat& m, int64_t i) { traind::train::Rotate(m, (i % 21) - 10.0); }},
      {"brightness", [](const cv::Mat& m, int64_t i) { traind::train::AdjustBrightness(m, 0.8 + (i % 40) * 0.01); }},
      {"contrast", [](const cv::Mat& m, int64_t i) { traind::train::AdjustContrast(m, 0.8 + (i % 40) * 0.01); }},
      {"saturation", [](const cv::Mat& m, int64_t i) { traind::train::AdjustSaturation(m, 0.8 + (i % 40) * 0.01); }},
      {"hue", [](const cv::Mat& m, int64_t i) { traind::train::AdjustHue(m, (i % 21 - 10) * 0.01); }},
      {"normalize", [&](const cv::Mat& m, int64_t) { traind::train::NormalizeInto(m, out.data()); }},
      {"sample (augment + normalize)",
       [&](const cv::Mat& m, int64_t i) {
         std::mt19937_64 rng(static_cast<uint64_t>(i));
         traind::train::NormalizeInto(traind::train::Augment(m, aug, rng), out.data());
       }},
  };
  std::printf("one thread, us per image (best of 3 passes):\n");
  for (const Op& op : ops) std::printf("  %-30s %7.1f\n", op.name, PerImageUs(set, op.run));

  std::vector<int64_t> order(set.images.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  for (int epoch = 0; epoch < 3; ++epoch) {
    BatchLoader::Options lo;
    lo.augment = true;
    lo.epoch = epoch;
    BatchLoader loader(set, order, lo);
    traind::train::Batch batch;
    const auto start = std::chrono::steady_clock::now();
    int64_t n = 0;
    while (loader.Next(&batch)) n += batch.labels.size(0);
    std::printf("loader, batch 32 on %d intra-op threads: %7.1f images/s\n", threads,
                n / Seconds(start));
  }
  return 0;
}
