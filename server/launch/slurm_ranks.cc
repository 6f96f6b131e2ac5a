// SLURM: an attempt is one batch job, `srun --kill-on-bad-exit=1 traind
// worker` over its allocation; Slurm places and starts the ranks, traind
// follows the job with squeue and scontrol and ends it with scancel.
#include <chrono>
#include <filesystem>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "server/launch/launchers.h"
#include "server/launch/rank_group.h"

namespace traind::launch {
namespace {

using Clock = std::chrono::steady_clock;

// KEY=VALUE fields of `scontrol show job -o`.
std::string Field(const std::string& line, const std::string& key) {
  for (absl::string_view f : absl::StrSplit(line, absl::ByAnyChar(" \t\n"), absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&f, key + "=")) return std::string(f);
  }
  return "";
}

// Single-quoted for sh.
std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

class SlurmRanks final : public RankGroup {
 public:
  SlurmRanks(std::string id, std::vector<std::string> env, std::string work_dir)
      : id_(std::move(id)), env_(std::move(env)), work_dir_(std::move(work_dir)) {}
  ~SlurmRanks() override {
    if (!ended_) Kill();
  }
  std::string scheduler_job() const override { return id_; }

  GroupState Poll() override {
    GroupState state = Seen();
    if (ended_) return state;
    // Slurm is asked once a second, not at every relay turn.
    if (Clock::now() - last_poll_ < std::chrono::seconds(1)) return state;
    last_poll_ = Clock::now();
    auto shown = RunCommand({"scontrol", "show", "job", "-o", id_}, env_);
    if (!shown.ok() || shown->exit_code != 0) {
      // Forgotten after MinJobAge: it ended; rank 0's report says how.
      if (++unknown_ >= 3) ended_ = true;
      return Seen();
    }
    unknown_ = 0;
    const std::string job_state = Field(shown->out, "JobState");
    const std::string reason = Field(shown->out, "Reason");
    std::string note;
    if (job_state == "PENDING" || job_state == "CONFIGURING") {
      note = absl::StrCat("Slurm job ", id_, " is pending (", reason, ")");
      waiting_ = reason.empty() || reason == "None"
                     ? absl::StrCat("waiting in Slurm (Slurm job ", id_, ")")
                     : absl::StrCat("waiting in Slurm: ", reason, " (Slurm job ", id_, ")");
    } else if (job_state == "RUNNING" || job_state == "COMPLETING") {
      waiting_.clear();
      note = absl::StrCat("Slurm job ", id_, " runs on ", Field(shown->out, "NodeList"));
    } else {
      waiting_.clear();
      ended_ = true;
      Ended(job_state, reason);
    }
    state = Seen();
    if (!note.empty() && note != last_note_) state.note = last_note_ = note;
    return state;
  }

  void Kill() override {
    killed_ = true;
    RunCommand({"scancel", id_}, env_).IgnoreError();
  }

 private:
  // The state as last seen, between polls.
  GroupState Seen() const {
    GroupState state;
    state.phase = ended_              ? GroupPhase::kEnded
                  : !waiting_.empty() ? GroupPhase::kWaiting
                                      : GroupPhase::kRunning;
    state.trouble = trouble_;
    state.reason = trouble_ != GroupTrouble::kNone ? trouble_reason_ : waiting_;
    return state;
  }

  // How a Slurm job that left the queue ended.
  void Ended(const std::string& job_state, const std::string& reason) {
    if (job_state == "COMPLETED") return;
    const std::string why =
        reason.empty() || reason == "None" ? "" : absl::StrCat(" (", reason, ")");
    if (job_state == "CANCELLED") {
      if (!killed_) {
        trouble_ = GroupTrouble::kCancelledOutside;
        trouble_reason_ = absl::StrCat("Slurm job ", id_, " was cancelled outside traind", why);
      }
      return;
    }
    // The batch script's own checks (the traind binary on the node) say
    // why in the job's output: a setup to mend, not an attempt to re-run.
    if (auto out = ReadFile(
            (std::filesystem::path(work_dir_) / absl::StrCat("slurm-", id_, ".out")).string());
        out.ok()) {
      for (absl::string_view line : absl::StrSplit(*out, '\n')) {
        if (absl::StartsWith(line, "traind: ") && absl::StrContains(line, "every node needs")) {
          trouble_ = GroupTrouble::kFailed;
          trouble_reason_ = absl::StrCat(line.substr(8), " (Slurm job ", id_, ")");
          return;
        }
      }
    }
    trouble_ = GroupTrouble::kRankLost;
    trouble_reason_ = absl::StrCat("Slurm job ", id_, " ended ", job_state, why);
  }

  const std::string id_;
  const std::vector<std::string> env_;
  const std::string work_dir_;
  Clock::time_point last_poll_{};
  std::string last_note_;
  std::string waiting_;  // what Slurm waits for, as last seen
  GroupTrouble trouble_ = GroupTrouble::kNone;
  std::string trouble_reason_;
  int unknown_ = 0;
  bool ended_ = false;
  bool killed_ = false;
};

std::string JobState(const std::string& id, const std::vector<std::string>& env) {
  auto shown = RunCommand({"scontrol", "show", "job", "-o", id}, env);
  if (!shown.ok() || shown->exit_code != 0) return "";
  return Field(shown->out, "JobState");
}

}  // namespace

std::string SlurmAttemptPath(const std::string& work_dir) {
  return (std::filesystem::path(work_dir) / "slurm-attempt").string();
}

namespace {

absl::Status SaveRecord(const std::string& work_dir, const KeptAttempt& r) {
  return WriteFileAtomically(
      SlurmAttemptPath(work_dir),
      absl::StrCat("attempt=", r.attempt, "\nsecret=", r.secret, "\nslurm_job=", r.scheduler_job,
                   "\ncontrol=", r.control, "\n"));
}

// The kept record, if its Slurm job still pends or runs.
std::optional<KeptAttempt> LiveRecord(const std::string& work_dir,
                                      const std::vector<std::string>& env) {
  auto text = ReadFile(SlurmAttemptPath(work_dir));
  if (!text.ok()) return std::nullopt;
  KeptAttempt r;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&line, "attempt=")) r.attempt = std::string(line);
    if (absl::ConsumePrefix(&line, "secret=")) r.secret = std::string(line);
    if (absl::ConsumePrefix(&line, "slurm_job=")) r.scheduler_job = std::string(line);
    if (absl::ConsumePrefix(&line, "control=")) r.control = std::string(line);
  }
  const std::string state = r.scheduler_job.empty() ? "" : JobState(r.scheduler_job, env);
  if (r.attempt.empty() || r.secret.empty() ||
      (state != "PENDING" && state != "CONFIGURING" && state != "RUNNING")) {
    return std::nullopt;
  }
  return r;
}

void ForgetRecord(const std::string& work_dir) {
  std::error_code ec;
  std::filesystem::remove(SlurmAttemptPath(work_dir), ec);
}

std::optional<TakenUp> TakeUp(const std::string& work_dir, const std::vector<std::string>& env) {
  std::optional<KeptAttempt> live = LiveRecord(work_dir, env);
  if (!live) {
    ForgetRecord(work_dir);
    return std::nullopt;
  }
  TakenUp out;
  out.record = *live;
  out.group = std::make_unique<SlurmRanks>(live->scheduler_job, env, work_dir);
  return out;
}

}  // namespace

const AttemptKeeper kSlurmKeeper = {SaveRecord, LiveRecord, TakeUp, ForgetRecord};

absl::StatusOr<std::unique_ptr<RankGroup>> StartSlurmRanks(const LaunchRequest& request) {
  const auto& s = request.dist.slurm();
  const int nodes = std::max(1, s.nodes());
  const int per_node = request.world_size / nodes;
  // The batch script names no secret: those travel in sbatch's environment.
  std::string script = absl::StrCat(
      "#!/bin/sh\n", "# traind: one attempt of ", request.job_name, "\n",
      "first=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n",
      "addr=$(scontrol show node \"$first\" | tr ' ' '\\n' | sed -n 's/^NodeAddr=//p' | head -n "
      "1)\n",
      "export MASTER_ADDR=\"${addr:-$first}\"\n", "export MASTER_PORT=", request.master_port, "\n",
      "test -x ", Quote(request.worker_binary), " || { echo \"traind: ", request.worker_binary,
      " is not on $(hostname): every node needs the traind binary at that path\" >&2; exit 2; }\n",
      "exec srun --kill-on-bad-exit=1 ", Quote(request.worker_binary), " worker\n");
  const std::string path =
      (std::filesystem::path(request.work_dir) / absl::StrCat(request.job_name, ".sbatch"))
          .string();
  std::error_code ec;
  std::filesystem::create_directories(request.work_dir, ec);
  if (auto st = WriteFileAtomically(path, script); !st.ok()) return st;
  std::vector<std::string> argv = {"sbatch",
                                   "--parsable",
                                   absl::StrCat("--job-name=", request.job_name),
                                   absl::StrCat("--nodes=", nodes),
                                   absl::StrCat("--ntasks-per-node=", per_node),
                                   absl::StrCat("--output=", request.work_dir, "/slurm-%j.out"),
                                   "--export=ALL"};
  if (s.cpus_per_task() > 0) argv.push_back(absl::StrCat("--cpus-per-task=", s.cpus_per_task()));
  if (s.gpus_per_task() > 0) argv.push_back(absl::StrCat("--gpus-per-task=", s.gpus_per_task()));
  if (s.time_limit_minutes() > 0) {
    argv.push_back(absl::StrCat("--time=", s.time_limit_minutes()));
  }
  if (!s.partition().empty()) argv.push_back(absl::StrCat("--partition=", s.partition()));
  if (!s.account().empty()) argv.push_back(absl::StrCat("--account=", s.account()));
  if (!s.qos().empty()) argv.push_back(absl::StrCat("--qos=", s.qos()));
  if (s.has_nice()) argv.push_back(absl::StrCat("--nice=", s.nice()));
  argv.push_back(path);
  auto submitted = RunCommand(argv, request.env);
  if (!submitted.ok()) return submitted.status();
  std::string id(absl::StripAsciiWhitespace(submitted->out));
  id = id.substr(0, id.find(';'));  // "id;cluster"
  int64_t numeric;
  if (submitted->exit_code != 0 || !absl::SimpleAtoi(id, &numeric)) {
    return absl::FailedPreconditionError(
        absl::StrCat("sbatch refused the attempt: ", absl::StripAsciiWhitespace(submitted->err)));
  }
  return std::unique_ptr<RankGroup>(new SlurmRanks(id, request.env, request.work_dir));
}

}  // namespace traind::launch
