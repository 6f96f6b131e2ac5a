// Folder-per-class datasets: scanning in ImageFolder order and the seeded split (the declarations are in data.h).
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

}  // namespace traind::train
