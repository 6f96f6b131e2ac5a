// The embedded SQLite store of jobs and their events.
//
// One connection, serialised by a mutex: the daemon is the only writer. Jobs
// are stored as serialised trainer.v1.Job messages (with a state column for
// queries); events as serialised JobEvent messages keyed by (job, seq).
//
// Thread-safety: all methods may be called from any thread.
#ifndef TRAIND_SERVER_JOBS_STORE_H_
#define TRAIND_SERVER_JOBS_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "trainer/v1/training_service.pb.h"

struct sqlite3;

namespace traind::jobs {

// A checkpoint file of a job, as recorded after it was written durably.
struct CheckpointRecord {
  std::string job_id;
  int epoch = 1;       // epoch the run continues with
  int next_batch = 0;  // first batch of `epoch` not yet trained
  int64_t global_step = 0;
  std::string path;
  std::string sha256;
  int64_t size = 0;
  int attempt = 1;
};

struct StoredJob {
  int64_t index = 0;  // submission order, from 1
  std::string request_id;
  trainer::v1::Job job;
};

class Store {
 public:
  // Opens (creating if needed) the database at `path` and applies schema
  // migrations.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& path);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // The index the next inserted job gets.
  absl::StatusOr<int64_t> NextIndex();
  absl::Status InsertJob(const StoredJob& job);
  // Job rows are written with synchronous=FULL: a state change that was
  // acknowledged survives a power cut, not only a crash.
  absl::Status UpdateJob(const trainer::v1::Job& job);
  // Removes the job's row, events and checkpoint records in one transaction.
  absl::Status DeleteJob(const std::string& job_id);
  // Every job, in submission order.
  absl::StatusOr<std::vector<StoredJob>> LoadJobs();

  absl::Status AppendEvent(const std::string& job_id,
                           const trainer::v1::JobEvent& event);
  // Events of `job_id` with seq > after_seq, in order, at most `limit`.
  absl::StatusOr<std::vector<trainer::v1::JobEvent>> ReadEvents(
      const std::string& job_id, int64_t after_seq, int limit);
  // Highest seq of `job_id`, 0 if none.
  absl::StatusOr<int64_t> LastSeq(const std::string& job_id);

  // Checkpoint records (synchronous=FULL).
  absl::Status InsertCheckpoint(const CheckpointRecord& checkpoint);
  absl::Status DeleteCheckpoint(const std::string& job_id, const std::string& path);
  // The job's checkpoints, newest (highest global step) first.
  absl::StatusOr<std::vector<CheckpointRecord>> ListCheckpoints(const std::string& job_id);

  // PRAGMA integrity_check: OK, or DATA_LOSS with SQLite's findings.
  absl::Status IntegrityCheck();

 private:
  explicit Store(sqlite3* db) : db_(db) {}
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Migrate() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs `body` with synchronous=FULL, then back to NORMAL.
  template <typename F>
  absl::Status Durably(F&& body) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_STORE_H_
