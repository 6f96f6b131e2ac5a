#include "server/jobs/event_log.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/spec.h"

namespace traind::jobs {

using trainer::v1::JobEvent;

void EventLog::Open(const std::string& job_id, int64_t last_seq, bool ended) {
  absl::MutexLock lock(&mu_);
  auto& log = jobs_[job_id];
  if (!log) log = std::make_shared<JobLog>();
  Held(*log).last_seq = last_seq;
  Held(*log).ended = ended;
}

void EventLog::Forget(const std::string& job_id) {
  {
    absl::MutexLock lock(&mu_);
    jobs_.erase(job_id);
  }
  Wake(job_id);
}

std::shared_ptr<EventLog::JobLog> EventLog::Find(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  return it == jobs_.end() ? nullptr : it->second;
}

absl::StatusOr<int64_t> EventLog::Append(const std::string& job_id, JobEvent event) {
  auto log = Find(job_id);
  if (!log) return absl::NotFoundError(absl::StrCat("no job \"", job_id, "\""));
  int64_t seq;
  {
    absl::MutexLock append(&log->append_mu);
    {
      absl::MutexLock lock(&mu_);
      seq = Held(*log).last_seq + 1;
    }
    event.set_seq(seq);
    event.set_time_ms(absl::ToUnixMillis(absl::Now()));
    // Stored first, outside mu_: readers and other jobs go on meanwhile.
    if (auto st = store_->AppendEvent(job_id, event); !st.ok()) return st;
    absl::MutexLock lock(&mu_);
    Held(*log).last_seq = seq;
    Held(*log).ended = event.has_state() && IsTerminal(event.state().state());
    Held(*log).tail.push_back(std::move(event));
    if (Held(*log).tail.size() > kTail) Held(*log).tail.pop_front();
  }
  Wake(job_id);
  return seq;
}

absl::StatusOr<std::vector<JobEvent>> EventLog::Read(const std::string& job_id,
                                                     int64_t after_seq, int limit) {
  auto log = Find(job_id);
  if (!log) return absl::NotFoundError(absl::StrCat("no job \"", job_id, "\""));
  int64_t last;
  {
    absl::MutexLock lock(&mu_);
    last = Held(*log).last_seq;
    // From memory when the tail reaches back far enough.
    if (after_seq >= last) return std::vector<JobEvent>();
    if (!Held(*log).tail.empty() && Held(*log).tail.front().seq() <= after_seq + 1) {
      std::vector<JobEvent> out;
      for (auto it = Held(*log).tail.begin() + (after_seq + 1 - Held(*log).tail.front().seq());
           it != Held(*log).tail.end() && static_cast<int>(out.size()) < limit; ++it) {
        out.push_back(*it);
      }
      return out;
    }
  }
  // Older events: from the store, never past what is readable now.
  auto events = store_->ReadEvents(job_id, after_seq, limit);
  if (!events.ok()) return events.status();
  while (!events->empty() && events->back().seq() > last) events->pop_back();
  return events;
}

int64_t EventLog::LastSeq(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  return it == jobs_.end() ? 0 : Held(*it->second).last_seq;
}

bool EventLog::Ended(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  return it != jobs_.end() && Held(*it->second).ended;
}

int64_t EventLog::Subscribe(const std::string& job_id, std::function<void()> wake) {
  absl::MutexLock lock(&mu_);
  const int64_t id = next_subscription_++;
  subscribers_[id] = Subscriber{job_id, std::move(wake)};
  return id;
}

void EventLog::Unsubscribe(int64_t subscription) {
  absl::MutexLock lock(&mu_);
  subscribers_.erase(subscription);
}

void EventLog::Wake(const std::string& job_id) {
  std::vector<std::function<void()>> wake;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, s] : subscribers_) {
      if (s.job_id == job_id) wake.push_back(s.wake);
    }
  }
  for (auto& w : wake) w();
}

void EventLog::WakeAll() {
  std::vector<std::function<void()>> wake;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, s] : subscribers_) wake.push_back(s.wake);
  }
  for (auto& w : wake) w();
}

}  // namespace traind::jobs
