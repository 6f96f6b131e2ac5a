// The lifecycle of jobs: validation, the store, the queue, worker threads,
// cancellation and recovery after a restart. Training goes through an Engine
// (engine.h); events through the EventLog (event_log.h); streams follow a
// job through an EventFollower and download through a WeightsReader
// (follow.h), so every front end (gRPC, HTTP) shares one copy of that logic.
//
// Every event of a job gets the next per-job sequence number and is
// persisted before anyone can read it, so a watcher that resumes from the
// last number it saw misses nothing and sees nothing twice.
//
// Thread-safety: all public methods may be called from any thread. Training
// runs on the manager's own worker threads, never on the caller's. Locks:
// `mu_` guards the in-memory jobs and the queue and is never held across
// SQLite or file I/O, so GetJob and ListJobs never wait for a disk flush.
// Each job's `io_mu` orders its state changes with their writes (lock order:
// submit_mu_, then a job's io_mu, then mu_).
#ifndef TRAIND_SERVER_JOBS_JOB_MANAGER_H_
#define TRAIND_SERVER_JOBS_JOB_MANAGER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/jobs/caller.h"
#include "server/jobs/engine.h"
#include "server/jobs/event_log.h"
#include "server/jobs/follow.h"
#include "server/jobs/layout.h"
#include "server/jobs/scheduler.h"
#include "server/jobs/store.h"
#include "server/jobs/wait_queue.h"
#include "trainer/v1/training_service.pb.h"

namespace traind::jobs {

class JobManager {
 public:
  struct Options {
    // Holds the SQLite file (traind.db) and per-job folders (jobs/<id>/).
    std::string state_dir;
    // Dataset names resolve inside this folder.
    std::string data_root;
    // pretrained_file names resolve inside this folder.
    std::string weights_root;
    // Slots: jobs trained at the same time, or local ranks (a
    // LOCAL_PROCESSES job of world size N takes N; see JobSlots).
    int workers = 1;
    // Intra-op threads of a job whose spec does not say.
    int threads_per_job = 2;
    // Default of a spec's adaptive_threads.
    bool adaptive_threads = false;
    // Default of a spec's winograd.
    bool winograd = false;
    // Checkpoints kept per job (the newest ones); at least 1.
    int keep_checkpoints = 2;
    // A job whose runs end this many times in a row (daemon crashes) without
    // writing a new checkpoint is FAILED instead of run again.
    int max_attempts_without_progress = 3;
    // Queued jobs allowed per user and in all; more are RESOURCE_EXHAUSTED.
    int max_queued_per_user = 100;
    int max_queued = 1000;
    // Open followers (watch streams) per user; more are RESOURCE_EXHAUSTED.
    int max_streams_per_user = 16;
    // Quotas and who may raise priorities (SetPolicy replaces it).
    Policy policy;
    // What trains the jobs (required).
    std::shared_ptr<Engine> engine;
  };

  // Opens the store, re-queues jobs that were running when the daemon
  // stopped, and starts the workers.
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(Options options);
  ~JobManager();
  JobManager(const JobManager&) = delete;
  JobManager& operator=(const JobManager&) = delete;

  // Validates `spec` completely, then stores and queues it. Returns the job
  // id; a repeated non-empty `request_id` returns the first call's job.
  absl::StatusOr<std::string> Submit(trainer::v1::JobSpec spec,
                                     const std::string& request_id,
                                     const Caller& caller = Caller());
  absl::StatusOr<trainer::v1::Job> GetJob(const std::string& id,
                                          const Caller& caller = Caller());

  struct Page {
    std::vector<trainer::v1::Job> jobs;
    std::string next_page_token;
  };
  // `full`: every field (JobView FULL); otherwise without evaluation,
  // class names and trials (BASIC).
  absl::StatusOr<Page> ListJobs(int page_size, const std::string& page_token,
                                const std::vector<trainer::v1::JobState>& states,
                                const Caller& caller = Caller(), bool full = false);

  // Best effort: a queued job is CANCELLED at once, a running one goes to
  // CANCELLING and stops at its next batch boundary.
  absl::StatusOr<trainer::v1::Job> Cancel(const std::string& id,
                                          const Caller& caller = Caller());

  // A queued job is PAUSED at once; a running one writes a checkpoint at
  // its next batch boundary, gives its slots back and is PAUSED then. A
  // paused job stays paused across restarts. FAILED_PRECONDITION for a job
  // that has ended.
  absl::StatusOr<trainer::v1::Job> Pause(const std::string& id, const Caller& caller = Caller());
  // Queues a PAUSED job again; it continues from its checkpoint.
  absl::StatusOr<trainer::v1::Job> Resume(const std::string& id, const Caller& caller = Caller());
  // Changes the priority of a job that has not ended and reschedules
  // (which may preempt). PERMISSION_DENIED above the caller's max_priority.
  absl::StatusOr<trainer::v1::Job> SetPriority(const std::string& id,
                                               trainer::v1::Priority priority,
                                               const Caller& caller = Caller());
  // Replaces the quotas and priority rights; the queue is reconsidered.
  void SetPolicy(Policy policy) ABSL_LOCKS_EXCLUDED(mu_);

  // Up to `limit` events of job `id` with seq > after_seq.
  absl::StatusOr<std::vector<trainer::v1::JobEvent>> ReadEvents(
      const std::string& id, int64_t after_seq, int limit, const Caller& caller = Caller());

  // Waits until job `id` has an event after `after_seq`, the manager shuts
  // down, or `timeout` passes. Returns false only on timeout.
  bool WaitForEvents(const std::string& id, int64_t after_seq,
                     absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_);

  // Replays job `id`'s events after `after_seq`, then follows it live; see
  // EventFollower. `wake` is called (on another thread, must not block)
  // whenever the follower may have more to give. Counts against the caller's
  // open streams until the follower is destroyed. INVALID_ARGUMENT for an
  // after_seq outside [0, last seq].
  absl::StatusOr<std::unique_ptr<EventFollower>> Follow(const std::string& id,
                                                        int64_t after_seq,
                                                        const Caller& caller,
                                                        std::function<void()> wake);

  // Wakes every follower (they check their streams' time limits).
  void WakeFollowers() { events_.WakeAll(); }

  // A reader of job `id`'s weights from byte `offset` (see Weights).
  absl::StatusOr<std::unique_ptr<WeightsReader>> OpenWeights(const std::string& id,
                                                             trainer::v1::WeightsFormat format,
                                                             int trial, int64_t offset,
                                                             const Caller& caller = Caller());

  struct WeightsFile {
    std::string path;
    int64_t size = 0;
    std::string sha256;
  };
  // The final weights of a SUCCEEDED job (for a sweep, its best trial's, or
  // trial `trial`'s when not 0); FAILED_PRECONDITION for an unfinished job.
  absl::StatusOr<WeightsFile> Weights(const std::string& id,
                                      trainer::v1::WeightsFormat format, int trial = 0,
                                      const Caller& caller = Caller());

  struct Gauges {
    int queued = 0;
    int running = 0;
    int slots = 0;         // --workers
    int slots_in_use = 0;  // held by jobs on workers, stopping ones included
    // Running jobs' latest batch throughput, by job id.
    std::vector<std::pair<std::string, double>> images_per_second;
  };
  Gauges Snapshot() ABSL_LOCKS_EXCLUDED(mu_);

  // The final weights' path of a SUCCEEDED job (or of one of its finished
  // trials), checked to exist but not read; DATA_LOSS when it is missing.
  absl::StatusOr<std::string> WeightsPath(const std::string& id,
                                          trainer::v1::WeightsFormat format, int trial,
                                          const Caller& caller = Caller());

  // Removes a finished job: rows, events, checkpoints, weights. Returns the
  // bytes freed. FAILED_PRECONDITION for a job that has not ended.
  absl::StatusOr<int64_t> Delete(const std::string& id, const Caller& caller = Caller());

  // Stops taking work and wakes every waiter; running jobs write a checkpoint
  // at their next batch boundary and continue from it after a restart.
  // Idempotent.
  // Followers end with UNAVAILABLE.
  void BeginShutdown() ABSL_LOCKS_EXCLUDED(mu_);
  bool shutting_down() ABSL_LOCKS_EXCLUDED(mu_);
  // BeginShutdown, then waits for the workers to finish.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Entry;
  struct EntryState;
  class Sink;
  friend class Sink;

  JobManager(Options options, std::unique_ptr<Store> store);
  absl::Status Recover() ABSL_LOCKS_EXCLUDED(mu_);
  void WorkerLoop() ABSL_LOCKS_EXCLUDED(mu_);
  void RunJob(const std::shared_ptr<Entry>& entry) ABSL_LOCKS_EXCLUDED(mu_);
  // Runs the job's engine call; the job's outcome.
  absl::Status RunEngine(const std::shared_ptr<Entry>& entry, const trainer::v1::JobSpec& spec,
                         Sink* sink) ABSL_LOCKS_EXCLUDED(mu_);
  // The newest checkpoint of `entry` whose file matches its recorded digest;
  // warns about each damaged one it passes over. Empty path when none.
  CheckpointRecord PickCheckpoint(const std::shared_ptr<Entry>& entry) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status RecordCheckpoint(Entry& entry, const CheckpointRecord& checkpoint)
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::string> InitialWeightsPath(const trainer::v1::JobSpec& spec,
                                                 const Caller& caller = Caller());

  // Appends an event to the job's log (stored, then readable). A failed
  // write stops the job and is reported when it has stopped.
  void Emit(Entry& entry, trainer::v1::JobEvent event) ABSL_LOCKS_EXCLUDED(mu_);
  // Writes the job's current row (synchronous=FULL). The caller holds
  // entry.io_mu, which orders row writes with the changes they carry.
  void Persist(Entry& entry) ABSL_LOCKS_EXCLUDED(mu_);
  // Changes the state in memory, persists it and emits the state event.
  // The caller holds entry.io_mu and not mu_.
  void SetState(Entry& entry, trainer::v1::JobState state, const std::string& reason)
      ABSL_LOCKS_EXCLUDED(mu_);
  // After a crash: the global step the job's last attempt reached, when
  // that is further than any attempt before it (or its checkpoint); else 0.
  int64_t FurthestStep(Entry& entry) ABSL_LOCKS_EXCLUDED(mu_);
  // Records a failed write; the job stops at its next batch.
  void StoreFailed(Entry& entry, const absl::Status& status) ABSL_LOCKS_EXCLUDED(mu_);
  // Starts, preempts and places waiting jobs as the scheduler decides
  // (scheduler.h). Called whenever its inputs change.
  void Reschedule() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Puts a QUEUED job without slots in the wait queue.
  void Enqueue(const std::shared_ptr<Entry>& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `entry` gives its slots back (it left its worker).
  void ReleaseSlots(Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether `caller` may give a job `priority` and `preemptible`.
  absl::Status CheckPriorityRights(const Caller& caller, trainer::v1::Priority priority,
                                   bool preemptible) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job, if `caller` may see it.
  std::shared_ptr<Entry> Find(const std::string& id, const Caller& caller = Caller())
      ABSL_LOCKS_EXCLUDED(mu_);
  // What `entry` keeps under mu_ (job_entry.h).
  EntryState& Held(Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job as callers see it.
  // full: every field; otherwise the BASIC view (no evaluation, class names
  // or trials).
  trainer::v1::Job View(Entry& entry, bool full = true) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  const Options options_;
  const JobLayout layout_;
  const std::unique_ptr<Store> store_;
  const std::shared_ptr<Engine> engine_;
  EventLog events_;

  // Serialises submissions and deletions (request ids, indexes, from_job).
  absl::Mutex submit_mu_ ABSL_ACQUIRED_BEFORE(mu_);

  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Entry>> by_index_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> request_ids_ ABSL_GUARDED_BY(mu_);
  // QUEUED jobs without slots, in no order (the scheduler orders them).
  WaitQueue<Entry> queue_ ABSL_GUARDED_BY(mu_);
  // Jobs holding slots (on_worker), in the order they got them.
  std::vector<std::shared_ptr<Entry>> holding_ ABSL_GUARDED_BY(mu_);
  // Jobs given slots, waiting for a worker thread to take them.
  std::deque<std::shared_ptr<Entry>> ready_ ABSL_GUARDED_BY(mu_);
  int64_t starts_ ABSL_GUARDED_BY(mu_) = 0;
  Policy policy_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> open_streams_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  std::vector<std::thread> workers_;

  int lock_fd_ = -1;  // flock on <state_dir>/LOCK, held for the manager's life
};

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_JOB_MANAGER_H_
