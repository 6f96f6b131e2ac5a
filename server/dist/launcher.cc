#include "server/dist/launcher.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
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

struct Rank {
  int rank = 0;
  pid_t pid = -1;
  bool running = false;
  int wait_status = 0;
};

// Starts `argv` with `env`; the child dies with the thread that started it
// (a daemon killed outright takes its ranks with it).
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv,
                            const std::vector<std::string>& env) {
  std::vector<char*> a, e;
  for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
  a.push_back(nullptr);
  for (const auto& s : env) e.push_back(const_cast<char*>(s.c_str()));
  e.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::ResourceExhaustedError("fork() failed: cannot start a rank");
  if (pid == 0) {
    // Only async-signal-safe calls from here to exec.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    syscall(SYS_close_range, 3U, ~0U, 0U);
    execve(a[0], a.data(), e.data());
    _exit(127);
  }
  return pid;
}

std::string DescribeExit(int status) {
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  return "stopped";
}

absl::Status Deliver(const RankMessage& m, train::ProgressSink* sink) {
  switch (m.kind) {
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
  if (!train::BackendAvailable(dist.backend)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "distributed.backend: ", dist.backend,
        " is not available in this traind's LibTorch (nccl needs a CUDA build with NCCL); "
        "use gloo"));
  }
  if (dist.launcher != "LOCAL_PROCESSES") {
    return absl::InvalidArgumentError(
        absl::StrCat("distributed.launcher: ", dist.launcher, " is not supported"));
  }
  return absl::OkStatus();
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
  auto attempt = attempts_->Create(ranks_config, world, dist.timeout_seconds, dist.backend);
  attempt->AttachCancel(&cancel);
  absl::Cleanup forget = [&] {
    attempt->DetachCancel();
    attempts_->Remove(attempt->id());
  };
  auto port = FreeLoopbackPort();
  if (!port.ok()) return port.status();

  std::vector<std::string> base_env;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    // The launcher's variables win over any the daemon inherited.
    static const char* kOwn[] = {"RANK=", "WORLD_SIZE=", "LOCAL_RANK=", "MASTER_ADDR=",
                                 "MASTER_PORT=", "TRAIND_"};
    bool own = false;
    for (const char* p : kOwn) own = own || kv.rfind(p, 0) == 0;
    if (!own) base_env.push_back(kv);
  }
  std::vector<Rank> ranks(world);
  absl::Cleanup reap_all = [&] {
    for (auto& r : ranks) {
      if (!r.running) continue;
      kill(r.pid, SIGKILL);
      waitpid(r.pid, &r.wait_status, 0);
      r.running = false;
    }
  };
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> env = base_env;
    env.push_back(absl::StrCat("RANK=", r));
    env.push_back(absl::StrCat("LOCAL_RANK=", r));
    env.push_back(absl::StrCat("WORLD_SIZE=", world));
    env.push_back("MASTER_ADDR=127.0.0.1");
    env.push_back(absl::StrCat("MASTER_PORT=", *port));
    env.push_back("TRAIND_RANK_ADDR=127.0.0.1");
    env.push_back(absl::StrCat("TRAIND_CONTROL=", link.address));
    if (!link.ca_file.empty()) env.push_back(absl::StrCat("TRAIND_CONTROL_CA=", link.ca_file));
    env.push_back(absl::StrCat("TRAIND_ATTEMPT=", attempt->id()));
    // In the environment, not argv: other users can read a process's argv.
    env.push_back(absl::StrCat("TRAIND_ATTEMPT_SECRET=", attempt->secret_for_launcher()));
    std::vector<std::string> argv;
    for (const auto& w : rank_wrapper_) {
      argv.push_back(absl::StrReplaceAll(w, {{"{rank}", absl::StrCat(r)}}));
    }
    argv.push_back(worker_binary_);
    argv.push_back("worker");
    // A wrapper is found on PATH like a shell would; the binary is absolute.
    if (!argv[0].empty() && argv[0][0] != '/') {
      for (absl::string_view dir : absl::StrSplit(std::getenv("PATH") ? std::getenv("PATH") : "",
                                                  ':', absl::SkipEmpty())) {
        const std::string candidate = absl::StrCat(dir, "/", argv[0]);
        if (access(candidate.c_str(), X_OK) == 0) {
          argv[0] = candidate;
          break;
        }
      }
    }
    auto pid = Spawn(argv, env);
    if (!pid.ok()) return jobs::AttemptLost(pid.status());
    ranks[r].rank = r;
    ranks[r].pid = *pid;
    ranks[r].running = true;
  }

  absl::Status relay;  // a checkpoint the job could not record
  bool stop_sent = false;
  std::optional<Clock::time_point> kill_at;
  std::string first_loss;  // the first rank that ended abnormally
  bool lost_by_signal = false;
  const auto grace = std::chrono::seconds(dist.timeout_seconds + 10);
  while (true) {
    for (const auto& m : attempt->Take(absl::Milliseconds(100))) {
      if (auto st = Deliver(m, sink); !st.ok() && relay.ok()) relay = st;
    }
    if (!stop_sent && (cancel.cancelled() || !relay.ok())) {
      attempt->RequestStop(cancel.interrupted());
      stop_sent = true;
      if (!kill_at) kill_at = Clock::now() + grace;
    }
    int running = 0;
    for (auto& r : ranks) {
      if (!r.running) continue;
      if (waitpid(r.pid, &r.wait_status, WNOHANG) == r.pid) {
        r.running = false;
        const bool clean = WIFEXITED(r.wait_status) && WEXITSTATUS(r.wait_status) == 0;
        // A rank that was killed is the cause; ranks that then fail on the
        // broken collective are not.
        if (!clean && (first_loss.empty() ||
                       (WIFSIGNALED(r.wait_status) && !lost_by_signal))) {
          lost_by_signal = WIFSIGNALED(r.wait_status);
          first_loss = absl::StrCat("rank ", r.rank, " (pid ", r.pid, ") ",
                                    DescribeExit(r.wait_status));
          // The others see the broken collective within a second; a rank
          // stuck elsewhere is ended.
          const auto soon = Clock::now() + std::chrono::seconds(10);
          if (!kill_at || *kill_at > soon) kill_at = soon;
        }
      } else {
        ++running;
      }
    }
    if (running == 0) break;
    if (kill_at && Clock::now() > *kill_at) {
      for (auto& r : ranks) {
        if (r.running) kill(r.pid, SIGKILL);
      }
    }
  }
  for (const auto& m : attempt->Take(absl::ZeroDuration())) {
    if (auto st = Deliver(m, sink); !st.ok() && relay.ok()) relay = st;
  }
  if (!relay.ok()) return relay;
  const std::optional<absl::Status> outcome = attempt->outcome();
  if (outcome && jobs::IsAttemptLost(*outcome) && !first_loss.empty()) {
    return jobs::AttemptLost(absl::UnavailableError(absl::StrCat(
        "distributed attempt lost: ", first_loss, "; rank 0: ", outcome->message())));
  }
  if (outcome && !outcome->ok()) return *outcome;
  if (!first_loss.empty()) {
    return jobs::AttemptLost(absl::UnavailableError(
        absl::StrCat("distributed attempt lost: ", first_loss)));
  }
  if (!outcome) {
    return jobs::AttemptLost(absl::UnavailableError(
        "distributed attempt lost: rank 0 ended without reporting an outcome"));
  }
  return *outcome;
}

}  // namespace traind::dist
