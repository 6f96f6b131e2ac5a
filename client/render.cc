#include "client/render.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <google/protobuf/util/json_util.h>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/flags.h"

namespace traind::client {
namespace {

std::string Duration(double seconds) {
  if (seconds < 0 || !std::isfinite(seconds)) return "?";
  const int s = static_cast<int>(seconds + 0.5);
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
}

// Renders a job's event stream for people: a live progress bar on a
// terminal, plain lines otherwise.
class HumanRenderer final : public EventRenderer {
 public:
  explicit HumanRenderer(int epochs) : epochs_(epochs), tty_(isatty(STDOUT_FILENO)) {}

  void Render(const trainer::v1::JobEvent& e) override {
    switch (e.event_case()) {
      case trainer::v1::JobEvent::kBatch:
        Batch(e.batch());
        break;
      case trainer::v1::JobEvent::kEpoch:
        EndLine();
        Epoch(e.epoch());
        break;
      case trainer::v1::JobEvent::kState:
        EndLine();
        std::printf("[%s]%s%s\n", StateName(e.state().state()).c_str(),
                    e.state().reason().empty() ? "" : " ", e.state().reason().c_str());
        break;
      case trainer::v1::JobEvent::kLog:
        EndLine();
        std::printf("%s%s\n",
                    e.log().level() == trainer::v1::LogMessage::WARNING ? "warning: " : "",
                    e.log().text().c_str());
        break;
      case trainer::v1::JobEvent::kTrialStarted: {
        EndLine();
        const auto& t = e.trial_started();
        trial_epochs_ = t.epochs();
        std::vector<std::string> settings;
        for (const auto& st : t.settings()) {
          if (st.name() != "epochs" && st.name() != "learning_rate" &&
              st.name() != "backbone_learning_rate") {
            settings.push_back(absl::StrFormat("%s %g", st.name(), st.value()));
          }
        }
        std::printf("trial %d: %d epoch(s), lr %g, backbone lr %g%s%s%s\n", t.trial(),
                    t.epochs(), t.learning_rate(), t.backbone_learning_rate(),
                    settings.empty() ? "" : ", ", absl::StrJoin(settings, ", ").c_str(),
                    t.run() != 0 && t.run() != t.trial()
                        ? absl::StrCat(" (read from trial ", t.run(), "'s run)").c_str()
                        : "");
        break;
      }
      case trainer::v1::JobEvent::kResumed: {
        EndLine();
        const auto& r = e.resumed();
        if (r.checkpoint_sha256().empty()) {
          std::printf("attempt %d: no checkpoint to continue from; starting over\n",
                      r.attempt());
        } else {
          std::printf("attempt %d: resumed from epoch %d%s (checkpoint sha256 %.12s..., "
                      "verified)\n",
                      r.attempt(), r.epoch(),
                      r.next_batch() > 0 ? absl::StrCat(", batch ", r.next_batch()).c_str() : "",
                      r.checkpoint_sha256().c_str());
        }
        break;
      }
      case trainer::v1::JobEvent::kTrialFinished: {
        EndLine();
        const auto& r = e.trial_finished().result();
        std::printf("trial %d done after %d epoch(s): val loss %.4f, val acc %s%s%s\n",
                    r.trial(), r.epochs_run(), r.final().validation_loss(),
                    Pct(r.final().validation_accuracy()).c_str(),
                    r.stopped().empty() ? "" : "; ", r.stopped().c_str());
        // The live ranking so far, best validation loss first.
        finished_.push_back(r);
        std::stable_sort(finished_.begin(), finished_.end(), [](const auto& a, const auto& b) {
          return a.final().validation_loss() < b.final().validation_loss();
        });
        std::vector<std::string> ranking;
        for (size_t i = 0; i < finished_.size() && i < 5; ++i) {
          ranking.push_back(absl::StrFormat("#%d trial %d (%.4f)", i + 1, finished_[i].trial(),
                                            finished_[i].final().validation_loss()));
        }
        std::printf("  ranking: %s%s\n", absl::StrJoin(ranking, ", ").c_str(),
                    finished_.size() > 5 ? ", ..." : "");
        break;
      }
      default:
        break;
    }
    std::fflush(stdout);
  }

  void EndLine() override {
    if (open_line_) std::printf("\n");
    open_line_ = false;
  }

 private:
  void Batch(const trainer::v1::BatchMetrics& b) {
    if (b.epoch() != epoch_ || b.batch() == 0) {
      epoch_ = b.epoch();
      loss_sum_ = 0;
      count_ = 0;
      epoch_start_ = absl::Now();
    }
    loss_sum_ += b.loss();
    ++count_;
    const int done = b.batch() + 1;
    const double elapsed = absl::ToDoubleSeconds(absl::Now() - epoch_start_);
    const double eta = done > 0 ? elapsed / done * (b.batches() - done) : -1;
    const int total_epochs = trial_epochs_ > 0 ? trial_epochs_ : epochs_;
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = b.batches() > 0 ? kWidth * done / b.batches() : 0;
      std::printf("\repoch %d/%d [%s%s] %d/%d loss %.4f (avg %.4f) %.0f img/s ETA %s  ",
                  b.epoch(), total_epochs, std::string(filled, '#').c_str(),
                  std::string(kWidth - filled, '.').c_str(), done, b.batches(), b.loss(),
                  loss_sum_ / count_, b.images_per_second(), Duration(eta).c_str());
      open_line_ = true;
    } else {
      // About ten lines per epoch when nobody sees a live bar.
      const int every = std::max(1, b.batches() / 10);
      if (done % every == 0 || done == b.batches()) {
        std::printf("epoch %d/%d batch %d/%d loss %.4f (avg %.4f) %.0f img/s\n", b.epoch(),
                    total_epochs, done, b.batches(), b.loss(), loss_sum_ / count_,
                    b.images_per_second());
      }
    }
  }

  void Epoch(const trainer::v1::EpochMetrics& m) {
    const int total_epochs = trial_epochs_ > 0 ? trial_epochs_ : epochs_;
    std::printf(
        "epoch %d/%d: train loss %.4f acc %s | val loss %.4f acc %s | %.1f s, %.1f img/s\n",
        m.epoch(), total_epochs, m.train_loss(), Pct(m.train_accuracy()).c_str(),
        m.validation_loss(), Pct(m.validation_accuracy()).c_str(), m.seconds(),
        m.images_per_second());
    // Where the epoch's time went; a traind before these fields sends none.
    if (m.forward_seconds() > 0) {
      const std::string allreduce = m.allreduce_seconds() > 0
                                        ? absl::StrFormat(", allreduce %.1f", m.allreduce_seconds())
                                        : "";
      std::printf(
          "  time: steps %.1f s (forward %.1f, backward %.1f%s, update %.1f), waiting for data "
          "%.1f s, validation %.1f s\n",
          m.step_seconds(), m.forward_seconds(), m.backward_seconds(), allreduce.c_str(),
          m.update_seconds(), m.data_seconds(), m.validation_seconds());
    }
  }

  const int epochs_;
  const bool tty_;
  bool open_line_ = false;
  int trial_epochs_ = 0;
  std::vector<trainer::v1::TrialResult> finished_;
  int epoch_ = 0;
  double loss_sum_ = 0;
  int count_ = 0;
  absl::Time epoch_start_;
};

}  // namespace

bool JsonOutput() { return absl::GetFlag(FLAGS_output) == "json"; }

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  return out;
}

void PrintJson(const google::protobuf::Message& message) {
  std::printf("%s\n", ToJson(message).c_str());
  std::fflush(stdout);
}

void PrintJson(const nlohmann::json& value) {
  std::printf("%s\n", value.dump().c_str());
  std::fflush(stdout);
}

std::string StateName(trainer::v1::JobState s) { return trainer::v1::JobState_Name(s); }

std::string KindName(trainer::v1::JobKind k) {
  return absl::AsciiStrToLower(trainer::v1::JobKind_Name(k));
}

std::string Pct(double v) { return absl::StrFormat("%.2f%%", 100.0 * v); }

std::unique_ptr<EventRenderer> NewHumanRenderer(int epochs) {
  return std::make_unique<HumanRenderer>(epochs);
}

void PrintJob(const trainer::v1::Job& j) {
  std::printf("job        %s\n", j.id().c_str());
  std::printf("kind       %s\n", KindName(j.spec().kind()).c_str());
  std::printf("state      %s%s%s\n", StateName(j.state()).c_str(), j.error().empty() ? "" : ": ",
              j.error().c_str());
  std::printf("priority   %s%s\n", trainer::v1::Priority_Name(j.spec().priority()).c_str(),
              j.spec().has_preemptible() && !j.spec().preemptible() ? " (not preemptible)" : "");
  if (j.queue_position() > 0) {
    std::printf("queue      position %d; %s\n", j.queue_position(), j.waiting_reason().c_str());
  }
  std::printf("dataset    %s (%d classes, %d train / %d validation images)\n",
              j.spec().dataset().c_str(), j.num_classes(), j.train_images(),
              j.validation_images());
  std::printf("settings   %d epochs, batch %d, %dpx, lr %g, backbone lr %g, seed %llu\n",
              j.spec().epochs(), j.spec().batch_size(), j.spec().image_size(),
              j.spec().learning_rate(), j.spec().backbone_learning_rate(),
              static_cast<unsigned long long>(j.spec().seed()));
  if (j.spec().has_pretrained_file()) {
    std::printf("starts     %s\n", j.spec().pretrained_file().c_str());
  } else if (j.spec().has_from_job()) {
    std::printf("starts     weights of %s\n", j.spec().from_job().c_str());
  }
  if (j.spec().kind() == trainer::v1::SWEEP && j.sweep_summary().trial_count() > 0) {
    std::printf("progress   %s\n", Progress(j).c_str());
  }
  if (j.has_latest()) {
    const auto& m = j.latest();
    std::printf("epoch %-4d train loss %.4f acc %s | val loss %.4f acc %s | %.1f s\n", m.epoch(),
                m.train_loss(), Pct(m.train_accuracy()).c_str(), m.validation_loss(),
                Pct(m.validation_accuracy()).c_str(), m.seconds());
  }
  if (j.has_placement()) {
    const auto& p = j.placement();
    std::string ranks;
    for (int r = 0; r < p.ranks_size(); ++r) {
      ranks += (r ? ", rank " : "; rank ") + std::to_string(r) + " on " + p.ranks(r);
    }
    std::printf("ranks      %d via %s%s%s\n", p.world_size(), p.launcher().c_str(),
                p.scheduler_job().empty() ? "" : (" (" + p.scheduler_job() + ")").c_str(),
                ranks.c_str());
  }
  if (!j.weights_sha256().empty()) {
    std::printf("weights    %lld bytes, sha256 %s\n", static_cast<long long>(j.weights_size()),
                j.weights_sha256().c_str());
  }
  if (!j.trials().empty()) {
    // Ranked by final validation loss, as the reference reported its grid.
    std::vector<trainer::v1::TrialResult> ranked(j.trials().begin(), j.trials().end());
    std::stable_sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
      return a.final().validation_loss() < b.final().validation_loss();
    });
    std::printf("\n%-5s %-6s %-44s %-9s %-8s %-7s %-8s %s\n", "rank", "trial", "settings",
                "val loss", "val acc", "epochs", "time s", "note");
    int rank = 1;
    for (const auto& t : ranked) {
      std::vector<std::string> settings;
      for (const auto& s : t.settings()) {
        if (s.name() == "epochs") continue;
        settings.push_back(absl::StrFormat(
            "%s %g",
            s.name() == "learning_rate"            ? "lr"
            : s.name() == "backbone_learning_rate" ? "backbone"
                                                   : s.name().c_str(),
            s.value()));
      }
      std::string note;
      if (t.run() != 0 && t.run() != t.trial()) note = absl::StrCat("shares trial ", t.run(), "'s run");
      if (!t.stopped().empty()) note = "stopped early (ASHA)";
      std::printf("%-5d %-6d %-44s %-9.4f %-8s %-7s %-8.1f %s\n", rank++, t.trial(),
                  absl::StrJoin(settings, ", ").c_str(), t.final().validation_loss(),
                  Pct(t.final().validation_accuracy()).c_str(),
                  absl::StrCat(t.epochs_run(), "/", t.epochs()).c_str(), t.seconds(),
                  note.c_str());
    }
    const auto& sum = j.sweep_summary();
    if (sum.epochs_requested() > 0) {
      std::printf("cost       %d epochs trained for trials asking %d in all (%.0f%% saved)%s\n",
                  sum.epochs_trained(), sum.epochs_requested(),
                  100.0 * (1.0 - static_cast<double>(sum.epochs_trained()) /
                                     sum.epochs_requested()),
                  sum.trials_stopped() > 0
                      ? absl::StrCat("; ", sum.trials_stopped(), " trial(s) stopped by ASHA").c_str()
                      : "");
    }
  }
}

std::string Progress(const trainer::v1::Job& j) {
  if (j.spec().kind() == trainer::v1::SWEEP) {
    const auto& sum = j.sweep_summary();
    if (sum.trial_count() == 0) return "-";  // not started (or from before the count)
    return absl::StrCat(sum.trials_finished(), "/", sum.trial_count(), " trials");
  }
  if (!j.has_latest()) return "-";
  return absl::StrCat(j.latest().epoch(), "/", j.spec().epochs(), " epochs");
}

void PrintJobTable(const std::vector<trainer::v1::Job>& jobs) {
  std::printf("%-12s %-9s %-11s %-8s %-20s %-12s %-9s %s\n", "JOB", "KIND", "STATE", "PRIORITY",
              "DATASET", "PROGRESS", "VAL ACC", "CREATED");
  for (const auto& j : jobs) {
    const std::string created = absl::FormatTime(
        "%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(j.create_time_ms()), absl::LocalTimeZone());
    std::printf("%-12s %-9s %-11s %-8s %-20s %-12s %-9s %s\n", j.id().c_str(),
                KindName(j.spec().kind()).c_str(), StateName(j.state()).c_str(),
                trainer::v1::Priority_Name(j.spec().priority()).c_str(), j.spec().dataset().c_str(),
                Progress(j).c_str(),
                j.has_latest() ? Pct(j.latest().validation_accuracy()).c_str() : "-",
                created.c_str());
  }
}

}  // namespace traind::client
