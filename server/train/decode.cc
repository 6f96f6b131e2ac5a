// Decoding: formats by signature, decode + resize, the decoded-image cache (the declarations are in data.h).
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

}  // namespace traind::train
