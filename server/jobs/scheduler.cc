#include "server/jobs/scheduler.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

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

Decision Decide(std::vector<WaitingJob> waiting, const std::vector<RunningJob>& running,
                int capacity, const Policy& policy) {
  Decision decision;
  std::map<std::string, int> user_slots, user_jobs;  // as if started, for fair share
  std::map<std::string, int> run_slots, run_jobs;    // really running, for quotas
  int used = 0, pending = 0;
  std::vector<std::string> stopping;
  for (const RunningJob& r : running) {
    used += r.slots;
    user_slots[r.user] += r.slots;
    run_slots[r.user] += r.slots;
    run_jobs[r.user] += 1;
    if (r.stopping) {
      pending += r.slots;
      stopping.push_back(r.id);
    }
  }
  int free = std::max(0, capacity - used);

  // The order: priority, then the user with the fewest slots (counting the
  // jobs ordered before as started), then the longest wait.
  std::vector<WaitingJob> order;
  while (!waiting.empty()) {
    auto best = std::min_element(waiting.begin(), waiting.end(),
                                 [&](const WaitingJob& a, const WaitingJob& b) {
                                   if (a.priority != b.priority) return a.priority > b.priority;
                                   const int sa = user_slots[a.user], sb = user_slots[b.user];
                                   if (sa != sb) return sa < sb;
                                   return a.order < b.order;
                                 });
    user_slots[best->user] += best->slots;
    order.push_back(std::move(*best));
    waiting.erase(best);
  }

  std::set<std::string> victims;  // chosen in this decision
  bool blocked = false;           // a job ahead waits for capacity: no backfill
  int position = 0;
  for (const WaitingJob& job : order) {
    const Limits& limits = policy.For(job.user);
    auto wait = [&](std::string reason) {
      decision.waiting.push_back({job.id, ++position, std::move(reason)});
    };
    if (limits.max_running_jobs >= 0 && run_jobs[job.user] >= limits.max_running_jobs) {
      wait(absl::StrCat("waiting: ", run_jobs[job.user], " of ", job.user, "'s ",
                        limits.max_running_jobs, " running jobs in use"));
      continue;
    }
    if (limits.max_slots >= 0 && run_slots[job.user] + job.slots > limits.max_slots) {
      wait(absl::StrCat("waiting: ", run_slots[job.user], " of ", job.user, "'s ", limits.max_slots,
                        " running slots in use",
                        job.slots > 1 ? absl::StrCat(" (this job takes ", job.slots, ")") : ""));
      continue;
    }
    if (blocked) {
      wait(absl::StrCat("waiting: ", position, position == 1 ? " job" : " jobs",
                        " ahead in the queue"));
      continue;
    }
    const int from_free = std::min(free, job.slots);
    int missing = job.slots - from_free;
    if (missing == 0) {
      free -= job.slots;
      run_slots[job.user] += job.slots;
      run_jobs[job.user] += 1;
      decision.start.push_back(job.id);
      continue;
    }
    if (pending >= missing) {
      free -= from_free;
      pending -= missing;
      wait(absl::StrCat("waiting: ", absl::StrJoin(stopping, ", "),
                        stopping.size() == 1 ? " is" : " are",
                        " stopping at a checkpoint to free slots"));
      continue;
    }
    missing -= pending;
    // Victims: strictly lower priority, preemptible, not already stopping;
    // lowest priority first, then one job that frees enough, then the most
    // recently started.
    std::vector<const RunningJob*> candidates;
    for (const RunningJob& r : running) {
      if (!r.stopping && r.preemptible && r.priority < job.priority && !victims.count(r.id)) {
        candidates.push_back(&r);
      }
    }
    std::vector<const RunningJob*> chosen;
    if (!candidates.empty()) {
      const Priority lowest =
          (*std::min_element(candidates.begin(), candidates.end(), [](auto* a, auto* b) {
            return a->priority < b->priority;
          }))->priority;
      const RunningJob* single = nullptr;
      for (const RunningJob* r : candidates) {
        if (r->priority != lowest || r->slots < missing) continue;
        if (!single || r->slots < single->slots ||
            (r->slots == single->slots && r->started > single->started)) {
          single = r;
        }
      }
      if (single) {
        chosen.push_back(single);
      } else {
        std::sort(candidates.begin(), candidates.end(), [](auto* a, auto* b) {
          if (a->priority != b->priority) return a->priority < b->priority;
          return a->started > b->started;
        });
        int freed = 0;
        for (const RunningJob* r : candidates) {
          if (freed >= missing) break;
          chosen.push_back(r);
          freed += r->slots;
        }
        if (freed < missing) chosen.clear();
      }
    }
    if (chosen.empty()) {
      blocked = true;
      wait(absl::StrCat(
          "waiting: ",
          free == 0
              ? (capacity == 1 ? std::string("the only slot is in use")
                               : absl::StrCat("all ", capacity, " slots in use"))
              : absl::StrCat("takes ", job.slots, " slots, ", free, " of ", capacity, " free"),
          position == 0 ? "; next in line" : ""));
      continue;
    }
    free -= from_free;
    pending = 0;
    std::vector<std::string> names;
    for (const RunningJob* r : chosen) {
      victims.insert(r->id);
      stopping.push_back(r->id);
      decision.preempt.push_back({r->id, job.id});
      names.push_back(absl::StrCat(r->id, " (", Name(r->priority), ")"));
    }
    wait(absl::StrCat("waiting: preempting ", absl::StrJoin(names, ", "), " to make room"));
  }
  return decision;
}

}  // namespace traind::jobs
