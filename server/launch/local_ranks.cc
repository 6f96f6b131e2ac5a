// LOCAL_PROCESSES: one child process of the daemon per rank.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "server/launch/launchers.h"
#include "server/launch/rank_group.h"

namespace traind::launch {
namespace {

std::string DescribeExit(int status) {
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  return "stopped";
}

class LocalRanks final : public RankGroup {
 public:
  struct Rank {
    int rank = 0;
    pid_t pid = -1;
    bool running = false;
    int wait_status = 0;
  };
  explicit LocalRanks(std::vector<Rank> ranks) : ranks_(std::move(ranks)) {}
  ~LocalRanks() override {
    for (auto& r : ranks_) {
      if (!r.running) continue;
      kill(r.pid, SIGKILL);
      waitpid(r.pid, &r.wait_status, 0);
    }
  }

  GroupState Poll() override {
    GroupState state;
    int running = 0;
    for (auto& r : ranks_) {
      if (!r.running) continue;
      if (waitpid(r.pid, &r.wait_status, WNOHANG) != r.pid) {
        ++running;
        continue;
      }
      r.running = false;
      const bool clean = WIFEXITED(r.wait_status) && WEXITSTATUS(r.wait_status) == 0;
      // A rank that was killed is the cause; ranks that then fail on the
      // broken collective are not.
      if (!clean && (loss_.empty() || (WIFSIGNALED(r.wait_status) && !by_signal_))) {
        by_signal_ = WIFSIGNALED(r.wait_status);
        loss_ = absl::StrCat("rank ", r.rank, " (pid ", r.pid, ") ", DescribeExit(r.wait_status));
      }
    }
    state.phase = running > 0 ? GroupPhase::kRunning : GroupPhase::kEnded;
    if (!loss_.empty()) {
      state.trouble = GroupTrouble::kRankLost;
      state.reason = loss_;
    }
    return state;
  }

  void Kill() override {
    for (auto& r : ranks_) {
      if (r.running) kill(r.pid, SIGKILL);
    }
  }

 private:
  std::vector<Rank> ranks_;
  std::string loss_;
  bool by_signal_ = false;
};

}  // namespace

std::string FindOnPath(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "", ':', absl::SkipEmpty())) {
    const std::string candidate = absl::StrCat(dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return name;
}

absl::StatusOr<int> SpawnChild(const std::vector<std::string>& argv,
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

absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         const std::vector<std::string>& env) {
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0) return absl::InternalError("pipe() failed");
  if (pipe2(err, O_CLOEXEC) != 0) {
    close(out[0]);
    close(out[1]);
    return absl::InternalError("pipe() failed");
  }
  std::vector<char*> a, e;
  const std::string program = FindOnPath(argv[0]);
  a.push_back(const_cast<char*>(program.c_str()));
  for (size_t i = 1; i < argv.size(); ++i) a.push_back(const_cast<char*>(argv[i].c_str()));
  a.push_back(nullptr);
  for (const auto& s : env) e.push_back(const_cast<char*>(s.c_str()));
  e.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) return absl::ResourceExhaustedError("fork() failed");
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(err[1], 2);
    syscall(SYS_close_range, 3U, ~0U, 0U);
    execve(a[0], a.data(), e.data());
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  CommandResult result;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open = 2;
  char buf[4096];
  while (open > 0) {
    if (poll(fds, 2, -1) < 0) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP))) continue;
      const ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open;
      } else {
        (i == 0 ? result.out : result.err).append(buf, n);
      }
    }
  }
  int status = 0;
  waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (result.exit_code == 127 && result.out.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("cannot run ", argv[0]));
  }
  return result;
}

absl::StatusOr<std::unique_ptr<RankGroup>> StartLocalRanks(const LaunchRequest& request) {
  std::vector<LocalRanks::Rank> ranks;
  auto group_on_error = [&](absl::Status st) -> absl::Status {
    LocalRanks cleanup(std::move(ranks));  // ends those already started
    return st;
  };
  for (int r = 0; r < request.world_size; ++r) {
    std::vector<std::string> env = request.env;
    env.push_back(absl::StrCat("RANK=", r));
    env.push_back(absl::StrCat("LOCAL_RANK=", r));
    env.push_back(absl::StrCat("WORLD_SIZE=", request.world_size));
    env.push_back("MASTER_ADDR=127.0.0.1");
    env.push_back(absl::StrCat("MASTER_PORT=", request.master_port));
    env.push_back("TRAIND_RANK_ADDR=127.0.0.1");
    std::vector<std::string> argv;
    for (const auto& w : request.rank_wrapper) {
      argv.push_back(absl::StrReplaceAll(w, {{"{rank}", absl::StrCat(r)}}));
    }
    argv.push_back(request.worker_binary);
    argv.push_back("worker");
    argv[0] = FindOnPath(argv[0]);
    auto pid = SpawnChild(argv, env);
    if (!pid.ok()) return group_on_error(pid.status());
    ranks.push_back({r, *pid, true, 0});
  }
  return std::unique_ptr<RankGroup>(new LocalRanks(std::move(ranks)));
}

}  // namespace traind::launch
