// The attempts of distributed jobs that are running now: what each attempt's
// ranks may ask for, and what rank 0 has reported, in order, for the job's
// training thread to hand to the job's sink. The control link's RPC service
// (rank_service.h) writes into an attempt; the launching engine
// (distributed_engine.h) reads from it. No gRPC or LibTorch here.
//
// Thread-safety: every method may be called from any thread.
#ifndef TRAIND_SERVER_LAUNCH_ATTEMPTS_H_
#define TRAIND_SERVER_LAUNCH_ATTEMPTS_H_

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/train/config.h"

namespace traind::launch {

// One thing rank 0 reported.
struct RankMessage {
  enum Kind { kDataset, kBatch, kEpoch, kInfo, kWarning, kEvaluation, kCheckpoint, kHosts };
  Kind kind = kInfo;
  train::DatasetSummary dataset;
  train::BatchProgress batch;
  train::EpochResult epoch;
  std::string text;
  train::Evaluation evaluation;
  train::CheckpointInfo checkpoint;  // stored by the control plane already
  std::vector<std::string> hosts;    // by rank
};

class Attempt {
 public:
  Attempt(std::string id, std::string secret, train::TrainConfig config, int world_size,
          int timeout_seconds, std::string backend);

  const std::string& id() const { return id_; }
  // What the ranks train (the control plane's paths for files).
  const train::TrainConfig& config() const { return config_; }
  int world_size() const { return world_size_; }
  int timeout_seconds() const { return timeout_seconds_; }
  const std::string& backend() const { return backend_; }
  // Handed to the launcher (in the ranks' environment) and nowhere else.
  const std::string& secret_for_launcher() const { return secret_; }
  // Constant-time comparison with the attempt's secret.
  bool Matches(const std::string& secret) const;

  void Post(std::vector<RankMessage> messages);
  // The messages posted since the last call, waiting up to `wait` for one.
  std::vector<RankMessage> Take(absl::Duration wait);

  // The job's token: its cancellation reaches rank 0 in the reply to the
  // next report, without waiting for the launcher's loop. Detach before the
  // token goes away.
  void AttachCancel(const train::CancelToken* cancel);
  void DetachCancel();
  // Asks the ranks to stop (rank 0 learns it from its next report).
  void RequestStop(bool interrupt);
  bool stop_requested() const;
  bool interrupt_requested() const;

  // Rank 0's outcome, once it finished.
  void SetOutcome(absl::Status status);
  std::optional<absl::Status> outcome() const;

 private:
  const std::string id_;
  const std::string secret_;
  const train::TrainConfig config_;
  const int world_size_;
  const int timeout_seconds_;
  const std::string backend_;
  mutable absl::Mutex mu_;
  std::deque<RankMessage> inbox_ ABSL_GUARDED_BY(mu_);
  const train::CancelToken* cancel_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool interrupt_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> outcome_ ABSL_GUARDED_BY(mu_);
};

class AttemptRegistry {
 public:
  // A new attempt with a fresh random id and secret.
  // `id` and `secret` given: the attempt of ranks that outlived a control
  // plane restart, taken up again.
  std::shared_ptr<Attempt> Create(const train::TrainConfig& config, int world_size,
                                  int timeout_seconds, const std::string& backend,
                                  const std::string& id = "", const std::string& secret = "");
  void Remove(const std::string& id);
  // The attempt with this id if `secret` is its secret; nullptr otherwise
  // (an unknown id and a wrong secret look alike to the caller).
  std::shared_ptr<Attempt> Find(const std::string& id, const std::string& secret) const;

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Attempt>> attempts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace traind::launch

#endif  // TRAIND_SERVER_LAUNCH_ATTEMPTS_H_
