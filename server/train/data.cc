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

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

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

// Grayscale as PIL's convert("L"): L = R*299/1000 + G*587/1000 + B*114/1000.
cv::Mat Gray(const cv::Mat& rgb) {
  cv::Mat gray;
  cv::cvtColor(rgb, gray, cv::COLOR_RGB2GRAY);
  return gray;
}

// out = img * factor + other * (1 - factor), saturated to uint8.
cv::Mat Blend(const cv::Mat& img, const cv::Mat& other3, double factor) {
  cv::Mat out;
  cv::addWeighted(img, factor, other3, 1.0 - factor, 0.0, out);
  return out;
}

cv::Mat AdjustBrightness(const cv::Mat& img, double factor) {
  cv::Mat out;
  img.convertTo(out, CV_8UC3, factor);
  return out;
}

cv::Mat AdjustContrast(const cv::Mat& img, double factor) {
  const double mean = cv::mean(Gray(img))[0];
  cv::Mat flat(img.size(), img.type(), cv::Scalar::all(std::floor(mean + 0.5)));
  return Blend(img, flat, factor);
}

cv::Mat AdjustSaturation(const cv::Mat& img, double factor) {
  cv::Mat gray3;
  cv::cvtColor(Gray(img), gray3, cv::COLOR_GRAY2RGB);
  return Blend(img, gray3, factor);
}

// Hue shift in turns, on 8-bit HSV with hue in [0, 256) as PIL does.
cv::Mat AdjustHue(const cv::Mat& img, double shift) {
  cv::Mat hsv;
  cv::cvtColor(img, hsv, cv::COLOR_RGB2HSV_FULL);
  const int delta = static_cast<int>(std::lround(shift * 255.0));
  for (int y = 0; y < hsv.rows; ++y) {
    auto* row = hsv.ptr<uint8_t>(y);
    for (int x = 0; x < hsv.cols; ++x) {
      row[3 * x] = static_cast<uint8_t>((row[3 * x] + delta) & 0xff);
    }
  }
  cv::Mat out;
  cv::cvtColor(hsv, out, cv::COLOR_HSV2RGB_FULL);
  return out;
}

}  // namespace

bool HasImageExtension(const std::string& filename) {
  static const char* const kExtensions[] = {".jpg", ".jpeg", ".png", ".ppm",
                                            ".bmp", ".pgm",  ".tif", ".tiff",
                                            ".webp"};
  std::string lower = filename;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  for (const char* ext : kExtensions) {
    const size_t n = std::char_traits<char>::length(ext);
    if (lower.size() >= n && lower.compare(lower.size() - n, n, ext) == 0) {
      return true;
    }
  }
  return false;
}

absl::StatusOr<DatasetIndex> ListImageFolder(
    const std::string& dir, const std::vector<std::string>& exclude) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("dataset folder ", dir, " does not exist"));
  }
  DatasetIndex index;
  std::vector<std::string> classes;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (!entry.is_directory()) continue;
    const std::string name = entry.path().filename().string();
    if (std::find(exclude.begin(), exclude.end(), name) != exclude.end()) {
      continue;
    }
    classes.push_back(name);
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", dir, ": ", ec.message()));
  std::sort(classes.begin(), classes.end());
  if (classes.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("dataset folder ", dir, " has no class sub-folders"));
  }
  for (size_t label = 0; label < classes.size(); ++label) {
    // os.walk order: folders sorted by path, files sorted within a folder.
    std::vector<std::pair<std::string, std::string>> files;
    const fs::path class_dir = fs::path(dir) / classes[label];
    for (auto it = fs::recursive_directory_iterator(
             class_dir, fs::directory_options::follow_directory_symlink, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (!it->is_regular_file()) continue;
      const std::string name = it->path().filename().string();
      if (!HasImageExtension(name)) continue;
      files.emplace_back(it->path().parent_path().string(), name);
    }
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot list ", class_dir.string(), ": ", ec.message()));
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "class folder ", class_dir.string(), " holds no images"));
    }
    for (auto& [parent, name] : files) {
      index.train.push_back({(fs::path(parent) / name).string(),
                             static_cast<int64_t>(label)});
    }
  }
  index.classes = std::move(classes);
  return index;
}

absl::StatusOr<DatasetIndex> ScanDataset(const DataConfig& config) {
  std::error_code ec;
  const fs::path train_dir = fs::path(config.dir) / "train";
  const fs::path val_dir = fs::path(config.dir) / "val";
  if (fs::is_directory(train_dir, ec) && fs::is_directory(val_dir, ec)) {
    auto train = ListImageFolder(train_dir.string(), config.exclude_classes);
    if (!train.ok()) return train.status();
    auto val = ListImageFolder(val_dir.string(), config.exclude_classes);
    if (!val.ok()) return val.status();
    if (val->classes != train->classes) {
      return absl::FailedPreconditionError(
          "train/ and val/ of the dataset hold different class folders");
    }
    train->validation = std::move(val->train);
    return train;
  }

  auto index = ListImageFolder(config.dir, config.exclude_classes);
  if (!index.ok()) return index.status();
  std::vector<ImageRecord> all = std::move(index->train);
  const int64_t n = static_cast<int64_t>(all.size());
  const int64_t n_train =
      static_cast<int64_t>(std::floor(static_cast<double>(n) * config.train_fraction));
  if (n_train < 1 || n_train >= n) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dataset has ", n, " images: too few for train_fraction ",
        config.train_fraction, " to leave both splits non-empty"));
  }
  // torch.utils.data.random_split draws randperm(n) from its generator.
  auto gen = at::detail::createCPUGenerator(config.seed);
  torch::Tensor perm = torch::randperm(n, gen, torch::kLong);
  const int64_t* p = perm.data_ptr<int64_t>();
  index->train.clear();
  for (int64_t i = 0; i < n; ++i) {
    (i < n_train ? index->train : index->validation).push_back(all[p[i]]);
  }
  return index;
}

absl::StatusOr<cv::Mat> DecodeImage(const std::string& path, int size) {
  cv::Mat bgr;
  try {
    bgr = cv::imread(path, cv::IMREAD_COLOR);
  } catch (const cv::Exception& e) {
    return absl::DataLossError(absl::StrCat("cannot decode ", path, ": ", e.what()));
  }
  if (bgr.empty()) {
    return absl::DataLossError(absl::StrCat("cannot decode ", path, ": unreadable or corrupt image"));
  }
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  // Area averaging when shrinking approximates PIL's antialiased bilinear.
  const bool shrink = bgr.cols * bgr.rows >= size * size;
  cv::Mat out;
  cv::resize(rgb, out, cv::Size(size, size), 0, 0,
             shrink ? cv::INTER_AREA : cv::INTER_LINEAR);
  return out;
}

DecodedSet DecodeImages(const std::vector<ImageRecord>& records, int size,
                        int threads, std::vector<std::string>* warnings) {
  std::vector<cv::Mat> images(records.size());
  std::vector<std::string> errors(records.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < records.size(); i = next++) {
      auto img = DecodeImage(records[i].path, size);
      if (img.ok()) {
        images[i] = std::move(*img);
      } else {
        errors[i] = std::string(img.status().message());
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < std::max(1, threads); ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();

  DecodedSet set;
  for (size_t i = 0; i < records.size(); ++i) {
    if (images[i].empty()) {
      if (warnings) warnings->push_back("skipped: " + errors[i]);
      continue;
    }
    set.images.push_back(std::move(images[i]));
    set.labels.push_back(records[i].label);
  }
  return set;
}

cv::Mat Augment(const cv::Mat& rgb, const AugmentConfig& config,
                std::mt19937_64& rng) {
  cv::Mat img = rgb;
  if (Uniform(rng, 0.0, 1.0) < config.hflip_probability) {
    cv::Mat flipped;
    cv::flip(img, flipped, 1);
    img = flipped;
  }
  if (config.rotation_degrees > 0) {
    const double angle =
        Uniform(rng, -config.rotation_degrees, config.rotation_degrees);
    const cv::Point2f center((img.cols - 1) * 0.5f, (img.rows - 1) * 0.5f);
    cv::Mat rotated;
    cv::warpAffine(img, rotated, cv::getRotationMatrix2D(center, angle, 1.0),
                   img.size(), cv::INTER_NEAREST, cv::BORDER_CONSTANT,
                   cv::Scalar::all(0));
    img = rotated;
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

  absl::Mutex mu;
  std::map<int64_t, Batch> ready ABSL_GUARDED_BY(mu);
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
    for (int64_t i = 0; i < count; ++i) {
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
    // NHWC storage viewed as NCHW: channels-last without a copy.
    return Batch{hwc.permute({0, 3, 1, 2}), labels};
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
      Batch batch = Build(b);
      absl::MutexLock lock(&mu);
      ready.emplace(b, std::move(batch));
    }
  }
};

BatchLoader::BatchLoader(const DecodedSet& set, std::vector<int64_t> order,
                         Options options)
    : state_(std::make_unique<State>(set, std::move(order), options)) {
  const int64_t n = static_cast<int64_t>(state_->order.size());
  state_->num_batches = (n + options.batch_size - 1) / options.batch_size;
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

bool BatchLoader::Next(Batch* batch) {
  State& s = *state_;
  absl::MutexLock lock(&s.mu);
  if (s.consumed >= s.num_batches) return false;
  const int64_t want = s.consumed;
  auto ready = [&s, want]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) {
    return s.ready.count(want) > 0;
  };
  s.mu.Await(absl::Condition(&ready));
  auto it = s.ready.find(want);
  *batch = std::move(it->second);
  s.ready.erase(it);
  ++s.consumed;
  return true;
}

}  // namespace traind::train
