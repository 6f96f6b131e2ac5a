#include "server/jobs/scheduler.h"

#include <algorithm>
#include <fstream>
#include <numeric>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace traind::jobs {
namespace {

using trainer::v1::Priority;

absl::Status ParseLimits(const nlohmann::json& j, const std::string& where, Limits* limits) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": not an object"));
  for (const auto& [key, value] : j.items()) {
    const std::string field = absl::StrCat(where, ".", key);
    int* count = key == "max_running_jobs"  ? &limits->max_running_jobs
                 : key == "max_slots"       ? &limits->max_slots
                 : key == "max_queued_jobs" ? &limits->max_queued_jobs
                 : key == "max_world_size"  ? &limits->max_world_size
                                            : nullptr;
    if (count) {
      if (!value.is_number_integer() || value.get<int64_t>() < -1 ||
          value.get<int64_t>() > 1000000) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": must be an integer in [-1, 1000000] (-1: no limit)"));
      }
      *count = value.get<int>();
    } else if (key == "max_priority") {
      Priority p;
      if (!value.is_string() || !trainer::v1::Priority_Parse(value.get<std::string>(), &p) ||
          p == trainer::v1::PRIORITY_UNSPECIFIED) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": must be one of LOW, NORMAL, HIGH, URGENT"));
      }
      limits->max_priority = p;
    } else if (key == "may_opt_out_of_preemption") {
      if (!value.is_boolean())
        return absl::InvalidArgumentError(absl::StrCat(field, ": not a boolean"));
      limits->may_opt_out_of_preemption = value.get<bool>();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(field,
                       ": unknown (known: max_running_jobs, max_slots, max_queued_jobs, "
                       "max_world_size, max_priority, may_opt_out_of_preemption)"));
    }
  }
  return absl::OkStatus();
}

std::string Name(Priority p) { return trainer::v1::Priority_Name(p); }

}  // namespace

struct Policy::Parser {
  static absl::Status Clusters(const nlohmann::json& j, Policy* policy);
};

absl::StatusOr<Policy> Policy::Parse(std::string_view text) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("policy: not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("policy: not a JSON object");
  Policy policy;
  for (const auto& [key, value] : j.items()) {
    if (key == "default") {
      if (auto st = ParseLimits(value, "default", &policy.default_); !st.ok()) return st;
    } else if (key == "clusters") {
      if (auto st = Parser::Clusters(value, &policy); !st.ok()) return st;
    } else if (key != "users") {
      return absl::InvalidArgumentError(
          absl::StrCat("policy: unknown field \"", key, "\" (known: default, users, clusters)"));
    }
  }
  if (j.contains("users")) {
    if (!j["users"].is_object()) return absl::InvalidArgumentError("users: not an object");
    for (const auto& [user, value] : j["users"].items()) {
      Limits limits = policy.default_;
      if (auto st = ParseLimits(value, absl::StrCat("users.", user), &limits); !st.ok()) {
        return st;
      }
      policy.users_[user] = limits;
    }
  }
  return policy;
}

absl::StatusOr<Policy> Policy::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("policy file ", path, ": cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  auto policy = Parse(text.str());
  if (!policy.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy file ", path, ": ", policy.status().message()));
  }
  return policy;
}

absl::Status Policy::Parser::Clusters(const nlohmann::json& j, Policy* policy) {
  if (!j.is_object()) return absl::InvalidArgumentError("clusters: not an object");
  for (const auto& [key, value] : j.items()) {
    const bool nice = key == "slurm_nice";
    if (key != "slurm_qos" && !nice && key != "kubernetes_priority_class") {
      return absl::InvalidArgumentError(absl::StrCat(
          "clusters.", key, ": unknown (known: slurm_qos, slurm_nice, kubernetes_priority_class)"));
    }
    if (!value.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("clusters.", key, ": not an object"));
    }
    for (const auto& [name, mapped] : value.items()) {
      const std::string field = absl::StrCat("clusters.", key, ".", name);
      Priority p;
      if (!trainer::v1::Priority_Parse(name, &p) || p == trainer::v1::PRIORITY_UNSPECIFIED) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": not a priority (LOW, NORMAL, HIGH, URGENT)"));
      }
      if (nice) {
        if (!mapped.is_number_integer() || mapped.get<int64_t>() < -10000 ||
            mapped.get<int64_t>() > 10000) {
          return absl::InvalidArgumentError(
              absl::StrCat(field, ": must be an integer in [-10000, 10000]"));
        }
        policy->slurm_nice_[p] = mapped.get<int>();
      } else {
        if (!mapped.is_string() || mapped.get<std::string>().empty()) {
          return absl::InvalidArgumentError(absl::StrCat(field, ": must be a non-empty name"));
        }
        (key == "slurm_qos" ? policy->slurm_qos_ : policy->kube_priority_class_)[p] =
            mapped.get<std::string>();
      }
    }
  }
  return absl::OkStatus();
}

void Policy::MapPriority(Priority priority, trainer::v1::Distributed* dist) const {
  if (dist->launcher() == trainer::v1::SLURM) {
    auto* slurm = dist->mutable_slurm();
    if (auto it = slurm_qos_.find(priority); it != slurm_qos_.end() && slurm->qos().empty()) {
      slurm->set_qos(it->second);
    }
    if (auto it = slurm_nice_.find(priority); it != slurm_nice_.end() && !slurm->has_nice()) {
      slurm->set_nice(it->second);
    }
  } else if (dist->launcher() == trainer::v1::KUBERNETES) {
    auto* kube = dist->mutable_kubernetes();
    if (auto it = kube_priority_class_.find(priority);
        it != kube_priority_class_.end() && kube->priority_class().empty()) {
      kube->set_priority_class(it->second);
    }
  }
}

const Limits& Policy::For(const std::string& user) const {
  auto it = users_.find(user);
  return it == users_.end() ? default_ : it->second;
}

int JobSlots(const trainer::v1::JobSpec& spec, int capacity) {
  const auto& d = spec.distributed();
  const bool local = d.launcher() == trainer::v1::LOCAL_PROCESSES ||
                     d.launcher() == trainer::v1::LAUNCHER_UNSPECIFIED;
  if (spec.kind() == trainer::v1::SWEEP || !local || d.world_size() <= 1) return 1;
  return std::max(1, std::min(d.world_size(), capacity));
}

Priority EffectivePriority(const trainer::v1::JobSpec& spec) {
  return spec.priority() == trainer::v1::PRIORITY_UNSPECIFIED ? trainer::v1::NORMAL
                                                              : spec.priority();
}

std::string Describe(const WaitReason& r, const std::string& user) {
  switch (r.kind) {
    case WaitReason::kNone:
      return "";
    case WaitReason::kRunningJobsQuota:
      return absl::StrCat("waiting: ", r.used, " of ", user, "'s ", r.limit,
                          " running jobs in use");
    case WaitReason::kSlotsQuota:
      return absl::StrCat("waiting: ", r.used, " of ", user, "'s ", r.limit,
                          " running slots in use",
                          r.slots > 1 ? absl::StrCat(" (this job takes ", r.slots, ")") : "");
    case WaitReason::kBehind:
      return absl::StrCat("waiting: ", r.ahead, r.ahead == 1 ? " job" : " jobs",
                          " ahead in the queue");
    case WaitReason::kStopping:
    case WaitReason::kPreempting:
      return r.text;
    case WaitReason::kNoRoom:
      return absl::StrCat(
          "waiting: ",
          r.free == 0
              ? (r.capacity == 1 ? std::string("the only slot is in use")
                                 : absl::StrCat("all ", r.capacity, " slots in use"))
              : absl::StrCat("takes ", r.slots, " slots, ", r.free, " of ", r.capacity, " free"),
          r.ahead == 0 ? "; next in line" : "");
  }
  return "";
}

namespace {

// The fair-share order of `waiting`: priority, then the user with the fewest
// slots (counting the jobs ordered before as started), then the longest
// wait. Taken one job at a time that is a merge of the users' own queues
// (each in submission order) by (the user's slots, the next job's wait); a
// user's slots when its job comes up are known in advance (its running
// slots, its jobs of higher priorities, its earlier jobs of this one), so
// the merge is one sort by (priority, those slots, submission order).
// `running_slots`: each user's slots in running jobs.
std::vector<size_t> FairShareOrder(const std::vector<WaitingJob>& waiting,
                                   const std::vector<int>& user_of,
                                   const std::vector<int>& running_slots) {
  const size_t n = waiting.size(), users = running_slots.size();
  constexpr size_t kLevels = trainer::v1::Priority_MAX + 1;
  // Level 0 is the highest priority. Priorities are checked at submit; a
  // stored one from elsewhere is clamped.
  auto level_of = [&](size_t job) {
    const int priority = std::clamp<int>(waiting[job].priority, trainer::v1::Priority_MIN,
                                         trainer::v1::Priority_MAX);
    return static_cast<size_t>(trainer::v1::Priority_MAX - priority);
  };
  std::vector<uint32_t> by_wait(n);  // submission order
  std::iota(by_wait.begin(), by_wait.end(), 0);
  if (!std::is_sorted(waiting.begin(), waiting.end(),
                      [](const auto& a, const auto& b) { return a.order < b.order; })) {
    std::sort(by_wait.begin(), by_wait.end(),
              [&](uint32_t a, uint32_t b) { return waiting[a].order < waiting[b].order; });
  }
  // slots[user * kLevels + level]: first the user's slots in jobs of that
  // priority, then, as a running sum, the user's slots before its first job
  // of that priority comes up.
  std::vector<int64_t> slots(users * kLevels);
  for (size_t job = 0; job < n; ++job) {
    slots[user_of[job] * kLevels + level_of(job)] += waiting[job].slots;
  }
  for (size_t u = 0; u < users; ++u) {
    int64_t before = running_slots[u];
    for (size_t level = 0; level < kLevels; ++level) {
      const int64_t here = slots[u * kLevels + level];
      slots[u * kLevels + level] = before;
      before += here;
    }
  }
  // The key: level (3 bits), the user's slots when the job comes up (29
  // bits; at most the slots of every queued job), its rank in submission
  // order (32 bits).
  std::vector<uint64_t> keys(n);
  for (uint32_t rank = 0; rank < n; ++rank) {
    const size_t job = by_wait[rank];
    const size_t level = level_of(job);
    int64_t& before = slots[user_of[job] * kLevels + level];
    keys[rank] = static_cast<uint64_t>(level) << 61 |
                 static_cast<uint64_t>(std::min<int64_t>(before, (int64_t{1} << 29) - 1)) << 32 |
                 rank;
    before += waiting[job].slots;
  }
  std::sort(keys.begin(), keys.end());
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = by_wait[static_cast<uint32_t>(keys[i])];
  return order;
}

}  // namespace

Decision Decide(const std::vector<WaitingJob>& waiting, const std::vector<RunningJob>& running,
                int capacity, const Policy& policy) {
  Decision decision;
  // Users as small numbers, their limits looked up once.
  absl::flat_hash_map<std::string_view, int> user_ids;
  std::vector<const Limits*> limits;
  auto user_id = [&](const std::string& user) {
    auto [it, added] = user_ids.try_emplace(user, static_cast<int>(limits.size()));
    if (added) limits.push_back(&policy.For(user));
    return it->second;
  };
  std::vector<int> user_of(waiting.size());
  for (size_t i = 0; i < waiting.size(); ++i) user_of[i] = user_id(waiting[i].user);
  std::vector<int> running_user(running.size());
  for (size_t i = 0; i < running.size(); ++i) running_user[i] = user_id(running[i].user);

  const size_t users = limits.size();
  std::vector<int> run_slots(users), run_jobs(users);
  int used = 0, pending = 0;
  std::vector<std::string> stopping;
  for (size_t i = 0; i < running.size(); ++i) {
    const RunningJob& r = running[i];
    used += r.slots;
    run_slots[running_user[i]] += r.slots;
    run_jobs[running_user[i]] += 1;
    if (r.stopping) {
      pending += r.slots;
      stopping.push_back(r.id);
    }
  }
  int free = std::max(0, capacity - used);
  const std::vector<size_t> order = FairShareOrder(waiting, user_of, run_slots);

  std::vector<bool> victims(running.size());  // chosen in this decision
  // A job ahead waits for capacity: no backfill.
  bool blocked = false;
  int position = 0;
  decision.waiting.reserve(order.size());
  for (const size_t index : order) {
    const WaitingJob& job = waiting[index];
    const int user = user_of[index];
    const Limits& limit = *limits[user];
    auto wait = [&](WaitReason reason) {
      decision.waiting.push_back({index, ++position, std::move(reason)});
    };
    WaitReason reason;
    if (limit.max_running_jobs >= 0 && run_jobs[user] >= limit.max_running_jobs) {
      reason.kind = WaitReason::kRunningJobsQuota;
      reason.used = run_jobs[user];
      reason.limit = limit.max_running_jobs;
      wait(std::move(reason));
      continue;
    }
    if (limit.max_slots >= 0 && run_slots[user] + job.slots > limit.max_slots) {
      reason.kind = WaitReason::kSlotsQuota;
      reason.used = run_slots[user];
      reason.limit = limit.max_slots;
      reason.slots = job.slots;
      wait(std::move(reason));
      continue;
    }
    if (blocked) {
      reason.kind = WaitReason::kBehind;
      reason.ahead = position;
      wait(std::move(reason));
      continue;
    }
    const int from_free = std::min(free, job.slots);
    int missing = job.slots - from_free;
    if (missing == 0) {
      free -= job.slots;
      run_slots[user] += job.slots;
      run_jobs[user] += 1;
      decision.start.push_back(index);
      continue;
    }
    if (pending >= missing) {
      free -= from_free;
      pending -= missing;
      reason.kind = WaitReason::kStopping;
      reason.text = absl::StrCat("waiting: ", absl::StrJoin(stopping, ", "),
                                 stopping.size() == 1 ? " is" : " are",
                                 " stopping at a checkpoint to free slots");
      wait(std::move(reason));
      continue;
    }
    missing -= pending;
    // Victims: strictly lower priority, preemptible, not already stopping;
    // lowest priority first, then one job that frees enough, then the most
    // recently started.
    std::vector<size_t> candidates;
    for (size_t i = 0; i < running.size(); ++i) {
      const RunningJob& r = running[i];
      if (!r.stopping && r.preemptible && r.priority < job.priority && !victims[i]) {
        candidates.push_back(i);
      }
    }
    std::vector<size_t> chosen;
    if (!candidates.empty()) {
      Priority lowest = running[candidates[0]].priority;
      for (size_t i : candidates) lowest = std::min(lowest, running[i].priority);
      const RunningJob* single = nullptr;
      for (size_t i : candidates) {
        const RunningJob* r = &running[i];
        if (r->priority != lowest || r->slots < missing) continue;
        if (!single || r->slots < single->slots ||
            (r->slots == single->slots && r->started > single->started)) {
          single = r;
        }
      }
      if (single) {
        chosen.push_back(static_cast<size_t>(single - running.data()));
      } else {
        std::sort(candidates.begin(), candidates.end(), [&](size_t a, size_t b) {
          if (running[a].priority != running[b].priority) {
            return running[a].priority < running[b].priority;
          }
          return running[a].started > running[b].started;
        });
        int freed = 0;
        for (size_t i : candidates) {
          if (freed >= missing) break;
          chosen.push_back(i);
          freed += running[i].slots;
        }
        if (freed < missing) chosen.clear();
      }
    }
    if (chosen.empty()) {
      blocked = true;
      reason.kind = WaitReason::kNoRoom;
      reason.free = free;
      reason.capacity = capacity;
      reason.slots = job.slots;
      reason.ahead = position;
      wait(std::move(reason));
      continue;
    }
    free -= from_free;
    pending = 0;
    std::vector<std::string> names;
    for (size_t i : chosen) {
      victims[i] = true;
      stopping.push_back(running[i].id);
      decision.preempt.push_back({i, index});
      names.push_back(absl::StrCat(running[i].id, " (", Name(running[i].priority), ")"));
    }
    reason.kind = WaitReason::kPreempting;
    reason.text = absl::StrCat("waiting: preempting ", absl::StrJoin(names, ", "), " to make room");
    wait(std::move(reason));
  }
  return decision;
}

}  // namespace traind::jobs
