// What a stream needs from the core, whatever the front end: following one
// job's events (replay, then live, with the end-of-stream rule) and reading
// one weights file in chunks from an offset.
//
// Thread-safety: one follower or reader serves one stream; call it from one
// thread at a time. Its wake callback may run on any thread.
#ifndef TRAIND_SERVER_JOBS_FOLLOW_H_
#define TRAIND_SERVER_JOBS_FOLLOW_H_

#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/jobs/event_log.h"
#include "trainer/v1/training_service.pb.h"

namespace traind::jobs {

// The events of one job after a cursor. Made by JobManager::Follow.
class EventFollower {
 public:
  // How the job's side looks to the follower.
  struct Hooks {
    std::function<bool()> stopping;   // the daemon is shutting down
    std::function<void()> release;    // at destruction (the stream slot)
  };
  struct Step {
    std::vector<trainer::v1::JobEvent> events;
    // The stream is complete: the job ended and every event up to its end
    // has been given. Empty events and !end: wait for the wake callback.
    bool end = false;
  };

  EventFollower(EventLog* log, std::string job_id, int64_t after_seq, Hooks hooks,
                std::function<void()> wake);
  ~EventFollower();
  EventFollower(const EventFollower&) = delete;
  EventFollower& operator=(const EventFollower&) = delete;

  // The next events after cursor(), at most `limit`. NOT_FOUND when the job
  // was deleted, UNAVAILABLE when the daemon is shutting down and nothing
  // is left to give (reconnect with after_seq = cursor()).
  absl::StatusOr<Step> Next(int limit);
  // Seq of the last event given.
  int64_t cursor() const { return cursor_; }

 private:
  EventLog* const log_;
  const std::string job_id_;
  const Hooks hooks_;
  int64_t cursor_;
  bool ended_ = false;
  int64_t subscription_ = 0;
};

// One weights file, from an offset, in chunks. Made by
// JobManager::OpenWeights.
class WeightsReader {
 public:
  static constexpr int64_t kChunkBytes = 1 << 20;

  // Opens `path` (announced as `size` bytes with `sha256`) at `offset`.
  // INVALID_ARGUMENT for an offset outside the file, DATA_LOSS if it cannot
  // be opened.
  static absl::StatusOr<std::unique_ptr<WeightsReader>> Open(const std::string& path, int64_t size,
                                                             std::string sha256,
                                                             trainer::v1::WeightsFormat format,
                                                             int64_t offset);
  const trainer::v1::WeightsHeader& header() const { return header_; }
  int64_t offset() const { return offset_; }
  bool done() const { return offset_ >= header_.total_size(); }
  // Moves to `offset` (a ranged read); INVALID_ARGUMENT outside the file.
  absl::Status Seek(int64_t offset);
  // The next chunk (at most kChunkBytes, at most `max_bytes`) at offset(),
  // which then advances. DATA_LOSS if the file shrank while being read.
  absl::StatusOr<std::string> Next(int64_t max_bytes = kChunkBytes);

 private:
  WeightsReader() = default;
  std::string path_;
  std::ifstream in_;
  trainer::v1::WeightsHeader header_;
  int64_t offset_ = 0;
};

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_FOLLOW_H_
