// The ranks of one attempt as a launcher started them (local child
// processes, a Slurm job, a Kubernetes Job), and what every launcher needs
// to start them. The distributed engine (distributed_engine.h) polls the
// group while it relays rank 0's reports, and ends it.
//
// Thread-safety: a group is used by the one thread that started it.
#ifndef TRAIND_SERVER_LAUNCH_RANK_GROUP_H_
#define TRAIND_SERVER_LAUNCH_RANK_GROUP_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/v1/training_service.pb.h"

namespace traind::launch {

// Where an attempt's ranks are.
enum class GroupPhase {
  kWaiting,  // the scheduler holds them back (GroupState::reason says why)
  kRunning,  // placed; some rank still runs
  kEnded,    // every rank has ended
};

// What went wrong, if anything (GroupState::reason names it).
enum class GroupTrouble {
  kNone,
  // A rank ended abnormally (killed, its node failed); the others may still
  // run. The job runs again from its last checkpoint.
  kRankLost,
  // A failure that running again would not mend (an image that cannot be
  // pulled): the job fails with it.
  kFailed,
  // Ended by someone outside traind (scancel, a deleted Job): the job is
  // cancelled.
  kCancelledOutside,
};

struct GroupState {
  GroupPhase phase = GroupPhase::kRunning;
  GroupTrouble trouble = GroupTrouble::kNone;
  // The trouble, when there is one; else, while kWaiting, what the
  // scheduler waits for.
  std::string reason;
  // Scheduler news for the job's log (pending and why, where it runs); empty
  // when nothing changed since the last poll.
  std::string note;

  bool ended() const { return phase == GroupPhase::kEnded; }
  // What the scheduler waits for; empty once the ranks are placed.
  std::string waiting() const {
    return phase == GroupPhase::kWaiting && trouble == GroupTrouble::kNone ? reason : "";
  }
};

class RankGroup {
 public:
  // Ends any rank still running.
  virtual ~RankGroup() = default;
  virtual GroupState Poll() = 0;
  // Ends every rank now.
  virtual void Kill() = 0;
  // The scheduler's name for the attempt (Slurm job id, Kubernetes Job);
  // empty for local processes.
  virtual std::string scheduler_job() const { return ""; }
};

// Daemon-wide defaults for the SLURM launcher.
struct SlurmDefaults {
  std::string partition;
  std::string account;
};

// How the daemon reaches the Kubernetes API (in a pod: the service
// account's token and CA, KUBERNETES_SERVICE_HOST/PORT) and what it runs.
struct KubeAccess {
  std::string api;  // https://host:port
  std::string token_file;
  std::string ca_file;
  std::string namespace_;
  std::string image;           // default rank image
  std::string worker_command;  // traind's path inside the image
  // A PersistentVolumeClaim with the datasets, mounted read-only in every
  // rank pod at data_mount (the daemon's --data-root); empty: none.
  std::string data_claim;
  std::string data_mount;
};

// What the daemon knows about where ranks can go (its flags).
struct LaunchSettings {
  SlurmDefaults slurm;
  KubeAccess kube;
};

// What every launcher needs to start an attempt's ranks.
struct LaunchRequest {
  std::string job_name;  // for the scheduler's listings
  int world_size = 1;
  // The job's distributed block, the daemon's defaults filled in.
  trainer::v1::Distributed dist;
  std::vector<std::string> env;  // the daemon's environment plus the control link's
  std::string worker_binary;
  std::vector<std::string> rank_wrapper;  // LOCAL_PROCESSES only
  std::string work_dir;                   // the job's folder: batch scripts, scheduler logs
  int master_port = 0;
  // KUBERNETES only.
  KubeAccess kube;
  std::string attempt_secret;
};

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

}  // namespace traind::launch

#endif  // TRAIND_SERVER_LAUNCH_RANK_GROUP_H_
