// JobManager: a finished job's files (its weights, and its deletion).
#include "server/jobs/job_manager.h"

#include <algorithm>
#include <filesystem>
#include <string>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "server/jobs/job_entry.h"
#include "common/sha256.h"
#include "common/spec.h"

namespace traind::jobs {

absl::StatusOr<std::string> JobManager::WeightsPath(const std::string& id,
                                                    trainer::v1::WeightsFormat format, int trial,
                                                    const Caller& caller) {
  auto entry = Find(id, caller);
  if (!entry) return NoJob(id);
  {
    absl::MutexLock lock(&mu_);
    if (Held(*entry).job.state() != trainer::v1::SUCCEEDED) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", id, " is ", trainer::v1::JobState_Name(Held(*entry).job.state()),
          "; weights exist only for SUCCEEDED jobs"));
    }
    const auto& trials = Held(*entry).job.trials();
    if (trial != 0 &&
        std::none_of(trials.begin(), trials.end(),
                     [trial](const trainer::v1::TrialResult& t) { return t.trial() == trial; })) {
      return absl::InvalidArgumentError(absl::StrCat(
          "trial: job ", id, " has no finished trial ", trial,
          Held(*entry).job.spec().kind() == trainer::v1::SWEEP ? "" : " (it is not a sweep)"));
    }
  }
  std::string path = layout_.Weights(id, format, trial);
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    return absl::DataLossError(absl::StrCat("weights of ", id, " are missing: ", path));
  }
  return path;
}

absl::StatusOr<JobManager::WeightsFile> JobManager::Weights(
    const std::string& id, trainer::v1::WeightsFormat format, int trial, const Caller& caller) {
  auto path = WeightsPath(id, format, trial, caller);
  if (!path.ok()) return path.status();
  WeightsFile file;
  file.path = *std::move(path);
  std::error_code ec;
  file.size = static_cast<int64_t>(fs::file_size(file.path, ec));
  if (ec) return absl::DataLossError(absl::StrCat("weights of ", id, " are missing: ", file.path));
  auto sha = Sha256File(file.path);
  if (!sha.ok()) return sha.status();
  file.sha256 = *sha;
  return file;
}

absl::StatusOr<std::unique_ptr<WeightsReader>> JobManager::OpenWeights(
    const std::string& id, trainer::v1::WeightsFormat format, int trial, int64_t offset,
    const Caller& caller) {
  if (!trainer::v1::WeightsFormat_IsValid(format)) {
    return absl::InvalidArgumentError("format: unknown weights format");
  }
  if (format == trainer::v1::WEIGHTS_FORMAT_UNSPECIFIED) format = trainer::v1::PTH;
  if (trial < 0) return absl::InvalidArgumentError("trial: must be >= 0");
  auto file = Weights(id, format, trial, caller);
  if (!file.ok()) return file.status();
  return WeightsReader::Open(file->path, file->size, file->sha256, format, offset);
}

absl::StatusOr<int64_t> JobManager::Delete(const std::string& id, const Caller& caller) {
  absl::MutexLock submitting(&submit_mu_);  // no job starts from it meanwhile
  auto entry = Find(id, caller);
  if (!entry) return NoJob(id);
  absl::MutexLock io(&entry->io_mu);
  {
    absl::MutexLock lock(&mu_);
    // A paused job holds nothing but its files.
    const JobState state = Held(*entry).job.state();
    if (!IsTerminal(state) && state != trainer::v1::PAUSED) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", id, " is ", trainer::v1::JobState_Name(state),
          "; only a finished or paused job can be deleted (cancel or pause it first)"));
    }
    for (const auto& [other_id, other] : jobs_) {
      if (!IsTerminal(Held(*other).job.state()) && Held(*other).job.spec().from_job() == id) {
        return absl::FailedPreconditionError(absl::StrCat(
            "job ", other_id, " starts from the weights of ", id, " and has not ended"));
      }
    }
  }
  // Rows first: a crash in between leaves files without rows, never rows
  // pointing at missing files.
  if (auto st = store_->DeleteJob(id); !st.ok()) return st;
  int64_t freed = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(layout_.JobDir(id), ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) freed += static_cast<int64_t>(it->file_size(ec));
  }
  fs::remove_all(layout_.JobDir(id), ec);
  fs::remove_all(layout_.RunsDir(id), ec);
  {
    absl::MutexLock lock(&mu_);
    jobs_.erase(id);
    by_index_.erase(std::remove(by_index_.begin(), by_index_.end(), entry), by_index_.end());
    for (auto it = request_ids_.begin(); it != request_ids_.end();) {
      it = it->second == id ? request_ids_.erase(it) : std::next(it);
    }
  }
  events_.Forget(id);
  return freed;
}

}  // namespace traind::jobs
