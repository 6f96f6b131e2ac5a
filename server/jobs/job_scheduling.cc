// JobManager: carrying out the scheduler's decisions (scheduler.h), and the
// calls that change them: pause, resume, priority, policy.
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/spec.h"
#include "server/jobs/job_entry.h"
#include "server/jobs/job_manager.h"

namespace traind::jobs {
void JobManager::Enqueue(const std::shared_ptr<Entry>& entry) {
  const Job& job = Held(*entry).job;
  queue_.Add(entry, {entry->id, job.owner(), EffectivePriority(job.spec()), entry->index,
                     JobSlots(job.spec(), options_.workers)});
}

void JobManager::Reschedule() {
  if (stopping_) return;
  std::vector<RunningJob> running;
  running.reserve(holding_.size());
  for (const auto& e : holding_) {
    const EntryState& held = Held(*e);
    RunningJob r;
    r.id = e->id;
    r.user = held.job.owner();
    r.priority = EffectivePriority(held.job.spec());
    r.slots = held.slots;
    r.preemptible = !held.job.spec().has_preemptible() || held.job.spec().preemptible();
    r.started = held.started;
    r.stopping = held.pause_requested || !held.preempted_by.empty() ||
                 held.job.state() == trainer::v1::CANCELLING || e->cancel.cancelled();
    running.push_back(std::move(r));
  }
  Decision decision = Decide(queue_.jobs(), running, options_.workers, policy_);
  // The decision names waiting jobs by their place in queue_, which
  // changes below.
  for (const Decision::Preemption& p : decision.preempt) {
    Entry& victim = *holding_[p.victim];
    Held(victim).preempted_by = queue_.entry(p.for_job)->id;
    victim.cancel.Interrupt();  // a checkpoint at its next batch boundary
  }
  for (Decision::Place& place : decision.waiting) {
    queue_.Place(place.job, place.position, std::move(place.reason));
  }
  std::vector<std::shared_ptr<Entry>> start;
  for (const size_t index : decision.start) start.push_back(queue_.entry(index));
  for (const std::shared_ptr<Entry>& entry : start) {
    queue_.Remove(*entry);
    holding_.push_back(entry);
    EntryState& held = Held(*entry);
    held.on_worker = true;
    held.slots = JobSlots(held.job.spec(), options_.workers);
    held.started = ++starts_;
    // Its previous attempt has ended (it had no slots), and whoever stops
    // it from now on (cancel, pause, preemption, shutdown) sees it on a
    // worker under mu_, after this.
    entry->cancel.Reset();
    ready_.push_back(entry);
  }
}

void JobManager::ReleaseSlots(Entry& entry) {
  EntryState& held = Held(entry);
  held.on_worker = false;
  held.slots = 0;
  held.pause_requested = false;
  held.preempted_by.clear();
  holding_.erase(std::remove_if(holding_.begin(), holding_.end(),
                                [&](const std::shared_ptr<Entry>& e) { return e.get() == &entry; }),
                 holding_.end());
  Reschedule();
}

absl::Status JobManager::CheckPriorityRights(const Caller& caller, trainer::v1::Priority priority,
                                             bool preemptible) {
  if (caller.admin) return absl::OkStatus();
  const Limits& limits = policy_.For(caller.user);
  if (priority > limits.max_priority) {
    return absl::PermissionDeniedError(
        absl::StrCat("priority ", trainer::v1::Priority_Name(priority), ": user ", caller.user,
                     " may give jobs at most ", trainer::v1::Priority_Name(limits.max_priority),
                     " (the admin's policy file, max_priority)"));
  }
  if (!preemptible && !limits.may_opt_out_of_preemption) {
    return absl::PermissionDeniedError(
        absl::StrCat("preemptible: user ", caller.user,
                     " may not submit non-preemptible jobs (the admin's policy file, "
                     "may_opt_out_of_preemption)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Job> JobManager::Pause(const std::string& id, const Caller& caller) {
  auto entry = Find(id, caller);
  if (!entry) return NoJob(id);
  absl::MutexLock io(&entry->io_mu);
  JobState state;
  bool waiting = false;
  {
    absl::MutexLock lock(&mu_);
    EntryState& held = Held(*entry);
    state = held.job.state();
    if (IsTerminal(state) || state == trainer::v1::CANCELLING) {
      return absl::FailedPreconditionError(absl::StrCat("job ", id, " is ",
                                                        trainer::v1::JobState_Name(state),
                                                        "; only a queued or running "
                                                        "job can be paused"));
    }
    if (state == trainer::v1::PAUSED || held.pause_requested) return View(*entry);
    if (state == trainer::v1::QUEUED && !held.on_worker) {
      queue_.Remove(*entry);
      waiting = true;
      Reschedule();
    } else {
      // On a worker (running, or holding slots while a cluster's scheduler
      // places it): it stops at its next checkpoint.
      held.pause_requested = true;
      entry->cancel.Interrupt();
      Reschedule();
    }
  }
  if (waiting) {
    SetState(*entry, trainer::v1::PAUSED, absl::StrCat("paused by ", caller.user, " while queued"));
  } else {
    JobEvent ev;
    ev.mutable_log()->set_level(trainer::v1::LogMessage::INFO);
    ev.mutable_log()->set_text(absl::StrCat(
        "pause requested by ", caller.user,
        ": the job writes a checkpoint at its next batch boundary and gives its slots back"));
    Emit(*entry, std::move(ev));
  }
  absl::MutexLock lock(&mu_);
  return View(*entry);
}

absl::StatusOr<Job> JobManager::Resume(const std::string& id, const Caller& caller) {
  auto entry = Find(id, caller);
  if (!entry) return NoJob(id);
  absl::MutexLock io(&entry->io_mu);
  {
    absl::MutexLock lock(&mu_);
    const JobState state = Held(*entry).job.state();
    if (state != trainer::v1::PAUSED) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", id, " is ", trainer::v1::JobState_Name(state), "; only a PAUSED job resumes"));
    }
    if (stopping_) return absl::UnavailableError("traind is shutting down");
  }
  SetState(*entry, trainer::v1::QUEUED,
           absl::StrCat("resumed by ", caller.user, "; it continues from its checkpoint"));
  absl::MutexLock lock(&mu_);
  Enqueue(entry);
  Reschedule();
  return View(*entry);
}

absl::StatusOr<Job> JobManager::SetPriority(const std::string& id, trainer::v1::Priority priority,
                                            const Caller& caller) {
  if (!trainer::v1::Priority_IsValid(priority) || priority == trainer::v1::PRIORITY_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        absl::StrCat("priority: ", static_cast<int>(priority),
                     " is not a priority; use LOW, NORMAL, HIGH or URGENT"));
  }
  auto entry = Find(id, caller);
  if (!entry) return NoJob(id);
  absl::MutexLock io(&entry->io_mu);
  trainer::v1::Priority before;
  {
    absl::MutexLock lock(&mu_);
    Job& job = Held(*entry).job;
    if (IsTerminal(job.state())) {
      return absl::FailedPreconditionError(
          absl::StrCat("job ", id, " is ", trainer::v1::JobState_Name(job.state()),
                       "; only a job that has not ended has a priority to change"));
    }
    // Lowering is always allowed; raising only up to the caller's right.
    before = EffectivePriority(job.spec());
    if (priority > before) {
      if (auto st = CheckPriorityRights(caller, priority, true); !st.ok()) return st;
    }
    if (priority == before) return View(*entry);
    job.mutable_spec()->set_priority(priority);
    queue_.SetPriority(*entry, priority);
  }
  Persist(*entry);
  JobEvent ev;
  ev.mutable_log()->set_level(trainer::v1::LogMessage::INFO);
  ev.mutable_log()->set_text(absl::StrCat("priority ", trainer::v1::Priority_Name(before), " -> ",
                                          trainer::v1::Priority_Name(priority), " (set by ",
                                          caller.user, ")"));
  Emit(*entry, std::move(ev));
  absl::MutexLock lock(&mu_);
  Reschedule();
  return View(*entry);
}

void JobManager::SetPolicy(Policy policy) {
  absl::MutexLock lock(&mu_);
  policy_ = std::move(policy);
  Reschedule();
}

}  // namespace traind::jobs
