// scheduler_bench [--jobs N] [--users U] [--slots S] [--reps R] [--changes C]
// What scheduling costs with a long queue: N waiting jobs from U users of
// unequal appetite (user k queues about 1/(k+1) of the rest's share), mixed
// priorities, S slots all busy and the policy's quotas in force.
//
// 1. One decision (jobs::Decide): the order of the whole queue, who starts,
//    who is preempted, every waiting job's place and reason.
// 2. The daemon's core with that queue (JobManager on a real SQLite store,
//    the fake engine holding S jobs running): the time of a SubmitJob and of
//    a priority change (SetJobPriority: stored, logged, the queue decided
//    again), and the memory the queue takes (resident set before and after).
//
// Prints milliseconds (median and 99th percentile) and bytes per job.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/flags.h"
#include "server/jobs/job_manager.h"
#include "server/jobs/scheduler.h"
#include "tests/jobs/fake_engine.h"

namespace {

namespace fs = std::filesystem;
using traind::bench::Arg;
using traind::jobs::Caller;
using traind::jobs::Decide;
using traind::jobs::RunningJob;
using traind::jobs::WaitingJob;
using trainer::v1::Priority;
using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point since) {
  return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

struct Figures {
  double median = 0, p99 = 0;
};

Figures Summarise(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  if (ms.empty()) return {};
  return {ms[ms.size() / 2], ms[std::min(ms.size() - 1, ms.size() * 99 / 100)]};
}

// Resident memory of this process, from /proc/self/status (VmRSS, kB).
long ResidentKb() {
  std::ifstream in("/proc/self/status");
  std::string key;
  long value = 0;
  while (in >> key) {
    if (key == "VmRSS:") {
      in >> value;
      return value;
    }
    in.ignore(1 << 12, '\n');
  }
  return -1;
}

// The queue: who submitted each job and at which priority. User k's share
// falls as 1/(k+1), so user0 queues about a fifth of all jobs and most users
// a handful; 70 % NORMAL, 20 % LOW, 10 % HIGH; one job in 20 takes 2 slots.
struct Queued {
  std::string user;
  Priority priority;
  int slots;
};

std::vector<Queued> MakeQueue(int jobs, int users, uint32_t seed) {
  std::vector<double> weight(users);
  for (int k = 0; k < users; ++k) weight[k] = 1.0 / (k + 1);
  std::mt19937 rng(seed);
  std::discrete_distribution<int> who(weight.begin(), weight.end());
  std::uniform_int_distribution<int> pct(0, 99);
  std::vector<Queued> queue;
  queue.reserve(jobs);
  for (int i = 0; i < jobs; ++i) {
    const int p = pct(rng);
    queue.push_back({absl::StrCat("user", who(rng)),
                     p < 20   ? trainer::v1::LOW
                     : p < 90 ? trainer::v1::NORMAL
                              : trainer::v1::HIGH,
                     pct(rng) < 5 ? 2 : 1});
  }
  return queue;
}

traind::jobs::Policy BenchPolicy() {
  auto policy = traind::jobs::Policy::Parse(
      R"({"default": {"max_running_jobs": 4, "max_slots": 4, "max_priority": "HIGH"}})");
  if (!policy.ok()) {
    std::fprintf(stderr, "scheduler_bench: %s\n", std::string(policy.status().message()).c_str());
    std::exit(1);
  }
  return *policy;
}

void PureDecisions(const std::vector<Queued>& queue, int slots, int reps) {
  std::vector<WaitingJob> waiting;
  for (size_t i = 0; i < queue.size(); ++i) {
    waiting.push_back({absl::StrCat("job-", i + 1), queue[i].user, queue[i].priority,
                       static_cast<int64_t>(i + 1), queue[i].slots});
  }
  // Every slot busy, with lower priorities than the queue's HIGH jobs, so
  // the decision also picks victims.
  std::vector<RunningJob> running;
  for (int s = 0; s < slots; ++s) {
    RunningJob r;
    r.id = absl::StrCat("running-", s);
    r.user = absl::StrCat("user", s % 7);
    r.priority = s % 2 ? trainer::v1::LOW : trainer::v1::NORMAL;
    r.started = s;
    running.push_back(r);
  }
  const traind::jobs::Policy policy = BenchPolicy();
  std::vector<double> ms;
  size_t placed = 0;
  for (int r = 0; r < reps; ++r) {
    const auto start = Clock::now();
    const auto decision = Decide(waiting, running, slots, policy);
    ms.push_back(Ms(start));
    placed = decision.waiting.size() + decision.start.size();
  }
  const Figures f = Summarise(ms);
  std::printf("decision (jobs::Decide, %zu jobs placed, %d reps): median %.3f ms, p99 %.3f ms\n",
              placed, reps, f.median, f.p99);
}

int InDaemon(const std::vector<Queued>& queue, int slots, int changes) {
  const fs::path base = fs::temp_directory_path() / "traind-scheduler-bench";
  fs::remove_all(base);
  fs::create_directories(base / "data" / "set" / "a");
  fs::create_directories(base / "weights");
  auto engine = std::make_shared<traind::jobs::FakeEngine>();
  engine->Hold();  // the running jobs stay running
  traind::jobs::JobManager::Options options;
  options.state_dir = (base / "state").string();
  options.data_root = (base / "data").string();
  options.weights_root = (base / "weights").string();
  options.workers = slots;
  options.threads_per_job = 1;
  options.max_queued = static_cast<int>(queue.size()) + slots;
  options.max_queued_per_user = options.max_queued;
  options.policy = BenchPolicy();
  options.engine = engine;
  auto manager = traind::jobs::JobManager::Create(options);
  if (!manager.ok()) {
    std::fprintf(stderr, "scheduler_bench: %s\n", std::string(manager.status().message()).c_str());
    return 1;
  }
  auto spec = [](Priority priority) {
    trainer::v1::JobSpec s;
    s.set_kind(trainer::v1::SCRATCH);
    s.set_dataset("set");
    s.set_epochs(1);
    s.set_priority(priority);
    return s;
  };
  // URGENT jobs take every slot first; nothing in the queue preempts them.
  for (int s = 0; s < slots; ++s) {
    if (auto id = (*manager)->Submit(spec(trainer::v1::URGENT), ""); !id.ok()) {
      std::fprintf(stderr, "scheduler_bench: %s\n", std::string(id.status().message()).c_str());
      return 1;
    }
  }
  const long rss_before = ResidentKb();
  std::vector<double> submit_ms;
  std::vector<std::string> ids;
  for (const Queued& q : queue) {
    const auto start = Clock::now();
    auto id = (*manager)->Submit(spec(q.priority), "", Caller{q.user, false});
    submit_ms.push_back(Ms(start));
    if (!id.ok()) {
      std::fprintf(stderr, "scheduler_bench: %s\n", std::string(id.status().message()).c_str());
      return 1;
    }
    ids.push_back(*id);
  }
  const long rss_after = ResidentKb();
  std::mt19937 rng(7);
  std::uniform_int_distribution<size_t> pick(0, ids.size() - 1);
  std::vector<double> change_ms;
  for (int c = 0; c < changes; ++c) {
    const std::string& id = ids[pick(rng)];
    const Priority to = c % 2 ? trainer::v1::LOW : trainer::v1::HIGH;
    const auto start = Clock::now();
    auto job = (*manager)->SetPriority(id, to);
    change_ms.push_back(Ms(start));
    if (!job.ok()) {
      std::fprintf(stderr, "scheduler_bench: %s\n", std::string(job.status().message()).c_str());
      return 1;
    }
  }
  auto last = (*manager)->GetJob(ids.back());
  const Figures submit = Summarise(submit_ms), change = Summarise(change_ms);
  std::printf("in the daemon's core (%zu queued, %d running, SQLite store):\n", ids.size(), slots);
  std::printf("  submit: median %.3f ms, p99 %.3f ms (the last at %.3f ms)\n", submit.median,
              submit.p99, submit_ms.back());
  std::printf("  priority change (%d): median %.3f ms, p99 %.3f ms\n", changes, change.median,
              change.p99);
  std::printf("  memory: resident %.1f MB more for the queue, %.0f bytes per queued job\n",
              (rss_after - rss_before) / 1024.0,
              (rss_after - rss_before) * 1024.0 / static_cast<double>(ids.size()));
  if (last.ok()) {
    std::printf("  the last job: position %d, \"%s\"\n", last->queue_position(),
                last->waiting_reason().c_str());
  }
  manager->reset();  // stops the held jobs as a shutdown does
  fs::remove_all(base);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const int jobs = Arg(argc, argv, "--jobs", 10000);
  const int users = Arg(argc, argv, "--users", 100);
  const int slots = Arg(argc, argv, "--slots", 8);
  const int reps = Arg(argc, argv, "--reps", 50);
  const int changes = Arg(argc, argv, "--changes", 200);
  const auto queue = MakeQueue(jobs, users, 1);
  std::printf("scheduler_bench: %d waiting jobs from %d users, %d slots busy\n", jobs, users,
              slots);
  PureDecisions(queue, slots, reps);
  if (Arg(argc, argv, "--daemon", 1) != 0) return InDaemon(queue, slots, changes);
  return 0;
}
