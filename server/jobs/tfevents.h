// TensorBoard event files: a TFRecord stream (length, masked CRC-32C of the
// length, payload, masked CRC-32C of the payload; little-endian) of Event
// messages, file_version first, scalars after.
//
// Thread-compatible: one writer per file, used by one thread at a time.
#ifndef TRAIND_SERVER_JOBS_TFEVENTS_H_
#define TRAIND_SERVER_JOBS_TFEVENTS_H_

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace traind::jobs {

class EventFileWriter {
 public:
  // Creates `dir` and a new events.out.tfevents.<seconds>.<host>.<pid>.<n>
  // file in it, starting with the file_version record.
  static absl::StatusOr<std::unique_ptr<EventFileWriter>> Create(const std::string& dir);
  ~EventFileWriter();
  EventFileWriter(const EventFileWriter&) = delete;
  EventFileWriter& operator=(const EventFileWriter&) = delete;

  absl::Status AddScalar(const std::string& tag, int64_t step, double value,
                         double wall_time_seconds);
  // Pushes buffered records to the file (TensorBoard reads them then).
  absl::Status Flush();
  const std::string& path() const { return path_; }

 private:
  EventFileWriter(std::FILE* file, std::string path) : file_(file), path_(std::move(path)) {}
  absl::Status WriteRecord(const std::string& payload);

  std::FILE* file_;
  std::string path_;
};

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_TFEVENTS_H_
