#include "server/train/collective.h"

#include <chrono>
#include <exception>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "absl/strings/str_cat.h"

namespace traind::train {
namespace {

absl::Status Lost(const char* what, const std::exception& e) {
  return absl::UnavailableError(absl::StrCat("collective ", what, " failed: ", e.what()));
}

class GlooCollective final : public Collective {
 public:
  GlooCollective(const RankInfo& info, c10::intrusive_ptr<c10d::Store> store,
                 c10::intrusive_ptr<c10d::ProcessGroupGloo> group)
      : info_(info), store_(std::move(store)), group_(std::move(group)) {}

  int rank() const override { return info_.rank; }
  int world_size() const override { return info_.world_size; }

  absl::Status AllreduceSum(torch::Tensor& t) override {
    try {
      std::vector<torch::Tensor> one = {t};
      auto work = group_->allreduce(one);
      work->wait();
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return Lost("allreduce", e);
    }
  }

  absl::Status Broadcast(torch::Tensor& t, int root) override {
    try {
      std::vector<torch::Tensor> one = {t};
      c10d::BroadcastOptions opts;
      opts.rootRank = root;
      auto work = group_->broadcast(one, opts);
      work->wait();
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return Lost("broadcast", e);
    }
  }

  absl::StatusOr<std::vector<std::string>> AllGatherStrings(const std::string& key,
                                                            const std::string& value) override {
    try {
      store_->set(absl::StrCat(key, "/", info_.rank),
                  std::vector<uint8_t>(value.begin(), value.end()));
      std::vector<std::string> all;
      for (int r = 0; r < info_.world_size; ++r) {
        auto bytes = store_->get(absl::StrCat(key, "/", r));
        all.emplace_back(bytes.begin(), bytes.end());
      }
      return all;
    } catch (const std::exception& e) {
      return Lost("store exchange", e);
    }
  }

 private:
  const RankInfo info_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Collective>> ConnectGloo(const RankInfo& info) {
  if (info.world_size < 1 || info.rank < 0 || info.rank >= info.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", info.rank, " is not within world size ", info.world_size));
  }
  const auto timeout = std::chrono::milliseconds(int64_t{info.timeout_seconds} * 1000);
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(info.master_port);
    so.isServer = info.rank == 0;
    so.numWorkers = info.world_size;
    so.waitWorkers = false;
    so.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(info.master_addr, so);
    auto store = c10::make_intrusive<c10d::PrefixStore>("traind", tcp);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(info.own_addr));
    opts->threads = 1;
    auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, info.rank, info.world_size,
                                                             opts);
    return std::unique_ptr<Collective>(new GlooCollective(info, store, std::move(group)));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "rendezvous of rank ", info.rank, " of ", info.world_size, " at ", info.master_addr, ":",
        info.master_port, " (own address ", info.own_addr, ") failed: ", e.what()));
  }
}

bool BackendAvailable(const std::string& backend) {
  if (backend == "gloo") return true;
#ifdef USE_C10D_NCCL
  if (backend == "nccl") return torch::cuda::is_available();
#endif
  return false;
}

}  // namespace traind::train
