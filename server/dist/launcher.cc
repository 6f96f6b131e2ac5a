#include "server/dist/launcher.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "server/dist/rank_group.h"
#include "server/train/collective.h"

extern char** environ;

namespace traind::dist {
namespace {

using Clock = std::chrono::steady_clock;

// A port free on loopback now, for rank 0's rendezvous store.
absl::StatusOr<int> FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket() failed");
  absl::Cleanup close_fd = [fd] { close(fd); };
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return absl::InternalError("cannot pick a free loopback port");
  }
  return ntohs(addr.sin_port);
}

absl::Status Deliver(const RankMessage& m, train::ProgressSink* sink,
                     train::Placement* placement) {
  switch (m.kind) {
    case RankMessage::kHosts:
      placement->ranks = m.hosts;
      sink->OnPlacement(*placement);
      break;
    case RankMessage::kDataset:
      sink->OnDataset(m.dataset);
      break;
    case RankMessage::kBatch:
      sink->OnBatch(m.batch);
      break;
    case RankMessage::kEpoch:
      sink->OnEpoch(m.epoch);
      break;
    case RankMessage::kInfo:
      sink->OnInfo(m.text);
      break;
    case RankMessage::kWarning:
      sink->OnWarning(m.text);
      break;
    case RankMessage::kEvaluation:
      sink->OnEvaluation(m.evaluation);
      break;
    case RankMessage::kCheckpoint:
      return sink->OnCheckpoint(m.checkpoint);
  }
  return absl::OkStatus();
}

}  // namespace

DistributedEngine::DistributedEngine(std::shared_ptr<jobs::Engine> in_process,
                                     AttemptRegistry* attempts, std::string worker_binary,
                                     std::vector<std::string> rank_wrapper)
    : in_process_(std::move(in_process)),
      attempts_(attempts),
      worker_binary_(std::move(worker_binary)),
      rank_wrapper_(std::move(rank_wrapper)) {}

void DistributedEngine::SetControlLink(ControlLink link) {
  absl::MutexLock lock(&mu_);
  link_ = std::move(link);
}

absl::Status DistributedEngine::CheckDistributed(const train::DistributedConfig& dist) {
  if (dist.world_size <= 1) return absl::OkStatus();
  if (dist.launcher == "SLURM" && FindOnPath("sbatch") == "sbatch") {
    return absl::InvalidArgumentError(
        "distributed.launcher: SLURM needs Slurm's client commands (sbatch, scontrol, "
        "scancel) on the daemon's PATH");
  }
  if (!train::BackendAvailable(dist.backend)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "distributed.backend: ", dist.backend,
        " is not available in this traind's LibTorch (nccl needs a CUDA build with NCCL); "
        "use gloo"));
  }
  if (dist.launcher == "KUBERNETES" && (kube_.api.empty() || (kube_.image.empty() &&
                                                               dist.kubernetes.image.empty()))) {
    return absl::InvalidArgumentError(
        "distributed.launcher: KUBERNETES needs the daemon to reach a Kubernetes API "
        "(in a pod, or --kube-api) and an image (--kube-image or distributed.kubernetes.image)");
  }
  if (dist.launcher != "LOCAL_PROCESSES" && dist.launcher != "SLURM" &&
      dist.launcher != "KUBERNETES") {
    return absl::InvalidArgumentError(
        absl::StrCat("distributed.launcher: ", dist.launcher, " is not supported"));
  }
  return absl::OkStatus();
}

namespace {

// The control address ranks of this launcher dial: the remote one for ranks
// on other machines, when the daemon was told one.
std::string RanksControl(const ControlLink& link, const std::string& launcher) {
  return launcher != "LOCAL_PROCESSES" && !link.remote_address.empty() ? link.remote_address
                                                                      : link.address;
}

}  // namespace

bool DistributedEngine::StillRunning(const train::TrainConfig& config) {
  const train::DistributedConfig& dist = config.distributed;
  if (dist.world_size <= 1 || dist.launcher != "SLURM" || config.checkpoint_dir.empty()) {
    return false;
  }
  const std::string work_dir =
      std::filesystem::path(config.checkpoint_dir).parent_path().string();
  std::optional<ControlLink> link;
  {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return link_.has_value(); };
    if (!mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(60))) return false;
    link = link_;
  }
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) env.emplace_back(*e);
  const auto record = PeekSlurmAttempt(work_dir, env);
  return record && (record->control.empty() ||
                    record->control == RanksControl(*link, dist.launcher));
}

absl::Status DistributedEngine::Train(const train::TrainConfig& config,
                                      train::ProgressSink* sink,
                                      const train::CancelToken& cancel) {
  if (config.distributed.world_size <= 1) return in_process_->Train(config, sink, cancel);
  return TrainOnRanks(config, sink, cancel);
}

absl::Status DistributedEngine::TrainOnRanks(const train::TrainConfig& config,
                                             train::ProgressSink* sink,
                                             const train::CancelToken& cancel) {
  ControlLink link;
  {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return link_.has_value(); };
    if (!mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(60))) {
      return absl::UnavailableError("the control link is not serving; cannot start ranks");
    }
    link = *link_;
  }
  const train::DistributedConfig& dist = config.distributed;
  const int world = dist.world_size;
  // The job's threads, shared by its ranks on this machine.
  train::TrainConfig ranks_config = config;
  ranks_config.threads = std::max(1, config.threads / world);
  // The job's folder holds its checkpoints; batch scripts, scheduler logs
  // and the running Slurm attempt's record go beside them.
  const std::filesystem::path job_dir =
      std::filesystem::path(config.checkpoint_dir).parent_path();
  LaunchRequest request;
  request.world_size = world;
  request.dist = dist;
  if (request.dist.slurm.partition.empty()) request.dist.slurm.partition = slurm_.partition;
  if (request.dist.slurm.account.empty()) request.dist.slurm.account = slurm_.account;
  request.worker_binary = worker_binary_;
  request.rank_wrapper = rank_wrapper_;
  request.work_dir = job_dir.string();
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    // The launcher's variables win over any the daemon inherited.
    static const char* kOwn[] = {"RANK=", "WORLD_SIZE=", "LOCAL_RANK=", "MASTER_ADDR=",
                                 "MASTER_PORT=", "TRAIND_"};
    bool own = false;
    for (const char* p : kOwn) own = own || kv.rfind(p, 0) == 0;
    if (!own) request.env.push_back(kv);
  }
  const bool slurm = dist.launcher == "SLURM";
  const std::string control = RanksControl(link, dist.launcher);
  // Ranks that kept training through a control plane restart are taken up
  // again, not started twice.
  std::optional<ReattachedSlurm> again;
  if (slurm && !job_dir.empty()) again = ReattachSlurmRanks(request.work_dir, request.env);
  if (again && !again->record.control.empty() && again->record.control != control) {
    // They would never reach this daemon: end them, start from the checkpoint.
    const std::string warning = absl::StrCat(
        "Slurm job ", again->record.slurm_job, " kept training, but its ranks report to ",
        again->record.control, " and this daemon now serves them on ", control,
        ": ended it; the job starts again from its last checkpoint (restart traind on ",
        again->record.control, " to take running ranks up instead)");
    std::fprintf(stderr, "traind: WARNING: %s\n", warning.c_str());
    sink->OnWarning(warning);
    again->group->Kill();
    again.reset();
  }
  auto attempt = again ? attempts_->Create(ranks_config, world, dist.timeout_seconds,
                                           dist.backend, again->record.attempt,
                                           again->record.secret)
                       : attempts_->Create(ranks_config, world, dist.timeout_seconds,
                                           dist.backend);
  attempt->AttachCancel(&cancel);
  absl::Cleanup forget = [&] {
    attempt->DetachCancel();
    attempts_->Remove(attempt->id());
    std::error_code ec;
    if (slurm) std::filesystem::remove(SlurmAttemptPath(request.work_dir), ec);
  };
  std::unique_ptr<RankGroup> group;
  if (again) {
    group = std::move(again->group);
    sink->OnInfo(absl::StrCat("took up Slurm job ", again->record.slurm_job,
                              " again: its ranks kept training while the control plane "
                              "restarted"));
  } else {
    auto port = FreeLoopbackPort();
    if (!port.ok()) return port.status();
    request.master_port = *port;
    request.job_name = absl::StrCat("traind-", job_dir.filename().string(), "-", attempt->id());
    // Ranks on other machines dial the address the daemon was told they can
    // reach; local ranks the local one.
    request.env.push_back(absl::StrCat("TRAIND_CONTROL=", control));
    if (!link.ca_file.empty()) {
      request.env.push_back(absl::StrCat("TRAIND_CONTROL_CA=", link.ca_file));
    }
    request.env.push_back(absl::StrCat("TRAIND_ATTEMPT=", attempt->id()));
    // In the environment, not argv: other users can read a process's argv.
    request.env.push_back(
        absl::StrCat("TRAIND_ATTEMPT_SECRET=", attempt->secret_for_launcher()));
    request.kube = kube_;
    request.attempt_secret = attempt->secret_for_launcher();
    auto started = slurm                                 ? StartSlurmRanks(request)
                   : dist.launcher == "KUBERNETES"       ? StartKubernetesRanks(request)
                                                         : StartLocalRanks(request);
    if (!started.ok()) return jobs::AttemptLost(started.status());
    group = std::move(*started);
    if (slurm) {
      SlurmAttemptRecord record{attempt->id(), attempt->secret_for_launcher(),
                                SlurmJobOf(*group), control};
      if (auto st = SaveSlurmAttempt(request.work_dir, record); !st.ok()) {
        sink->OnWarning(absl::StrCat("cannot keep the Slurm attempt's record (", st.message(),
                                     "): a control plane restart will start it again"));
      }
    }
  }

  train::Placement placement;
  placement.launcher = dist.launcher;
  placement.world_size = world;
  placement.scheduler_job = group->scheduler_job();
  sink->OnPlacement(placement);

  std::string waiting;  // what the scheduler last said it waits for
  absl::Status relay;  // a checkpoint the job could not record
  bool stop_sent = false;
  std::optional<Clock::time_point> kill_at;
  GroupState state;
  const auto grace = std::chrono::seconds(dist.timeout_seconds + 10);
  while (true) {
    for (const auto& m : attempt->Take(absl::Milliseconds(100))) {
      if (auto st = Deliver(m, sink, &placement); !st.ok() && relay.ok()) relay = st;
    }
    if (!stop_sent && (cancel.cancelled() || !relay.ok())) {
      attempt->RequestStop(cancel.interrupted());
      stop_sent = true;
      if (!kill_at) kill_at = Clock::now() + grace;
      // A user's cancel needs no checkpoint: Slurm ends the job now, and its
      // accounting (sacct) says CANCELLED, not COMPLETED.
      if (slurm && cancel.cancelled() && !cancel.interrupted()) group->Kill();
    }
    const bool had_loss = !state.loss.empty();
    state = group->Poll();
    if (!state.note.empty()) sink->OnInfo(state.note);
    if (state.waiting != waiting) {
      if (!state.waiting.empty()) {
        sink->OnWaiting(state.waiting);
      } else if (!waiting.empty()) {
        sink->OnStarted();
      }
      waiting = state.waiting;
    }
    if (!state.failure.empty()) {
      group->Kill();
      return absl::FailedPreconditionError(state.failure);
    }
    if (!had_loss && !state.loss.empty()) {
      // The others see the broken collective within a second; a rank stuck
      // elsewhere is ended.
      const auto soon = Clock::now() + std::chrono::seconds(10);
      if (!kill_at || *kill_at > soon) kill_at = soon;
    }
    if (!state.running) break;
    // Ranks the scheduler has not started cannot see a stop flag.
    if ((kill_at && Clock::now() > *kill_at) || (stop_sent && !waiting.empty())) group->Kill();
  }
  for (const auto& m : attempt->Take(absl::ZeroDuration())) {
    if (auto st = Deliver(m, sink, &placement); !st.ok() && relay.ok()) relay = st;
  }
  if (!relay.ok()) return relay;
  if (!state.cancelled_outside.empty()) return absl::CancelledError(state.cancelled_outside);
  const std::optional<absl::Status> outcome = attempt->outcome();
  if (!outcome && cancel.cancelled()) return absl::CancelledError("cancelled");
  if (outcome && jobs::IsAttemptLost(*outcome) && !state.loss.empty()) {
    return jobs::AttemptLost(absl::UnavailableError(absl::StrCat(
        "distributed attempt lost: ", state.loss, "; rank 0: ", outcome->message())));
  }
  if (outcome && !outcome->ok()) return *outcome;
  if (!state.loss.empty()) {
    return jobs::AttemptLost(absl::UnavailableError(
        absl::StrCat("distributed attempt lost: ", state.loss)));
  }
  if (!outcome) {
    return jobs::AttemptLost(absl::UnavailableError(
        "distributed attempt lost: rank 0 ended without reporting an outcome"));
  }
  return *outcome;
}

}  // namespace traind::dist
