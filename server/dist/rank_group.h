// The ranks of one attempt as a launcher started them: local child
// processes, or a Slurm job. The launching engine (launcher.h) polls the
// group while it relays rank 0's reports, and ends it.
//
// Thread-safety: a group is used by the one thread that started it.
#ifndef TRAIND_SERVER_DIST_RANK_GROUP_H_
#define TRAIND_SERVER_DIST_RANK_GROUP_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/train/config.h"

namespace traind::dist {

struct GroupState {
  bool running = true;
  // The first abnormal end seen (a rank killed, a node failed), naming it;
  // empty while every rank is fine. Set while others may still run.
  std::string loss;
  // A failure that running again would not mend (an image that cannot be
  // pulled): the job fails with it.
  std::string failure;
  // Ended by someone outside traind (scancel): the job is cancelled.
  std::string cancelled_outside;
  // Held back by the scheduler, and why (Slurm's PENDING reason); empty
  // when the ranks are placed.
  std::string waiting;
  // Scheduler news for the job's log (pending and why, where it runs); empty
  // when nothing changed.
  std::string note;
};

class RankGroup {
 public:
  // Ends any rank still running.
  virtual ~RankGroup() = default;
  virtual GroupState Poll() = 0;
  // Ends every rank now.
  virtual void Kill() = 0;
  // The scheduler's name for the attempt (Slurm job id, Kubernetes Job).
  virtual std::string scheduler_job() const { return ""; }
};

// How the daemon reaches the Kubernetes API (in a pod: the service
// account's token and CA, KUBERNETES_SERVICE_HOST/PORT) and what it runs.
struct KubeAccess {
  std::string api;         // https://host:port
  std::string token_file;
  std::string ca_file;
  std::string namespace_;
  std::string image;            // default rank image
  std::string worker_command;   // traind's path inside the image
  // A PersistentVolumeClaim with the datasets, mounted read-only in every
  // rank pod at data_mount (the daemon's --data-root); empty: none.
  std::string data_claim;
  std::string data_mount;
};

// What every launcher needs to start an attempt's ranks.
struct LaunchRequest {
  std::string job_name;      // for the scheduler's listings
  int world_size = 1;
  train::DistributedConfig dist;
  std::vector<std::string> env;  // the daemon's environment plus the control link's
  std::string worker_binary;
  std::vector<std::string> rank_wrapper;  // LOCAL_PROCESSES only
  std::string work_dir;      // the job's folder: batch scripts, scheduler logs
  int master_port = 0;
  // KUBERNETES only.
  KubeAccess kube;
  std::string attempt_secret;
};

absl::StatusOr<std::unique_ptr<RankGroup>> StartLocalRanks(const LaunchRequest& request);
absl::StatusOr<std::unique_ptr<RankGroup>> StartSlurmRanks(const LaunchRequest& request);
// A Secret (the attempt's secret), a headless Service (rank 0's name) and an
// Indexed Job, created through the API; deleted when the group ends.
absl::StatusOr<std::unique_ptr<RankGroup>> StartKubernetesRanks(const LaunchRequest& request);

// A Slurm attempt that outlived a control plane restart: its id and secret
// and the Slurm job running its ranks, kept in the job's folder while it runs
// (the state directory is the daemon's alone).
struct SlurmAttemptRecord {
  std::string attempt;
  std::string secret;
  std::string slurm_job;
  // The control address its ranks dial (TRAIND_CONTROL); empty in records
  // from before it was kept.
  std::string control;
};
std::string SlurmAttemptPath(const std::string& work_dir);
absl::Status SaveSlurmAttempt(const std::string& work_dir, const SlurmAttemptRecord& record);
// The record if one is kept and its Slurm job is still pending or running
// (and then the group following it); the stale record is removed otherwise.
struct ReattachedSlurm {
  SlurmAttemptRecord record;
  std::unique_ptr<RankGroup> group;
};
std::optional<ReattachedSlurm> ReattachSlurmRanks(const std::string& work_dir,
                                                  const std::vector<std::string>& env);
// The kept record, if its Slurm job is still pending or running; changes
// nothing.
std::optional<SlurmAttemptRecord> PeekSlurmAttempt(const std::string& work_dir,
                                                   const std::vector<std::string>& env);
// The Slurm job id a group started (empty for other launchers).
std::string SlurmJobOf(const RankGroup& group);

// Runs argv with env; its exit code and output. For scheduler commands.
struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         const std::vector<std::string>& env);

// Starts argv with env; the child dies with the thread that started it.
absl::StatusOr<int> SpawnChild(const std::vector<std::string>& argv,
                               const std::vector<std::string>& env);

// `name` resolved on PATH when it has no slash.
std::string FindOnPath(const std::string& name);

}  // namespace traind::dist

#endif  // TRAIND_SERVER_DIST_RANK_GROUP_H_
