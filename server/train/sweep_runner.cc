// RunSweep: the runs of a sweep, side by side or one after another, with
// shared epoch prefixes and ASHA.
#include <atomic>
#include <filesystem>
#include <thread>

#include "absl/synchronization/mutex.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/train/run.h"
#include "server/train/trainer.h"

namespace traind::train {

absl::StatusOr<SweepResult> RunSweep(const TrainConfig& base, const SweepPlan& plan,
                                     const std::vector<TrialSpec>& trials,
                                     const std::set<int>& finished, const std::string& output_dir,
                                     SweepSink* sink, const CancelToken& cancel) {
  return CatchingLibraryErrors([&]() -> absl::StatusOr<SweepResult> {
    if (trials.empty()) return absl::InvalidArgumentError("sweep: no trials");
    auto data = LoadData(base.data, sink);
    if (!data.ok()) return data.status();
    SweepResult result;
    for (const auto& t : trials) result.epochs_requested += t.epochs;
    AshaRule asha(plan.asha_rungs, plan.asha_reduction_factor);
    absl::Mutex mu;  // guards result and asha across concurrent runs
    const auto groups = GroupRuns(trials);
    // Global steps continue across runs as if they ran one after another.
    std::vector<int64_t> step_offsets;
    int64_t offset = 0;
    const int64_t n_train = static_cast<int64_t>(data->train.images.size());
    for (const auto& group : groups) {
      step_offsets.push_back(offset);
      TrainConfig c = base;
      (void)ApplyTrial(trials[group.back()], &c);
      offset += (n_train + c.batch_size - 1) / c.batch_size * c.epochs;
    }
    const int parallel = std::max(1, std::min<int>(plan.parallel_runs, groups.size()));
    CancelToken stop_all(&cancel);

    auto run_group = [&](size_t g) -> absl::Status {
      const std::vector<size_t>& group = groups[g];
      std::vector<const TrialSpec*> todo;
      for (size_t i : group) {
        if (!finished.count(trials[i].trial)) todo.push_back(&trials[i]);
      }
      if (todo.empty()) return absl::OkStatus();  // done before a restart
      const TrialSpec& longest = trials[group.back()];
      TrainConfig config = base;
      config.kind = Kind::kFinetune;
      if (auto st = ApplyTrial(longest, &config); !st.ok()) return st;
      config.trial = longest.trial;
      config.global_step_offset = step_offsets[g];
      // Concurrent runs share the job's threads instead of oversubscribing.
      config.threads = std::max(1, base.threads / parallel);
      config.data.loader_threads = std::max(1, base.data.loader_threads / parallel);
      config.output_pth.clear();
      config.output_safetensors.clear();
      config.checkpoint_dir.clear();  // runs restart from their beginning
      config.resume_from.clear();
      for (const TrialSpec* t : todo) sink->OnTrialStarted(*t, longest.trial);

      Run run(config, sink, stop_all);
      double seconds = 0;
      int epochs_run = 0;
      auto finish = [&](const TrialSpec& t, const EpochResult& er,
                        const std::string& stopped) -> absl::Status {
        TrialOutcome o;
        o.spec = t;
        o.run = longest.trial;
        o.final = er;
        o.final.trial = t.trial;
        o.epochs_run = er.epoch;
        o.seconds = seconds;
        o.stopped = stopped;
        const auto base_name = std::filesystem::path(output_dir) / absl::StrCat("trial-", t.trial);
        o.output_pth = base_name.string() + ".pth";
        o.output_safetensors = base_name.string() + ".safetensors";
        if (auto st = run.WriteWeightsTo(o.output_pth, o.output_safetensors); !st.ok()) return st;
        sink->OnTrialFinished(o);
        absl::MutexLock lock(&mu);
        if (!stopped.empty()) ++result.trials_stopped;
        result.outcomes.push_back(std::move(o));
        return absl::OkStatus();
      };
      run.set_after_epoch([&](const EpochResult& er) -> absl::StatusOr<bool> {
        seconds += er.seconds;
        epochs_run = er.epoch;
        for (const TrialSpec* t : todo) {
          if (t->epochs == er.epoch) {
            if (auto st = finish(*t, er, ""); !st.ok()) return st;
          }
        }
        if (!asha.IsRung(er.epoch)) return true;
        AshaRule::Decision d;
        {
          absl::MutexLock lock(&mu);
          d = asha.Judge(er.epoch, er.validation_loss);
        }
        if (d.keep || er.epoch >= longest.epochs) return true;
        const std::string why = absl::StrFormat(
            "ASHA: stopped at rung epoch %d: validation loss %.4f is not among the best 1/%g "
            "of the %d runs that reached this rung before it (cutoff %.4f)",
            er.epoch, er.validation_loss, plan.asha_reduction_factor, d.earlier, d.cutoff);
        for (const TrialSpec* t : todo) {
          if (t->epochs > er.epoch) {
            if (auto st = finish(*t, er, why); !st.ok()) return st;
          }
        }
        return false;
      });
      auto trained = run.Execute(*data);
      if (!trained.ok()) return trained.status();
      absl::MutexLock lock(&mu);
      result.epochs_trained += epochs_run;
      return absl::OkStatus();
    };

    // `parallel` runs at a time, each taking the next group; the first error
    // cancels the rest.
    std::atomic<size_t> next{0};
    absl::Status first_error;
    auto worker = [&] {
      for (size_t g; (g = next.fetch_add(1)) < groups.size();) {
        if (stop_all.cancelled()) return;
        absl::Status st = CatchingLibraryErrors([&]() -> absl::StatusOr<bool> {
                            if (auto s2 = run_group(g); !s2.ok()) return s2;
                            return true;
                          }).status();
        if (!st.ok()) {
          absl::MutexLock lock(&mu);
          if (first_error.ok()) first_error = st;
          if (!absl::IsCancelled(st)) stop_all.Cancel();  // the other runs stop too
          return;
        }
      }
    };
    std::vector<std::thread> threads;
    for (int i = 1; i < parallel; ++i) threads.emplace_back(worker);
    worker();
    for (auto& t : threads) t.join();
    if (!first_error.ok()) return first_error;
    if (cancel.cancelled()) return absl::CancelledError("cancelled");
    return result;
  });
}

}  // namespace traind::train
