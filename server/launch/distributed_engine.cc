#include "server/launch/distributed_engine.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "server/launch/launchers.h"

extern char** environ;

namespace traind::launch {
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

absl::Status Deliver(const RankMessage& m, train::ProgressSink* sink, train::Placement* placement) {
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


// The control address ranks of this launcher dial: the remote one for ranks
// on other machines, when the daemon was told one.
std::string RanksControl(const ControlLink& link, const LauncherKind& kind) {
  return kind.remote && !link.remote_address.empty() ? link.remote_address : link.address;
}

// The job's folder: it holds the checkpoint folder; batch scripts,
// scheduler logs and a kept attempt's record go beside it.
std::filesystem::path JobDir(const train::TrainConfig& config) {
  return std::filesystem::path(config.checkpoint_dir).parent_path();
}

std::vector<std::string> Environment() {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) env.emplace_back(*e);
  return env;
}

absl::Status Unsupported(trainer::v1::Launcher launcher) {
  return absl::InvalidArgumentError(absl::StrCat(
      "distributed.launcher: ", trainer::v1::Launcher_Name(launcher), " is not supported"));
}

}  // namespace

DistributedEngine::DistributedEngine(std::shared_ptr<jobs::Engine> in_process,
                                     AttemptRegistry* attempts, Options options)
    : in_process_(std::move(in_process)), attempts_(attempts), options_(std::move(options)) {}

void DistributedEngine::SetControlLink(ControlLink link) {
  absl::MutexLock lock(&mu_);
  link_ = std::move(link);
}

std::optional<ControlLink> DistributedEngine::Link() {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return link_.has_value(); };
  if (!mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(60))) return std::nullopt;
  return link_;
}

absl::Status DistributedEngine::CheckDistributed(const trainer::v1::Distributed& dist) {
  if (dist.world_size() <= 1) return absl::OkStatus();
  const LauncherKind* kind = FindLauncher(dist.launcher());
  if (!kind) return Unsupported(dist.launcher());
  if (auto st = kind->check(dist, options_.settings); !st.ok()) return st;
  const std::string backend = trainer::v1::Backend_Name(dist.backend());
  if (std::find(options_.backends.begin(), options_.backends.end(), backend) ==
      options_.backends.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "distributed.backend: ", backend,
        " is not available in this traind's LibTorch (nccl needs a CUDA build with NCCL); "
        "use gloo"));
  }
  return absl::OkStatus();
}

bool DistributedEngine::StillRunning(const jobs::RunRequest& run) {
  const LauncherKind* kind = FindLauncher(run.distributed.launcher());
  if (run.distributed.world_size() <= 1 || !kind || !kind->keeper ||
      run.config.checkpoint_dir.empty()) {
    return false;
  }
  const std::optional<ControlLink> link = Link();
  if (!link) return false;
  const auto record = kind->keeper->peek(JobDir(run.config).string(), Environment());
  return record && (record->control.empty() || record->control == RanksControl(*link, *kind));
}

absl::Status DistributedEngine::Train(const jobs::RunRequest& run, train::ProgressSink* sink,
                                      const train::CancelToken& cancel) {
  if (run.distributed.world_size() <= 1) return in_process_->Train(run, sink, cancel);
  return TrainOnRanks(run, sink, cancel);
}

absl::Status DistributedEngine::TrainOnRanks(const jobs::RunRequest& run, train::ProgressSink* sink,
                                             const train::CancelToken& cancel) {
  const std::optional<ControlLink> link = Link();
  if (!link) return absl::UnavailableError("the control link is not serving; cannot start ranks");
  const trainer::v1::Distributed& dist = run.distributed;
  const LauncherKind* kind = FindLauncher(dist.launcher());
  if (!kind) return Unsupported(dist.launcher());
  const int world = dist.world_size();
  const std::string backend = trainer::v1::Backend_Name(dist.backend());
  // The job's threads, shared by its ranks on this machine.
  train::TrainConfig ranks_config = run.config;
  ranks_config.threads = std::max(1, run.config.threads / world);
  const std::filesystem::path job_dir = JobDir(run.config);
  LaunchRequest request;
  request.world_size = world;
  request.dist = dist;
  trainer::v1::SlurmOptions* slurm = request.dist.mutable_slurm();
  if (slurm->partition().empty()) slurm->set_partition(options_.settings.slurm.partition);
  if (slurm->account().empty()) slurm->set_account(options_.settings.slurm.account);
  request.worker_binary = options_.worker_binary;
  request.rank_wrapper = options_.rank_wrapper;
  request.work_dir = job_dir.string();
  for (std::string& kv : Environment()) {
    // The launcher's variables win over any the daemon inherited.
    static const char* kOwn[] = {
        "RANK=", "WORLD_SIZE=", "LOCAL_RANK=", "MASTER_ADDR=", "MASTER_PORT=", "TRAIND_"};
    bool own = false;
    for (const char* p : kOwn) own = own || kv.rfind(p, 0) == 0;
    if (!own) request.env.push_back(std::move(kv));
  }
  const AttemptKeeper* keeper = job_dir.empty() ? nullptr : kind->keeper;
  const std::string control = RanksControl(*link, *kind);
  // Ranks that kept training through a control plane restart are taken up
  // again, not started twice.
  std::optional<TakenUp> again;
  if (keeper) again = keeper->take_up(request.work_dir, request.env);
  if (again && !again->record.control.empty() && again->record.control != control) {
    // They would never reach this daemon: end them, start from the checkpoint.
    const std::string warning = absl::StrCat(
        kind->attempt_noun, " ", again->record.scheduler_job,
        " kept training, but its ranks report to ", again->record.control,
        " and this daemon now serves them on ", control,
        ": ended it; the job starts again from its last checkpoint (restart traind on ",
        again->record.control, " to take running ranks up instead)");
    std::fprintf(stderr, "traind: WARNING: %s\n", warning.c_str());
    sink->OnWarning(warning);
    again->group->Kill();
    again.reset();
  }
  const int timeout = dist.rendezvous_timeout_seconds();
  auto attempt = again ? attempts_->Create(ranks_config, world, timeout, backend,
                                           again->record.attempt, again->record.secret)
                       : attempts_->Create(ranks_config, world, timeout, backend);
  attempt->AttachCancel(&cancel);
  absl::Cleanup forget = [&] {
    attempt->DetachCancel();
    attempts_->Remove(attempt->id());
    if (keeper) keeper->forget(request.work_dir);
  };
  std::unique_ptr<RankGroup> group;
  if (again) {
    group = std::move(again->group);
    sink->OnInfo(absl::StrCat("took up ", kind->attempt_noun, " ", again->record.scheduler_job,
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
    if (!link->ca_file.empty()) {
      request.env.push_back(absl::StrCat("TRAIND_CONTROL_CA=", link->ca_file));
    }
    request.env.push_back(absl::StrCat("TRAIND_ATTEMPT=", attempt->id()));
    // In the environment, not argv: other users can read a process's argv.
    request.env.push_back(absl::StrCat("TRAIND_ATTEMPT_SECRET=", attempt->secret_for_launcher()));
    request.kube = options_.settings.kube;
    request.attempt_secret = attempt->secret_for_launcher();
    auto started = kind->start(request);
    if (!started.ok()) return jobs::AttemptLost(started.status());
    group = std::move(*started);
    if (keeper) {
      const KeptAttempt record{attempt->id(), attempt->secret_for_launcher(),
                               group->scheduler_job(), control};
      if (auto st = keeper->save(request.work_dir, record); !st.ok()) {
        sink->OnWarning(absl::StrCat("cannot keep the attempt's record (", st.message(),
                                     "): a control plane restart will start it again"));
      }
    }
  }

  train::Placement placement;
  placement.launcher = trainer::v1::Launcher_Name(dist.launcher());
  placement.world_size = world;
  placement.scheduler_job = group->scheduler_job();
  sink->OnPlacement(placement);

  std::string waiting;  // what the scheduler last said it waits for
  absl::Status relay;   // a checkpoint the job could not record
  bool stop_sent = false;
  std::optional<Clock::time_point> kill_at;
  GroupState state;
  const auto grace = std::chrono::seconds(timeout + 10);
  while (true) {
    for (const auto& m : attempt->Take(absl::Milliseconds(100))) {
      if (auto st = Deliver(m, sink, &placement); !st.ok() && relay.ok()) relay = st;
    }
    if (!stop_sent && (cancel.cancelled() || !relay.ok())) {
      attempt->RequestStop(cancel.interrupted());
      stop_sent = true;
      if (!kill_at) kill_at = Clock::now() + grace;
      if (kind->kill_on_cancel && cancel.cancelled() && !cancel.interrupted()) group->Kill();
    }
    const bool had_loss = state.trouble == GroupTrouble::kRankLost;
    state = group->Poll();
    if (!state.note.empty()) sink->OnInfo(state.note);
    if (state.waiting() != waiting) {
      if (!state.waiting().empty()) {
        sink->OnWaiting(state.waiting());
      } else if (!waiting.empty()) {
        sink->OnStarted();
      }
      waiting = state.waiting();
    }
    if (state.trouble == GroupTrouble::kFailed) {
      group->Kill();
      return absl::FailedPreconditionError(state.reason);
    }
    if (!had_loss && state.trouble == GroupTrouble::kRankLost) {
      // The others see the broken collective within a second; a rank stuck
      // elsewhere is ended.
      const auto soon = Clock::now() + std::chrono::seconds(10);
      if (!kill_at || *kill_at > soon) kill_at = soon;
    }
    if (state.ended()) break;
    // Ranks the scheduler has not started cannot see a stop flag.
    if ((kill_at && Clock::now() > *kill_at) || (stop_sent && !waiting.empty())) group->Kill();
  }
  for (const auto& m : attempt->Take(absl::ZeroDuration())) {
    if (auto st = Deliver(m, sink, &placement); !st.ok() && relay.ok()) relay = st;
  }
  if (!relay.ok()) return relay;
  if (state.trouble == GroupTrouble::kCancelledOutside) return absl::CancelledError(state.reason);
  const std::optional<absl::Status> outcome = attempt->outcome();
  if (!outcome && cancel.cancelled()) return absl::CancelledError("cancelled");
  const bool lost = state.trouble == GroupTrouble::kRankLost;
  if (outcome && jobs::IsAttemptLost(*outcome) && lost) {
    return jobs::AttemptLost(absl::UnavailableError(absl::StrCat(
        "distributed attempt lost: ", state.reason, "; rank 0: ", outcome->message())));
  }
  if (outcome && !outcome->ok()) return *outcome;
  if (lost) {
    return jobs::AttemptLost(
        absl::UnavailableError(absl::StrCat("distributed attempt lost: ", state.reason)));
  }
  if (!outcome) {
    return jobs::AttemptLost(absl::UnavailableError(
        "distributed attempt lost: rank 0 ended without reporting an outcome"));
  }
  return *outcome;
}

}  // namespace traind::launch
