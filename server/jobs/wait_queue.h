// The jobs waiting for slots, kept the way the scheduler reads and answers:
// its input (WaitingJob: owner, priority, order, slots) and its last answer
// (each job's place and reason) in arrays beside the jobs' entries. A
// decision over 10,000 waiting jobs then reads one array and writes one,
// instead of every job's record (scheduler_bench measures it).
//
// Thread-safety: none; the job manager holds it under its mutex.
#ifndef TRAIND_SERVER_JOBS_WAIT_QUEUE_H_
#define TRAIND_SERVER_JOBS_WAIT_QUEUE_H_

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "server/jobs/scheduler.h"

namespace traind::jobs {

template <typename Entry>
class WaitQueue {
 public:
  struct Spot {
    int position = 0;  // 1: the next to start; 0: not placed yet
    WaitReason reason;
  };

  void Add(std::shared_ptr<Entry> entry, WaitingJob job) {
    entries_.push_back(std::move(entry));
    jobs_.push_back(std::move(job));
    spots_.emplace_back();
  }

  // False when `entry` is not waiting.
  bool Remove(const Entry& entry) {
    const auto at = Find(entry);
    if (at == entries_.size()) return false;
    entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(at));
    jobs_.erase(jobs_.begin() + static_cast<std::ptrdiff_t>(at));
    spots_.erase(spots_.begin() + static_cast<std::ptrdiff_t>(at));
    return true;
  }

  // Records the decision's place for job `i`.
  void Place(size_t i, int position, WaitReason reason) {
    spots_[i] = {position, std::move(reason)};
  }
  // `entry`'s place; null when it is not waiting.
  const Spot* SpotOf(const Entry& entry) const {
    const auto at = Find(entry);
    return at == entries_.size() ? nullptr : &spots_[at];
  }

  void SetPriority(const Entry& entry, trainer::v1::Priority priority) {
    if (const auto at = Find(entry); at < entries_.size()) jobs_[at].priority = priority;
  }

  int CountOf(const std::string& user) const {
    return static_cast<int>(std::count_if(jobs_.begin(), jobs_.end(),
                                          [&](const WaitingJob& j) { return j.user == user; }));
  }

  size_t size() const { return entries_.size(); }
  // Decide's input; the job at index i is entry(i).
  const std::vector<WaitingJob>& jobs() const { return jobs_; }
  const std::shared_ptr<Entry>& entry(size_t i) const { return entries_[i]; }

 private:
  size_t Find(const Entry& entry) const {
    return static_cast<size_t>(
        std::find_if(entries_.begin(), entries_.end(),
                     [&](const std::shared_ptr<Entry>& e) { return e.get() == &entry; }) -
        entries_.begin());
  }

  std::vector<std::shared_ptr<Entry>> entries_;
  std::vector<WaitingJob> jobs_;
  std::vector<Spot> spots_;
};

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_WAIT_QUEUE_H_
