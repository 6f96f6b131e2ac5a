// The ranks of one data-parallel run and their collectives: PyTorch's c10d
// (a TCPStore hosted by rank 0 for rendezvous, ProcessGroupGloo for the
// collectives). Nothing here is a home-made collective; this wraps c10d's in
// absl::Status and an explicit timeout.
//
// Thread-safety: one thread calls a Collective's collectives (c10d requires
// every rank to issue them in the same order).
#ifndef TRAIND_SERVER_TRAIN_COLLECTIVE_H_
#define TRAIND_SERVER_TRAIN_COLLECTIVE_H_

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "server/train/backend.h"

namespace traind::train {

struct RankInfo {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  // Where rank 0 hosts the rendezvous store (torchrun's MASTER_ADDR/PORT).
  std::string master_addr = "127.0.0.1";
  int master_port = 0;
  // This rank's own address, which its peers connect to. Gloo's default
  // device resolves the hostname, which broke across hosts.
  std::string own_addr = "127.0.0.1";
  int timeout_seconds = 300;
};

class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Sums `t` (a contiguous CPU float or double tensor) over the ranks, in
  // place. UNAVAILABLE when a peer is gone or the timeout passed.
  virtual absl::Status AllreduceSum(torch::Tensor& t) = 0;
  // Replaces `t` on every rank with root's.
  virtual absl::Status Broadcast(torch::Tensor& t, int root) = 0;
  // Every rank's `value`, by rank (through the rendezvous store).
  virtual absl::StatusOr<std::vector<std::string>> AllGatherStrings(const std::string& key,
                                                                    const std::string& value) = 0;
};

// Rendezvous and a Gloo process group. Rank 0 hosts the store at
// master_port (0: a free port, see BoundPort); the others connect to it,
// retrying until the timeout.
absl::StatusOr<std::unique_ptr<Collective>> ConnectGloo(const RankInfo& info);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_COLLECTIVE_H_
