// Which waiting jobs start, which running job makes room for a more urgent
// one, and why every other job waits. Pure: Decide sees the jobs, the slots
// and the policy and returns a decision; the job manager carries it out
// (job_manager.cc) and calls it again whenever something changes (a
// submission, a job ending, a priority change, a resume, a policy reload).
//
// The rules, in order:
// - A higher priority goes first. Among equal priorities the next slot goes
//   to the user with the fewest slots in use (counting the jobs ordered
//   ahead in this decision as if started), then to the job that has waited
//   longest. So a user with 18 queued trials and a user with one job
//   alternate; neither waits for the other's whole queue.
// - A user's running quotas (jobs, slots) hold that user's job back without
//   holding back anyone else's.
// - A job that does not fit takes the slots about to free (jobs already
//   checkpointing to stop) or else preempts: the cheapest set of running,
//   preemptible jobs of strictly lower priority (lowest priority first, a
//   single job that frees enough before several, the most recently started
//   first). Equal priorities never preempt each other, so nothing thrashes.
// - No backfill: once a job waits for capacity, the jobs after it wait too,
//   so a large job is not starved by a stream of small ones.
//
// Thread-safety: Decide is a pure function; Policy is immutable once built.
#ifndef TRAIND_SERVER_JOBS_SCHEDULER_H_
#define TRAIND_SERVER_JOBS_SCHEDULER_H_

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/v1/training_service.pb.h"

namespace traind::jobs {

// What one user may do. -1: no limit.
struct Limits {
  int max_running_jobs = -1;
  // Slots in use at once (see JobSlots).
  int max_slots = -1;
  // Jobs waiting (QUEUED) at once; a submission over it is refused.
  int max_queued_jobs = -1;
  // World size of one distributed job; a submission over it is refused.
  int max_world_size = -1;
  // The highest priority the user may give a job. Admins may give any.
  trainer::v1::Priority max_priority = trainer::v1::NORMAL;
  // Whether the user may submit non-preemptible jobs. Admins may.
  bool may_opt_out_of_preemption = false;
};

// The admin's policy: a default and per-user limits. The file is JSON:
//
//   {"default": {"max_running_jobs": 4, "max_slots": 4, "max_queued_jobs": 50,
//                "max_world_size": 8, "max_priority": "NORMAL",
//                "may_opt_out_of_preemption": false},
//    "users": {"alice": {"max_slots": 3}, "ops": {"max_priority": "URGENT"}}}
//
// A user's entry overrides the default's fields it names. "clusters" maps
// priorities onto the cluster schedulers' own mechanisms, for jobs whose
// spec does not set them:
//
//   "clusters": {"slurm_qos": {"HIGH": "high"}, "slurm_nice": {"LOW": 1000},
//                "kubernetes_priority_class": {"URGENT": "traind-urgent"}}
class Policy {
 public:
  Policy() = default;
  // INVALID_ARGUMENT naming the field that is wrong.
  static absl::StatusOr<Policy> Parse(std::string_view json);
  static absl::StatusOr<Policy> Load(const std::string& path);

  const Limits& For(const std::string& user) const;
  // Fills `dist`'s Slurm qos and nice, or Kubernetes priority_class, from
  // the mapping of `priority`, where the job's spec left them unset.
  void MapPriority(trainer::v1::Priority priority, trainer::v1::Distributed* dist) const;

 private:
  struct Parser;  // scheduler.cc, with the JSON library

  Limits default_;
  std::map<std::string, Limits> users_;
  std::map<trainer::v1::Priority, std::string> slurm_qos_;
  std::map<trainer::v1::Priority, int> slurm_nice_;
  std::map<trainer::v1::Priority, std::string> kube_priority_class_;
};

// The slots a job takes: the ranks it runs on this machine (a
// LOCAL_PROCESSES job of world size N takes N, at most `capacity`, so a job
// larger than the daemon takes all of it), else 1: the in-daemon worker of
// a world-size-1 job, a sweep (its trials share the job's threads), or a
// Slurm or Kubernetes job, whose ranks the cluster places.
int JobSlots(const trainer::v1::JobSpec& spec, int capacity);

// NORMAL for PRIORITY_UNSPECIFIED.
trainer::v1::Priority EffectivePriority(const trainer::v1::JobSpec& spec);

struct WaitingJob {
  std::string id;
  std::string user;
  trainer::v1::Priority priority = trainer::v1::NORMAL;
  int64_t order = 0;  // submission order: smaller waited longer
  int slots = 1;
};

struct RunningJob {
  std::string id;
  std::string user;
  trainer::v1::Priority priority = trainer::v1::NORMAL;
  int slots = 1;
  bool preemptible = true;
  int64_t started = 0;  // when its attempt started: larger is more recent
  // Already asked to stop (preempted, pausing, cancelling): its slots are
  // about to free and it is no one's victim again.
  bool stopping = false;
};

// Why a job waits. A decision places every waiting job, and few of them are
// looked at before the next decision, so the words are put together only
// when someone asks (Describe).
struct WaitReason {
  enum Kind {
    kNone,              // not waiting
    kRunningJobsQuota,  // `used` of its user's `limit` running jobs in use
    kSlotsQuota,        // `used` of its user's `limit` slots in use; it takes `slots`
    kBehind,            // `ahead` jobs before it wait for room (no backfill)
    kStopping,          // running jobs are stopping at a checkpoint to free its slots
    kNoRoom,            // `free` of `capacity` slots free, it takes `slots`;
                        // `ahead` 0: next in line
    kPreempting,        // running jobs are being preempted to make room for it
  };
  Kind kind = kNone;
  int used = 0, limit = 0, slots = 0, ahead = 0, free = 0, capacity = 0;
  // kStopping, kPreempting: the words, which name the running jobs (few
  // waiting jobs have these reasons, so they are put together at once).
  std::string text;
};

// What a user reads, e.g. "waiting: 3 of alice's 3 running slots in use"
// (`user`: the job's owner); empty for kNone.
std::string Describe(const WaitReason& reason, const std::string& user);

// Jobs by their index in Decide's arguments.
struct Decision {
  // Waiting jobs to start now, in order.
  std::vector<size_t> start;
  struct Preemption {
    size_t victim;   // in `running`
    size_t for_job;  // in `waiting`
  };
  std::vector<Preemption> preempt;
  struct Place {
    size_t job = 0;    // in `waiting`
    int position = 0;  // 1: the next to start
    WaitReason reason;
  };
  // Every waiting job that does not start, in the order they will.
  std::vector<Place> waiting;
};

// O(n log n) in the waiting jobs (the fair-share order keeps a heap of
// users per priority), O(running) more for each job that preempts.
Decision Decide(const std::vector<WaitingJob>& waiting, const std::vector<RunningJob>& running,
                int capacity, const Policy& policy);

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_SCHEDULER_H_
