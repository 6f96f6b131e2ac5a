// An Engine for jobs of any world size: world size 1 goes to the in-process
// engine unchanged; larger ones start world_size `traind worker` ranks
// through the launcher the spec names (launchers.h), relay rank 0's
// progress to the job's sink, pass cancellation to the ranks and turn a
// lost rank into a lost attempt (the job manager runs it again from the
// newest checkpoint). It links no LibTorch: what the ranks train is the
// worker's (server/worker).
//
// Thread-safety: as Engine.
#ifndef TRAIND_SERVER_LAUNCH_DISTRIBUTED_ENGINE_H_
#define TRAIND_SERVER_LAUNCH_DISTRIBUTED_ENGINE_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/jobs/engine.h"
#include "server/launch/attempts.h"
#include "server/launch/rank_group.h"

namespace traind::launch {

struct ControlLink {
  // Where ranks reach the control link, host:port.
  std::string address;
  // What ranks on other machines (SLURM, KUBERNETES) dial; empty:
  // `address`.
  std::string remote_address;
  // PEM file the ranks verify the daemon's certificate with; empty: the
  // link is plaintext (loopback only).
  std::string ca_file;
};

class DistributedEngine : public jobs::Engine {
 public:
  struct Options {
    // The traind executable the ranks run (`traind worker`).
    std::string worker_binary;
    // Words put before it for each local rank, "{rank}" replaced by the rank
    // (e.g. numactl, taskset, ip netns exec); may be empty.
    std::vector<std::string> rank_wrapper;
    // The collective backends the ranks' LibTorch has (c10d's names).
    std::vector<std::string> backends;
    LaunchSettings settings;
  };

  DistributedEngine(std::shared_ptr<jobs::Engine> in_process, AttemptRegistry* attempts,
                    Options options);

  // Called once the daemon listens; attempts wait for it.
  void SetControlLink(ControlLink link) ABSL_LOCKS_EXCLUDED(mu_);

  absl::Status Train(const jobs::RunRequest& run, train::ProgressSink* sink,
                     const train::CancelToken& cancel) override;
  absl::StatusOr<std::vector<train::TrialSpec>> PlanSweep(
      const train::SweepPlan& plan) override {
    return in_process_->PlanSweep(plan);
  }
  absl::StatusOr<train::SweepResult> Sweep(const jobs::SweepRequest& request,
                                           train::SweepSink* sink,
                                           const train::CancelToken& cancel) override {
    return in_process_->Sweep(request, sink, cancel);
  }
  absl::Status CheckWeights(const std::string& path) override {
    return in_process_->CheckWeights(path);
  }
  absl::Status CheckDataset(const train::DataConfig& data) override {
    return in_process_->CheckDataset(data);
  }
  absl::Status CheckDistributed(const trainer::v1::Distributed& dist) override;
  bool StillRunning(const jobs::RunRequest& run) override;
  absl::StatusOr<std::shared_ptr<const jobs::Model>> LoadModel(const std::string& weights_path,
                                                               int num_classes,
                                                               int image_size) override {
    return in_process_->LoadModel(weights_path, num_classes, image_size);
  }

 private:
  absl::Status TrainOnRanks(const jobs::RunRequest& run, train::ProgressSink* sink,
                            const train::CancelToken& cancel);
  // The control link, once the daemon serves it (waits up to a minute).
  std::optional<ControlLink> Link() ABSL_LOCKS_EXCLUDED(mu_);

  const std::shared_ptr<jobs::Engine> in_process_;
  AttemptRegistry* const attempts_;
  const Options options_;
  absl::Mutex mu_;
  std::optional<ControlLink> link_ ABSL_GUARDED_BY(mu_);
};

}  // namespace traind::launch

#endif  // TRAIND_SERVER_LAUNCH_DISTRIBUTED_ENGINE_H_
