// An Engine for jobs of any world size: world size 1 goes to the in-process
// engine unchanged; larger ones start world_size `traind worker` ranks
// through a launcher (here: child processes of the daemon on its own
// machine), relay rank 0's progress to the job's sink, pass cancellation to
// the ranks and turn a lost rank into a lost attempt (the job manager runs
// it again from the newest checkpoint).
//
// Thread-safety: as Engine.
#ifndef TRAIND_SERVER_DIST_LAUNCHER_H_
#define TRAIND_SERVER_DIST_LAUNCHER_H_

#include <memory>
#include <string>
#include <vector>

#include "server/dist/attempts.h"
#include "server/dist/rank_group.h"
#include "server/jobs/engine.h"

namespace traind::dist {

struct ControlLink {
  // Where ranks reach the control link, host:port.
  std::string address;
  // What ranks on other machines (SLURM) dial; empty: `address`.
  std::string remote_address;
  // PEM file the ranks verify the daemon's certificate with; empty: the
  // link is plaintext (loopback only).
  std::string ca_file;
};

// Daemon-wide defaults for the SLURM launcher.
struct SlurmDefaults {
  std::string partition;
  std::string account;
};

class DistributedEngine : public jobs::Engine {
 public:
  // `worker_binary`: the traind executable the ranks run (`traind worker`).
  // `rank_wrapper`: words put before it for each local rank, "{rank}"
  // replaced by the rank (e.g. numactl, taskset, ip netns exec); may be empty.
  DistributedEngine(std::shared_ptr<jobs::Engine> in_process, AttemptRegistry* attempts,
                    std::string worker_binary, std::vector<std::string> rank_wrapper = {});

  // Called once the daemon listens; attempts wait for it.
  void SetControlLink(ControlLink link);
  void SetSlurmDefaults(SlurmDefaults defaults) { slurm_ = std::move(defaults); }
  void SetKubeAccess(KubeAccess access) { kube_ = std::move(access); }

  absl::Status Train(const train::TrainConfig& config, train::ProgressSink* sink,
                     const train::CancelToken& cancel) override;
  absl::StatusOr<train::SweepResult> Sweep(const train::TrainConfig& base,
                                           const train::SweepPlan& plan,
                                           const std::vector<train::TrialSpec>& trials,
                                           const std::set<int>& finished,
                                           const std::string& output_dir,
                                           train::SweepSink* sink,
                                           const train::CancelToken& cancel) override {
    return in_process_->Sweep(base, plan, trials, finished, output_dir, sink, cancel);
  }
  absl::Status CheckWeights(const std::string& path) override {
    return in_process_->CheckWeights(path);
  }
  absl::Status CheckDataset(const train::DataConfig& data) override {
    return in_process_->CheckDataset(data);
  }
  absl::Status CheckDistributed(const train::DistributedConfig& dist) override;
  bool StillRunning(const train::TrainConfig& config) override;

 private:
  absl::Status TrainOnRanks(const train::TrainConfig& config, train::ProgressSink* sink,
                            const train::CancelToken& cancel);

  const std::shared_ptr<jobs::Engine> in_process_;
  AttemptRegistry* const attempts_;
  const std::string worker_binary_;
  const std::vector<std::string> rank_wrapper_;
  SlurmDefaults slurm_;  // set before the first job
  KubeAccess kube_;
  absl::Mutex mu_;
  std::optional<ControlLink> link_ ABSL_GUARDED_BY(mu_);
};

}  // namespace traind::dist

#endif  // TRAIND_SERVER_DIST_LAUNCHER_H_
