// Folder-per-class datasets: scanning in torchvision ImageFolder order, the
// seeded split, decode + resize once into memory, per-epoch augmentation and a
// multi-threaded batch loader.
//
// Results depend only on the seed, never on the number of loader threads:
// every sample's augmentation draws from its own generator, seeded by (seed,
// epoch, sample index).
#ifndef TRAIND_SERVER_TRAIN_DATA_H_
#define TRAIND_SERVER_TRAIN_DATA_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <torch/torch.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/train/config.h"

namespace traind::train {

struct ImageRecord {
  std::string path;
  int64_t label = 0;
};

struct DatasetIndex {
  std::vector<std::string> classes;  // label order
  std::vector<ImageRecord> train;
  std::vector<ImageRecord> validation;
};

// True for the file extensions torchvision's ImageFolder accepts, any case.
bool HasImageExtension(const std::string& filename);

// Lists a folder-per-class tree as ImageFolder does: classes sorted by
// folder name minus `exclude`, files sorted by path within each class.
absl::StatusOr<DatasetIndex> ListImageFolder(
    const std::string& dir, const std::vector<std::string>& exclude);

// Scans config.dir: uses its train/ and val/ folders when both exist,
// otherwise splits like torch.utils.data.random_split with a generator seeded
// with config.seed and n_train = floor(n * train_fraction).
absl::StatusOr<DatasetIndex> ScanDataset(const DataConfig& config);

// Decoded, resized RGB images (CV_8UC3, size x size) with their labels.
struct DecodedSet {
  std::vector<cv::Mat> images;
  std::vector<int64_t> labels;
};

// Decoded, resized images shared by every run in the process (jobs and sweep
// trials on the same files and image size decode them once). An entry is
// used only while its file keeps the size and modification time it had when
// decoded. Bounded in bytes; the oldest entries go first.
//
// Thread-safety: all methods may be called from any thread.
class DecodedImageCache {
 public:
  explicit DecodedImageCache(size_t max_bytes) : max_bytes_(max_bytes) {}
  // The process-wide cache (2 GiB).
  static DecodedImageCache& Global();

  // Returns the cached image or an empty Mat.
  cv::Mat Find(const std::string& path, int size, int64_t file_size, int64_t mtime_ns)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Insert(const std::string& path, int size, int64_t file_size, int64_t mtime_ns,
              const cv::Mat& image) ABSL_LOCKS_EXCLUDED(mu_);
  int64_t hits() ABSL_LOCKS_EXCLUDED(mu_);
  size_t bytes() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Entry {
    int64_t file_size;
    int64_t mtime_ns;
    cv::Mat image;
  };
  const size_t max_bytes_;
  absl::Mutex mu_;
  std::map<std::pair<std::string, int>, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<std::string, int>> order_ ABSL_GUARDED_BY(mu_);
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
};

// Decodes and resizes every record on `threads` threads, through `cache`
// when given. Unreadable images are left out and described in `warnings`.
DecodedSet DecodeImages(const std::vector<ImageRecord>& records, int size,
                        int threads, std::vector<std::string>* warnings,
                        DecodedImageCache* cache = nullptr);

// Decodes and resizes one image to size x size RGB.
absl::StatusOr<cv::Mat> DecodeImage(const std::string& path, int size);
// The same from encoded bytes (JPEG, PNG, ...); INVALID_ARGUMENT when they do
// not decode.
absl::StatusOr<cv::Mat> DecodeImageBytes(const std::string& bytes, int size);

// The augmentation ops at fixed parameters, on CV_8UC3 RGB images, each
// meant to match torchvision's functional op on a PIL image.
cv::Mat ResizeSquare(const cv::Mat& rgb, int size);
cv::Mat HorizontalFlip(const cv::Mat& img);
// Counter-clockwise by `degrees` about the centre, nearest, zero fill.
cv::Mat Rotate(const cv::Mat& img, double degrees);
cv::Mat AdjustBrightness(const cv::Mat& img, double factor);
cv::Mat AdjustContrast(const cv::Mat& img, double factor);
cv::Mat AdjustSaturation(const cv::Mat& img, double factor);
// Shift of the hue by `shift` turns, in [-0.5, 0.5].
cv::Mat AdjustHue(const cv::Mat& img, double shift);

// The recipe's random augmentation of one RGB image: horizontal flip,
// rotation, colour jitter (ops in random order).
cv::Mat Augment(const cv::Mat& rgb, const AugmentConfig& config,
                std::mt19937_64& rng);

// Writes ImageNet-normalised floats of an RGB image into an HWC buffer.
void NormalizeInto(const cv::Mat& rgb, float* hwc);

struct Batch {
  torch::Tensor images;  // float [B, 3, S, S], channels-last memory
  torch::Tensor labels;  // int64 [B]
};

// Produces the batches of one pass over `set` in `order`. Used by one
// consumer thread.
class BatchLoader {
 public:
  struct Options {
    int batch_size = 32;
    bool augment = false;
    AugmentConfig augmentation;
    uint64_t seed = 0;   // with epoch, seeds each sample's augmentation
    int64_t epoch = 0;
    int threads = 2;
    // Batches prepared ahead on `threads` background threads. 0: each batch
    // is prepared when asked for, its samples spread over LibTorch's
    // intra-op threads; on a machine with no spare core this is faster, as
    // background work would stall the training step's threads.
    int prefetch = 0;
  };
  BatchLoader(const DecodedSet& set, std::vector<int64_t> order,
              Options options);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  int64_t num_batches() const;
  // Returns the next batch, or false after the last or on an error.
  bool Next(Batch* batch);
  // Sticky: why batches stopped early (a LibTorch or OpenCV error, out of
  // memory, in a loader thread), or OK.
  absl::Status status() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_DATA_H_
