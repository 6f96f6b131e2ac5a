// The per-job event log: sequence numbers, storage, a recent tail in memory,
// and wake-ups for the streams that follow a job.
//
// Every event gets the next per-job sequence number (1, 2, ... with no gap,
// across restarts) and is stored before anyone can read it: a reader never
// sees a seq that a crash could take back. The newest events of each job are
// also kept in memory, so live followers do not read SQLite.
//
// Thread-safety: all methods may be called from any thread. The log has its
// own locks; appending (a SQLite write) never holds a lock that readers of
// job state (GetJob, ListJobs) take. Wake callbacks run on the appending
// thread, outside every lock of the log, and must not block.
#ifndef TRAIND_SERVER_JOBS_EVENT_LOG_H_
#define TRAIND_SERVER_JOBS_EVENT_LOG_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/jobs/store.h"
#include "trainer/v1/training_service.pb.h"

namespace traind::jobs {

class EventLog {
 public:
  // Events kept in memory per job (the newest ones).
  static constexpr size_t kTail = 2048;

  explicit EventLog(Store* store) : store_(store) {}
  EventLog(const EventLog&) = delete;
  EventLog& operator=(const EventLog&) = delete;

  // Makes `job_id` known with its stored last seq (recovery, submission);
  // `ended`: its last event is its terminal state.
  void Open(const std::string& job_id, int64_t last_seq, bool ended) ABSL_LOCKS_EXCLUDED(mu_);
  // Forgets a deleted job; its followers are woken and find it gone.
  void Forget(const std::string& job_id) ABSL_LOCKS_EXCLUDED(mu_);

  // Stamps `event` with the next seq and the time, stores it, then makes it
  // readable and wakes the job's followers. Returns the seq; on a failed
  // write nothing becomes readable and the seq is not used.
  absl::StatusOr<int64_t> Append(const std::string& job_id, trainer::v1::JobEvent event)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Up to `limit` events with seq > after_seq, in order. NOT_FOUND for an
  // unknown job.
  absl::StatusOr<std::vector<trainer::v1::JobEvent>> Read(const std::string& job_id,
                                                          int64_t after_seq, int limit)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The job's last seq, 0 for none (or an unknown job).
  int64_t LastSeq(const std::string& job_id) ABSL_LOCKS_EXCLUDED(mu_);
  // The job's readable events end with its terminal state event: nothing
  // follows it. A follower past it is done.
  bool Ended(const std::string& job_id) ABSL_LOCKS_EXCLUDED(mu_);

  // Calls `wake` after every event appended to `job_id` and at Close or
  // Forget, until Unsubscribe. Returns the subscription's id.
  int64_t Subscribe(const std::string& job_id, std::function<void()> wake)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Unsubscribe(int64_t subscription) ABSL_LOCKS_EXCLUDED(mu_);
  // Wakes every subscriber (shutdown, stream time limits).
  void WakeAll() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // What mu_ guards of one job's log, reached only through Held (which
  // requires mu_, checked by the thread-safety build).
  struct Logged {
    int64_t last_seq = 0;
    bool ended = false;
    std::deque<trainer::v1::JobEvent> tail;
  };
  class JobLog {
   public:
    // Serialises appends of one job: seq order is storage order.
    absl::Mutex append_mu;

   private:
    friend class EventLog;
    Logged logged_;
  };
  Logged& Held(JobLog& log) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return log.logged_; }
  struct Subscriber {
    std::string job_id;
    std::function<void()> wake;
  };
  std::shared_ptr<JobLog> Find(const std::string& job_id) ABSL_LOCKS_EXCLUDED(mu_);
  void Wake(const std::string& job_id) ABSL_LOCKS_EXCLUDED(mu_);

  Store* const store_;
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<JobLog>> jobs_ ABSL_GUARDED_BY(mu_);
  std::map<int64_t, Subscriber> subscribers_ ABSL_GUARDED_BY(mu_);
  int64_t next_subscription_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_EVENT_LOG_H_
