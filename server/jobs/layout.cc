#include "server/jobs/layout.h"

#include <filesystem>

#include "absl/strings/str_cat.h"

namespace traind::jobs {
namespace fs = std::filesystem;

std::string JobLayout::Database() const { return (fs::path(state_dir_) / "traind.db").string(); }
std::string JobLayout::LockFile() const { return (fs::path(state_dir_) / "LOCK").string(); }
std::string JobLayout::JobsRoot() const { return (fs::path(state_dir_) / "jobs").string(); }

std::string JobLayout::JobDir(const std::string& id) const {
  return (fs::path(JobsRoot()) / id).string();
}

std::string JobLayout::CheckpointDir(const std::string& id) const {
  return (fs::path(JobDir(id)) / "checkpoints").string();
}

std::string JobLayout::Weights(const std::string& id, trainer::v1::WeightsFormat format,
                               int trial) const {
  const std::string stem = trial == 0 ? "weights" : absl::StrCat("trial-", trial);
  const char* ext = format == trainer::v1::SAFETENSORS ? ".safetensors" : ".pth";
  return (fs::path(JobDir(id)) / (stem + ext)).string();
}

std::string JobLayout::RunsDir(const std::string& id, int trial) const {
  fs::path dir = fs::path(state_dir_) / "runs" / id;
  if (trial != 0) dir /= absl::StrCat("trial-", trial);
  return dir.string();
}

}  // namespace traind::jobs
