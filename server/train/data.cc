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

// PIL's RGB -> L conversion: ITU-R 601-2 luma in 16-bit fixed point.
cv::Mat Gray(const cv::Mat& rgb) {
  cv::Mat gray(rgb.size(), CV_8UC1);
  for (int y = 0; y < rgb.rows; ++y) {
    const uint8_t* in = rgb.ptr<uint8_t>(y);
    uint8_t* out = gray.ptr<uint8_t>(y);
    for (int x = 0; x < rgb.cols; ++x, in += 3) {
      out[x] = static_cast<uint8_t>((in[0] * 19595 + in[1] * 38470 + in[2] * 7471 + 0x8000) >> 16);
    }
  }
  return gray;
}

// PIL's Image.blend(degenerate, img, factor) on 8-bit data, as ImageEnhance
// uses it: degenerate + factor * (img - degenerate) in single precision,
// truncated and clipped to [0, 255].
cv::Mat Blend(const cv::Mat& img, const cv::Mat& degenerate, double factor) {
  const float alpha = static_cast<float>(factor);
  cv::Mat out(img.size(), CV_8UC3);
  for (int y = 0; y < img.rows; ++y) {
    const uint8_t* in = img.ptr<uint8_t>(y);
    const uint8_t* deg = degenerate.ptr<uint8_t>(y);
    uint8_t* o = out.ptr<uint8_t>(y);
    for (int k = 0; k < img.cols * 3; ++k) {
      const float v = static_cast<float>(deg[k]) +
                      alpha * static_cast<float>(static_cast<int>(in[k]) - deg[k]);
      o[k] = v <= 0.0f ? 0 : v >= 255.0f ? 255 : static_cast<uint8_t>(v);
    }
  }
  return out;
}

// Resampling as PIL's Image.resize with BILINEAR (torchvision's default for
// PIL images): a triangle filter widened by the reduction factor (so it
// antialiases when shrinking), 22-bit fixed-point weights, a horizontal pass
// into 8-bit rows, then a vertical pass.
constexpr int kPrecisionBits = 32 - 8 - 2;

struct Taps {
  int size = 0;                 // taps per output pixel
  std::vector<int> first, count;
  std::vector<int32_t> weights;  // size per output pixel
};

Taps ComputeTaps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = 1.0 * filter_scale;
  Taps taps;
  taps.size = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.first.resize(out_size);
  taps.count.resize(out_size);
  taps.weights.assign(static_cast<size_t>(out_size) * taps.size, 0);
  std::vector<double> w(taps.size);
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;
    const int lo = std::max(0, static_cast<int>(center - support + 0.5));
    const int hi = std::min(in_size, static_cast<int>(center + support + 0.5));
    double total = 0;
    for (int i = 0; i < hi - lo; ++i) {
      const double t = std::abs((i + lo - center + 0.5) / filter_scale);
      w[i] = t < 1.0 ? 1.0 - t : 0.0;
      total += w[i];
    }
    for (int i = 0; i < hi - lo; ++i) {
      const double k = total != 0.0 ? w[i] / total : w[i];
      taps.weights[static_cast<size_t>(o) * taps.size + i] =
          static_cast<int32_t>(k < 0 ? -0.5 + k * (1 << kPrecisionBits)
                                     : 0.5 + k * (1 << kPrecisionBits));
    }
    taps.first[o] = lo;
    taps.count[o] = hi - lo;
  }
  return taps;
}

uint8_t Clip8(int32_t v) {
  v >>= kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

cv::Mat PilResize(const cv::Mat& src, int out_w, int out_h) {
  const Taps h = ComputeTaps(src.cols, out_w);
  const Taps v = ComputeTaps(src.rows, out_h);
  // Only the source rows the vertical pass reads.
  const int row0 = v.first[0];
  const int row1 = v.first[out_h - 1] + v.count[out_h - 1];
  cv::Mat tmp(row1 - row0, out_w, CV_8UC3);
  for (int y = row0; y < row1; ++y) {
    const uint8_t* in = src.ptr<uint8_t>(y);
    uint8_t* out = tmp.ptr<uint8_t>(y - row0);
    for (int o = 0; o < out_w; ++o) {
      const int32_t* k = &h.weights[static_cast<size_t>(o) * h.size];
      int32_t acc[3] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1),
                        1 << (kPrecisionBits - 1)};
      const uint8_t* p = in + 3 * h.first[o];
      for (int i = 0; i < h.count[o]; ++i, p += 3) {
        acc[0] += p[0] * k[i];
        acc[1] += p[1] * k[i];
        acc[2] += p[2] * k[i];
      }
      for (int c = 0; c < 3; ++c) out[3 * o + c] = Clip8(acc[c]);
    }
  }
  cv::Mat dst(out_h, out_w, CV_8UC3);
  for (int o = 0; o < out_h; ++o) {
    const int32_t* k = &v.weights[static_cast<size_t>(o) * v.size];
    uint8_t* out = dst.ptr<uint8_t>(o);
    for (int x = 0; x < out_w * 3; ++x) {
      int32_t acc = 1 << (kPrecisionBits - 1);
      for (int i = 0; i < v.count[o]; ++i) {
        acc += tmp.ptr<uint8_t>(v.first[o] - row0 + i)[x] * k[i];
      }
      out[x] = Clip8(acc);
    }
  }
  return dst;
}

// PIL's RGB <-> HSV conversions (colorsys's formulas, 8-bit channels).
void RgbToHsv(const uint8_t* in, uint8_t* out) {
  const uint8_t r = in[0], g = in[1], b = in[2];
  const uint8_t maxc = std::max({r, g, b}), minc = std::min({r, g, b});
  out[2] = maxc;
  if (minc == maxc) {
    out[0] = out[1] = 0;
    return;
  }
  const float cr = static_cast<float>(maxc - minc);
  const float s = cr / static_cast<float>(maxc);
  const float rc = static_cast<float>(maxc - r) / cr;
  const float gc = static_cast<float>(maxc - g) / cr;
  const float bc = static_cast<float>(maxc - b) / cr;
  float h;
  if (r == maxc) {
    h = bc - gc;
  } else if (g == maxc) {
    h = 2.0f + rc - bc;
  } else {
    h = 4.0f + gc - rc;
  }
  h = static_cast<float>(std::fmod(h / 6.0 + 1.0, 1.0));
  auto clip = [](int v) { return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v); };
  out[0] = clip(static_cast<int>(h * 255.0));
  out[1] = clip(static_cast<int>(s * 255.0));
}

void HsvToRgb(const uint8_t* in, uint8_t* out) {
  const uint8_t h = in[0], s = in[1], v = in[2];
  if (s == 0) {
    out[0] = out[1] = out[2] = v;
    return;
  }
  const int i = static_cast<int>(std::floor(static_cast<float>(h) * 6.0 / 255.0));
  const float f = static_cast<float>(static_cast<float>(h) * 6.0 / 255.0 - static_cast<float>(i));
  const float fs = static_cast<float>(static_cast<float>(s) / 255.0);
  auto clip = [](double x) {
    const long r = std::lround(x);
    return static_cast<uint8_t>(r < 0 ? 0 : r > 255 ? 255 : r);
  };
  const uint8_t p = clip(static_cast<float>(v) * (1.0 - fs));
  const uint8_t q = clip(static_cast<float>(v) * (1.0 - fs * f));
  const uint8_t t = clip(static_cast<float>(v) * (1.0 - fs * (1.0 - f)));
  switch (i % 6) {
    case 0: out[0] = v; out[1] = t; out[2] = p; break;
    case 1: out[0] = q; out[1] = v; out[2] = p; break;
    case 2: out[0] = p; out[1] = v; out[2] = t; break;
    case 3: out[0] = p; out[1] = q; out[2] = v; break;
    case 4: out[0] = t; out[1] = p; out[2] = v; break;
    default: out[0] = v; out[1] = p; out[2] = q; break;
  }
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

cv::Mat AdjustBrightness(const cv::Mat& img, double factor) {
  return Blend(img, cv::Mat::zeros(img.size(), img.type()), factor);
}

cv::Mat AdjustContrast(const cv::Mat& img, double factor) {
  // ImageEnhance.Contrast: a flat image at the rounded mean luma.
  const double mean = cv::mean(Gray(img))[0];
  const cv::Mat flat(img.size(), img.type(),
                     cv::Scalar::all(static_cast<int>(mean + 0.5)));
  return Blend(img, flat, factor);
}

cv::Mat AdjustSaturation(const cv::Mat& img, double factor) {
  cv::Mat gray3;
  cv::cvtColor(Gray(img), gray3, cv::COLOR_GRAY2RGB);
  return Blend(img, gray3, factor);
}

cv::Mat AdjustHue(const cv::Mat& img, double shift) {
  // torchvision: np.uint8(shift * 255) added to PIL's 8-bit hue, wrapping.
  const uint8_t delta = static_cast<uint8_t>(static_cast<int>(shift * 255.0) & 0xff);
  cv::Mat out(img.size(), CV_8UC3);
  for (int y = 0; y < img.rows; ++y) {
    const uint8_t* in = img.ptr<uint8_t>(y);
    uint8_t* o = out.ptr<uint8_t>(y);
    for (int x = 0; x < img.cols; ++x) {
      uint8_t hsv[3];
      RgbToHsv(in + 3 * x, hsv);
      hsv[0] = static_cast<uint8_t>(hsv[0] + delta);
      HsvToRgb(hsv, o + 3 * x);
    }
  }
  return out;
}

cv::Mat HorizontalFlip(const cv::Mat& img) {
  cv::Mat flipped;
  cv::flip(img, flipped, 1);
  return flipped;
}

cv::Mat Rotate(const cv::Mat& img, double degrees) {
  // PIL's Image.rotate(angle, NEAREST): the inverse affine map about (w/2, h/2)
  // applied to output pixel centres, truncated to the input pixel.
  const double rad = -degrees * M_PI / 180.0;
  const double a = std::cos(rad), b = std::sin(rad), d = -std::sin(rad), e = std::cos(rad);
  const double cx = img.cols / 2.0, cy = img.rows / 2.0;
  const double c = a * -cx + b * -cy + cx;
  const double f = d * -cx + e * -cy + cy;
  cv::Mat out(img.size(), CV_8UC3, cv::Scalar::all(0));
  for (int y = 0; y < img.rows; ++y) {
    uint8_t* o = out.ptr<uint8_t>(y);
    for (int x = 0; x < img.cols; ++x) {
      const double xin = a * (x + 0.5) + b * (y + 0.5) + c;
      const double yin = d * (x + 0.5) + e * (y + 0.5) + f;
      if (xin < 0 || yin < 0) continue;
      const int xi = static_cast<int>(xin), yi = static_cast<int>(yin);
      if (xi >= img.cols || yi >= img.rows) continue;
      const uint8_t* in = img.ptr<uint8_t>(yi) + 3 * xi;
      o[3 * x] = in[0];
      o[3 * x + 1] = in[1];
      o[3 * x + 2] = in[2];
    }
  }
  return out;
}

cv::Mat ResizeSquare(const cv::Mat& rgb, int size) {
  // OpenCV has no antialiased bilinear (INTER_AREA differs from PIL by a
  // mean of 2.3 in 0..255 on Caltech-101), so this is PIL's filter itself.
  return PilResize(rgb, size, size);
}

namespace {

// The formats torchvision's ImageFolder reads, by their leading bytes. Only
// these reach OpenCV: its other decoders (GDCM for DICOM, found by fuzzing)
// abort the process on some malformed input.
bool HasImageSignature(absl::string_view b) {
  auto starts = [&b](absl::string_view magic) { return absl::StartsWith(b, magic); };
  if (starts("\xff\xd8\xff")) return true;                       // JPEG
  if (starts("\x89PNG\r\n\x1a\n")) return true;                 // PNG
  if (starts("BM")) return true;                                 // BMP
  if (starts(absl::string_view("II*\0", 4)) || starts(absl::string_view("MM\0*", 4))) {
    return true;  // TIFF
  }
  // As strict as OpenCV's own checks, so that the intended decoder claims
  // the bytes instead of letting them fall through to others.
  if (b.size() >= 32 && starts("RIFF") && b.substr(8, 7) == "WEBPVP8") return true;
  if (b.size() >= 3 && b[0] == 'P' && b[1] >= '1' && b[1] <= '6' &&
      std::isspace(static_cast<unsigned char>(b[2]))) {
    return true;  // PBM/PGM/PPM
  }
  return false;
}

absl::StatusOr<cv::Mat> Decode(const std::string& bytes, int size) {
  // A prefix that the matching decoder then rejects falls through OpenCV's
  // decoder list to GDCM, which claims anything with "DICM" at byte 128.
  if (bytes.size() >= 132 && bytes.compare(128, 4, "DICM") == 0) {
    return absl::InvalidArgumentError("DICOM data is not a supported image format");
  }
  if (!HasImageSignature(bytes)) {
    return absl::InvalidArgumentError(
        "not a JPEG, PNG, BMP, TIFF, WebP or PPM/PGM image (by its first bytes)");
  }
  cv::Mat bgr;
  try {
    const cv::Mat raw(1, static_cast<int>(bytes.size()), CV_8UC1,
                      const_cast<char*>(bytes.data()));
    bgr = cv::imdecode(raw, cv::IMREAD_COLOR);
  } catch (const cv::Exception& e) {
    // Said in traind's words: OpenCV's text is an internal assertion.
    if (absl::StrContains(e.err, "CV_IO_MAX_IMAGE_PIXELS")) {
      return absl::InvalidArgumentError(
          "image larger than the 100-megapixel limit (by its header)");
    }
    return absl::InvalidArgumentError("not a decodable image (its data is damaged)");
  }
  if (bgr.empty()) return absl::InvalidArgumentError("not a decodable image");
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return ResizeSquare(rgb, size);
}

}  // namespace

absl::StatusOr<cv::Mat> DecodeImage(const std::string& path, int size) {
  constexpr uintmax_t kMaxFileBytes = uintmax_t{64} << 20;
  std::error_code ec;
  const uintmax_t bytes = std::filesystem::file_size(path, ec);
  if (!ec && bytes > kMaxFileBytes) {
    return absl::DataLossError(absl::StrCat("cannot decode ", path, ": ", bytes,
                                            " bytes, more than the 64 MiB limit"));
  }
  auto content = ReadFile(path);
  if (!content.ok()) {
    return absl::DataLossError(absl::StrCat("cannot decode ", path, ": ",
                                            content.status().message()));
  }
  auto img = Decode(*content, size);
  if (!img.ok()) {
    return absl::DataLossError(absl::StrCat("cannot decode ", path, ": ", img.status().message()));
  }
  return img;
}

absl::StatusOr<cv::Mat> DecodeImageBytes(const std::string& bytes, int size) {
  return Decode(bytes, size);
}

DecodedImageCache& DecodedImageCache::Global() {
  static auto* cache = new DecodedImageCache(size_t{2} << 30);
  return *cache;
}

cv::Mat DecodedImageCache::Find(const std::string& path, int size, int64_t file_size,
                                int64_t mtime_ns) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find({path, size});
  if (it == entries_.end() || it->second.file_size != file_size ||
      it->second.mtime_ns != mtime_ns) {
    return cv::Mat();
  }
  ++hits_;
  return it->second.image;
}

void DecodedImageCache::Insert(const std::string& path, int size, int64_t file_size,
                               int64_t mtime_ns, const cv::Mat& image) {
  const size_t bytes = image.total() * image.elemSize();
  absl::MutexLock lock(&mu_);
  auto key = std::make_pair(path, size);
  auto it = entries_.find(key);
  if (it != entries_.end()) {
    bytes_ -= it->second.image.total() * it->second.image.elemSize();
    it->second = Entry{file_size, mtime_ns, image};
  } else {
    entries_.emplace(key, Entry{file_size, mtime_ns, image});
    order_.push_back(key);
  }
  bytes_ += bytes;
  while (bytes_ > max_bytes_ && !order_.empty()) {
    auto old = entries_.find(order_.front());
    if (old != entries_.end()) {
      bytes_ -= old->second.image.total() * old->second.image.elemSize();
      entries_.erase(old);
    }
    order_.pop_front();
  }
}

int64_t DecodedImageCache::hits() {
  absl::MutexLock lock(&mu_);
  return hits_;
}

size_t DecodedImageCache::bytes() {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

DecodedSet DecodeImages(const std::vector<ImageRecord>& records, int size,
                        int threads, std::vector<std::string>* warnings,
                        DecodedImageCache* cache) {
  std::vector<cv::Mat> images(records.size());
  std::vector<std::string> errors(records.size());
  std::atomic<size_t> next{0};
  auto decode = [&](size_t i) {
    std::error_code ec;
    int64_t file_size = -1, mtime = 0;
    if (cache) {
      file_size = static_cast<int64_t>(fs::file_size(records[i].path, ec));
      mtime = fs::last_write_time(records[i].path, ec).time_since_epoch().count();
      if (!ec) {
        images[i] = cache->Find(records[i].path, size, file_size, mtime);
        if (!images[i].empty()) return;
      }
    }
    auto img = DecodeImage(records[i].path, size);
    if (img.ok()) {
      images[i] = std::move(*img);
      if (cache && !ec) cache->Insert(records[i].path, size, file_size, mtime, images[i]);
    } else {
      errors[i] = std::string(img.status().message());
    }
  };
  auto work = [&] {
    for (size_t i = next++; i < records.size(); i = next++) {
      // Nothing may leave a decode thread (it would end the process): an
      // error, out of memory included, skips the image with the reason.
      try {
        decode(i);
      } catch (const std::exception& e) {
        images[i] = cv::Mat();
        errors[i] = absl::StrCat(records[i].path, ": ", e.what());
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
