// JobManager: what a restarted daemon does with the jobs it finds stored.
#include "server/jobs/job_manager.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "common/spec.h"
#include "server/jobs/job_entry.h"

namespace traind::jobs {

absl::Status JobManager::Recover() {
  auto stored = store_->LoadJobs();
  if (!stored.ok()) return stored.status();
  std::vector<std::shared_ptr<Entry>> entries;
  for (auto& s : *stored) {
    auto entry = std::make_shared<Entry>(s.index, s.job.id());
    // Made ready before anyone can see it, then published under mu_.
    Job job = std::move(s.job);
    auto last = store_->LastSeq(entry->id);
    if (!last.ok()) return last.status();
    events_.Open(entry->id, *last, IsTerminal(job.state()));
    if (job.owner().empty()) job.set_owner("local");  // stored before owners
    // Stored by a traind from before device and precision were enums: the
    // row is rewritten once in today's form, so a bf16 job stays bf16.
    if (auto upgraded = UpgradeLegacySpec(job.mutable_spec()); !upgraded.ok()) {
      std::fprintf(stderr, "traind: job %s: %s; its default is used\n", entry->id.c_str(),
                   std::string(upgraded.status().message()).c_str());
    } else if (*upgraded) {
      if (auto st = store_->UpdateJob(job); !st.ok()) return st;
      std::fprintf(stderr, "traind: job %s: device and precision read from their old form\n",
                   entry->id.c_str());
    }
    // Jobs stored before event files existed get their (empty) folder named too.
    if (job.tensorboard_dir().empty()) job.set_tensorboard_dir(layout_.RunsDir(entry->id));
    absl::MutexLock lock(&mu_);
    Held(*entry).job = std::move(job);
    jobs_[entry->id] = entry;
    by_index_.push_back(entry);
    if (!s.request_id.empty()) request_ids_[s.request_id] = entry->id;
    entries.push_back(entry);
  }
  // No worker runs yet; the queue is rebuilt in submission order.
  for (const auto& entry : entries) {
    absl::MutexLock io(&entry->io_mu);
    JobState state;
    int attempts, attempt, epochs;
    {
      absl::MutexLock lock(&mu_);
      state = Held(*entry).job.state();
      attempts = Held(*entry).job.attempts_without_progress();
      attempt = Held(*entry).job.attempt();
      epochs = Held(*entry).job.checkpoint_epochs();
    }
    switch (state) {
      case trainer::v1::RUNNING:
        // Killed from outside while training further than ever: progress,
        // not a crash loop (a job that kills the daemon itself does not get
        // past the same step).
        if (const int64_t reached = FurthestStep(*entry); reached > 0) {
          absl::MutexLock lock(&mu_);
          Held(*entry).job.set_max_global_step(reached);
          Held(*entry).job.set_attempts_without_progress(0);
          attempts = 0;
        }
        if (attempts >= options_.max_attempts_without_progress) {
          SetState(*entry, trainer::v1::FAILED,
                   absl::StrCat("the daemon stopped during ", attempts,
                                " attempts in a row without a new checkpoint (last good: ",
                                epochs, " epochs); not retrying. Resubmit to start over"));
          break;
        }
        // How it goes on (from its checkpoint, or ranks taken up where they
        // still run) is told when it starts.
        SetState(*entry, trainer::v1::QUEUED,
                 absl::StrCat("daemon restarted while attempt ", attempt, " was running"));
        {
          absl::MutexLock lock(&mu_);
          Enqueue(entry);
        }
        break;
      case trainer::v1::CANCELLING:
        SetState(*entry, trainer::v1::CANCELLED, "daemon restarted while cancelling");
        break;
      case trainer::v1::QUEUED: {
        absl::MutexLock lock(&mu_);
        Enqueue(entry);
        break;
      }
      default:
        break;
    }
  }
  return absl::OkStatus();
}

int64_t JobManager::FurthestStep(Entry& entry) {
  constexpr int kTail = 256;  // the last attempt's final batches are among these
  const int64_t last = events_.LastSeq(entry.id);
  int64_t known;
  int attempt;
  {
    absl::MutexLock lock(&mu_);
    known = std::max(Held(entry).job.max_global_step(), Held(entry).job.checkpoint_global_step());
    attempt = Held(entry).job.attempt();
  }
  auto tail = store_->ReadEvents(entry.id, std::max<int64_t>(0, last - kTail), kTail);
  if (!tail.ok()) return 0;
  int64_t reached = 0;
  for (const auto& e : *tail) {
    if (e.has_batch() && e.batch().attempt() == attempt) {
      reached = std::max(reached, e.batch().global_step() + 1);
    }
  }
  return reached > known ? reached : 0;
}

}  // namespace traind::jobs
