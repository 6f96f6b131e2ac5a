#include "server/jobs/follow.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/spec.h"

namespace traind::jobs {

EventFollower::EventFollower(EventLog* log, std::string job_id, int64_t after_seq, Hooks hooks,
                             std::function<void()> wake)
    : log_(log), job_id_(std::move(job_id)), hooks_(std::move(hooks)), cursor_(after_seq) {
  // Subscribed before the first read, so no event can slip in between.
  subscription_ = log_->Subscribe(job_id_, std::move(wake));
  // A finished job replayed from its end has nothing more to give.
  ended_ = log_->Ended(job_id_) && cursor_ >= log_->LastSeq(job_id_);
}

EventFollower::~EventFollower() {
  log_->Unsubscribe(subscription_);
  if (hooks_.release) hooks_.release();
}

absl::StatusOr<EventFollower::Step> EventFollower::Next(int limit) {
  Step step;
  if (ended_) {
    step.end = true;
    return step;
  }
  auto events = log_->Read(job_id_, cursor_, limit);
  if (!events.ok()) return events.status();
  for (auto& e : *events) {
    cursor_ = e.seq();
    const bool terminal = e.has_state() && IsTerminal(e.state().state());
    step.events.push_back(std::move(e));
    if (terminal) {
      ended_ = step.end = true;
      return step;
    }
  }
  if (!step.events.empty()) return step;
  // Nothing new: the daemon is stopping, or wait.
  if (hooks_.stopping()) {
    return absl::UnavailableError(absl::StrCat(
        "traind is shutting down; reconnect with after_seq=", cursor_, " to resume"));
  }
  return step;
}

absl::StatusOr<std::unique_ptr<WeightsReader>> WeightsReader::Open(
    const std::string& path, int64_t size, std::string sha256, trainer::v1::WeightsFormat format,
    int64_t offset) {
  if (offset < 0 || offset > size) {
    return absl::InvalidArgumentError(
        absl::StrCat("offset: ", offset, " is outside the file's ", size, " bytes"));
  }
  std::unique_ptr<WeightsReader> r(new WeightsReader());
  r->path_ = path;
  r->in_.open(path, std::ios::binary);
  if (!r->in_) return absl::DataLossError(absl::StrCat("cannot open ", path));
  r->in_.seekg(offset);
  r->offset_ = offset;
  r->header_.set_total_size(size);
  r->header_.set_sha256(std::move(sha256));
  r->header_.set_format(format);
  return r;
}

absl::Status WeightsReader::Seek(int64_t offset) {
  if (offset < 0 || offset > header_.total_size()) {
    return absl::InvalidArgumentError(absl::StrCat("offset: ", offset, " is outside the file's ",
                                                   header_.total_size(), " bytes"));
  }
  in_.clear();
  in_.seekg(offset);
  offset_ = offset;
  return absl::OkStatus();
}

absl::StatusOr<std::string> WeightsReader::Next(int64_t max_bytes) {
  const int64_t want =
      std::min({kChunkBytes, std::max<int64_t>(max_bytes, 0), header_.total_size() - offset_});
  std::string chunk(static_cast<size_t>(want), '\0');
  in_.read(chunk.data(), want);
  if (in_.gcount() != want) {
    return absl::DataLossError(
        absl::StrCat("weights file ", path_, " shrank while being sent"));
  }
  offset_ += want;
  return chunk;
}

}  // namespace traind::jobs
