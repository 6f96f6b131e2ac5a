// Per-epoch augmentation and the batch loader (the declarations are in data.h).
#include "server/train/data.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <map>
#include <system_error>
#include <thread>
#include <utility>

#include <ATen/Parallel.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/file_util.h"

namespace traind::train {
namespace fs = std::filesystem;
namespace {

constexpr float kMean[3] = {0.485f, 0.456f, 0.406f};
constexpr float kStd[3] = {0.229f, 0.224f, 0.225f};

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t SampleSeed(uint64_t seed, int64_t epoch, int64_t index) {
  return SplitMix64(SplitMix64(SplitMix64(seed) ^ static_cast<uint64_t>(epoch)) ^
                    static_cast<uint64_t>(index));
}

double Uniform(std::mt19937_64& rng, double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}

}  // namespace

cv::Mat Augment(const cv::Mat& rgb, const AugmentConfig& config,
                std::mt19937_64& rng) {
  cv::Mat img = rgb;
  if (Uniform(rng, 0.0, 1.0) < config.hflip_probability) img = HorizontalFlip(img);
  if (config.rotation_degrees > 0) {
    img = Rotate(img, Uniform(rng, -config.rotation_degrees, config.rotation_degrees));
  }
  // ColorJitter: the four ops in a random order, each factor drawn once.
  int order[4] = {0, 1, 2, 3};
  std::shuffle(std::begin(order), std::end(order), rng);
  for (int op : order) {
    switch (op) {
      case 0:
        if (config.brightness > 0) {
          img = AdjustBrightness(img, Uniform(rng, std::max(0.0, 1 - config.brightness),
                                              1 + config.brightness));
        }
        break;
      case 1:
        if (config.contrast > 0) {
          img = AdjustContrast(img, Uniform(rng, std::max(0.0, 1 - config.contrast),
                                            1 + config.contrast));
        }
        break;
      case 2:
        if (config.saturation > 0) {
          img = AdjustSaturation(img, Uniform(rng, std::max(0.0, 1 - config.saturation),
                                              1 + config.saturation));
        }
        break;
      case 3:
        if (config.hue > 0) img = AdjustHue(img, Uniform(rng, -config.hue, config.hue));
        break;
    }
  }
  return img;
}

void NormalizeInto(const cv::Mat& rgb, float* hwc) {
  static const auto kLut = [] {
    std::array<std::array<float, 256>, 3> lut{};
    for (int c = 0; c < 3; ++c) {
      for (int v = 0; v < 256; ++v) lut[c][v] = (v / 255.0f - kMean[c]) / kStd[c];
    }
    return lut;
  }();
  for (int y = 0; y < rgb.rows; ++y) {
    const uint8_t* row = rgb.ptr<uint8_t>(y);
    for (int x = 0; x < rgb.cols; ++x) {
      for (int c = 0; c < 3; ++c) *hwc++ = kLut[c][row[3 * x + c]];
    }
  }
}

struct BatchLoader::State {
  const DecodedSet& set;
  std::vector<int64_t> order;
  Options options;
  int64_t num_batches = 0;
  int threads = 1;
  std::vector<std::thread> workers;

  mutable absl::Mutex mu;
  std::map<int64_t, Batch> ready ABSL_GUARDED_BY(mu);
  absl::Status error ABSL_GUARDED_BY(mu);  // sticky
  int64_t consumed ABSL_GUARDED_BY(mu) = 0;  // batches handed out
  bool stop ABSL_GUARDED_BY(mu) = false;

  State(const DecodedSet& s, std::vector<int64_t> o, Options opt)
      : set(s), order(std::move(o)), options(opt) {}

  Batch Build(int64_t b) {
    const int64_t begin = b * options.batch_size;
    const int64_t end = std::min<int64_t>(begin + options.batch_size, order.size());
    const int64_t count = end - begin;
    const int size = set.images.empty() ? 0 : set.images[0].rows;
    torch::Tensor hwc = torch::empty({count, size, size, 3}, torch::kFloat);
    torch::Tensor labels = torch::empty({count}, torch::kLong);
    float* data = hwc.data_ptr<float>();
    int64_t* label_data = labels.data_ptr<int64_t>();
    // Samples are independent (each has its own generator), so they are
    // prepared on LibTorch's intra-op pool, idle between training steps.
    at::parallel_for(0, count, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t sample = order[begin + i];
      const cv::Mat& src = set.images[sample];
      float* dst = data + i * size * size * 3;
      if (options.augment) {
        std::mt19937_64 rng(SampleSeed(options.seed, options.epoch, sample));
        NormalizeInto(Augment(src, options.augmentation, rng), dst);
      } else {
        NormalizeInto(src, dst);
      }
      label_data[i] = set.labels[sample];
    }
    });
    // NHWC storage viewed as NCHW: channels-last without a copy.
    return Batch{hwc.permute({0, 3, 1, 2}), labels};
  }

  // Build, with the libraries' exceptions as a status: nothing may leave a
  // loader thread (it would end the process).
  absl::StatusOr<Batch> BuildSafely(int64_t b) {
    try {
      return Build(b);
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("loading batch ", b, ": ", e.what_without_backtrace()));
    } catch (const cv::Exception& e) {
      return absl::InternalError(absl::StrCat("loading batch ", b, ": ", e.what()));
    } catch (const std::exception& e) {
      return absl::ResourceExhaustedError(absl::StrCat("loading batch ", b, ": ", e.what()));
    }
  }

  // Records the first error and stops the workers.
  void Fail(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (error.ok()) error = status;
    stop = true;
  }

  void Work(int worker) {
    for (int64_t b = worker; b < num_batches; b += threads) {
      {
        absl::MutexLock lock(&mu);
        auto can_build = [this, b]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
          return stop || b < consumed + options.prefetch;
        };
        mu.Await(absl::Condition(&can_build));
        if (stop) return;
      }
      auto batch = BuildSafely(b);
      absl::MutexLock lock(&mu);
      if (!batch.ok()) return Fail(batch.status());
      ready.emplace(b, std::move(*batch));
    }
  }
};

BatchLoader::BatchLoader(const DecodedSet& set, std::vector<int64_t> order,
                         Options options)
    : state_(std::make_unique<State>(set, std::move(order), options)) {
  const int64_t n = static_cast<int64_t>(state_->order.size());
  state_->num_batches = (n + options.batch_size - 1) / options.batch_size;
  if (options.prefetch <= 0) return;  // synchronous: Next() builds each batch
  state_->threads = std::max(1, options.threads);
  for (int t = 0; t < state_->threads; ++t) {
    state_->workers.emplace_back([this, t] { state_->Work(t); });
  }
}

BatchLoader::~BatchLoader() {
  {
    absl::MutexLock lock(&state_->mu);
    state_->stop = true;
  }
  for (auto& t : state_->workers) t.join();
}

int64_t BatchLoader::num_batches() const { return state_->num_batches; }

absl::Status BatchLoader::status() const {
  absl::MutexLock lock(&state_->mu);
  return state_->error;
}

bool BatchLoader::Next(Batch* batch) {
  State& s = *state_;
  if (s.options.prefetch <= 0) {
    int64_t b;
    {
      absl::MutexLock lock(&s.mu);
      if (s.consumed >= s.num_batches || !s.error.ok()) return false;
      b = s.consumed++;
    }
    auto built = s.BuildSafely(b);
    if (!built.ok()) {
      absl::MutexLock lock(&s.mu);
      s.Fail(built.status());
      return false;
    }
    *batch = std::move(*built);
    return true;
  }
  absl::MutexLock lock(&s.mu);
  if (s.consumed >= s.num_batches) return false;
  const int64_t want = s.consumed;
  auto ready = [&s, want]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) {
    return s.ready.count(want) > 0 || !s.error.ok();
  };
  s.mu.Await(absl::Condition(&ready));
  if (s.ready.count(want) == 0) return false;
  auto it = s.ready.find(want);
  *batch = std::move(it->second);
  s.ready.erase(it);
  ++s.consumed;
  return true;
}

}  // namespace traind::train
