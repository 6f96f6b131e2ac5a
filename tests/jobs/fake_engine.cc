#include "tests/jobs/fake_engine.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/sha256.h"

namespace traind::jobs {
namespace {

namespace fs = std::filesystem;

absl::Status WriteWeights(const std::string& path, const std::string& what) {
  return WriteFileAtomically(path, absl::StrCat("fake weights ", what, "\n"));
}

double Loss(int64_t step) { return 2.0 / (1.0 + 0.1 * static_cast<double>(step)); }

}  // namespace

void FakeEngine::Hold() {
  absl::MutexLock lock(&mu_);
  budget_ = 0;
}

void FakeEngine::Allow(int n) {
  absl::MutexLock lock(&mu_);
  if (budget_ >= 0) budget_ += n;
}

void FakeEngine::Release() {
  absl::MutexLock lock(&mu_);
  budget_ = -1;
}

bool FakeEngine::Gate(const train::CancelToken& cancel) {
  absl::MutexLock lock(&mu_);
  auto open = [this, &cancel]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return budget_ != 0 || cancel.cancelled();
  };
  // The token is not a mutex condition: poll it while held.
  while (!mu_.AwaitWithTimeout(absl::Condition(&open), absl::Milliseconds(5))) {
  }
  if (cancel.cancelled()) return false;
  if (budget_ > 0) --budget_;
  return true;
}

absl::Status FakeEngine::Train(const RunRequest& run, train::ProgressSink* sink,
                               const train::CancelToken& cancel) {
  const train::TrainConfig& config = run.config;
  {
    absl::MutexLock lock(&mu_);
    last_config_ = config;
  }
  ++runs_;
  sink->OnDataset({{"a", "b"}, batches_ * config.batch_size, config.batch_size});
  int epoch = 1, next_batch = 0;
  int64_t step = config.global_step_offset;
  if (!config.resume_from.empty()) {
    auto text = ReadFile(config.resume_from);
    if (!text.ok()) return text.status();
    std::istringstream in(*text);
    std::string magic;
    in >> magic >> epoch >> next_batch >> step;
    if (magic != "fake-checkpoint") return absl::DataLossError("not a fake checkpoint");
    sink->OnInfo(absl::StrCat("continuing at epoch ", epoch, ", batch ", next_batch));
  }
  auto checkpoint = [&](int e, int b) -> absl::Status {
    if (config.checkpoint_dir.empty()) return absl::OkStatus();
    std::error_code ec;
    fs::create_directories(config.checkpoint_dir, ec);
    const std::string path = (fs::path(config.checkpoint_dir) /
                              absl::StrFormat("epoch-%03d-batch-%05d.fake", e, b))
                                 .string();
    const std::string body = absl::StrCat("fake-checkpoint ", e, " ", b, " ", step, "\n");
    if (auto st = WriteFileAtomically(path, body); !st.ok()) return st;
    train::CheckpointInfo info;
    info.epoch = e;
    info.next_batch = b;
    info.global_step = step;
    info.path = path;
    info.sha256 = *Sha256File(path);
    info.size = static_cast<int64_t>(body.size());
    return sink->OnCheckpoint(info);
  };
  for (; epoch <= config.epochs; ++epoch, next_batch = 0) {
    double loss_sum = 0;
    for (int b = next_batch; b < batches_; ++b) {
      if (!Gate(cancel)) {
        if (cancel.interrupted() && !skip_interrupt_checkpoint_) {
          if (auto st = checkpoint(epoch, b); !st.ok()) return st;
        }
        return absl::CancelledError("cancelled");
      }
      train::BatchProgress p;
      p.epoch = epoch;
      p.batch = b + 1;
      p.batches = batches_;
      p.global_step = step++;  // as the real engine: the step's index
      p.loss = Loss(step);
      p.images_per_second = 1000;
      loss_sum += p.loss;
      sink->OnBatch(p);
      ++trained_;  // after its event is stored
    }
    train::EpochResult r;
    r.epoch = epoch;
    r.train_loss = loss_sum / batches_;
    r.validation_loss = Loss(step) * 1.1 / config.learning_rate * 1e-3;
    r.train_accuracy = r.validation_accuracy = 1.0 - Loss(step) / 2;
    sink->OnEpoch(r);
    if (auto st = checkpoint(epoch + 1, 0); !st.ok()) return st;
  }
  train::Evaluation ev;
  ev.num_classes = 2;
  ev.images = config.batch_size;
  ev.top1_correct = ev.top5_correct = config.batch_size;
  ev.confusion = {config.batch_size, 0, 0, 0};
  sink->OnEvaluation(ev);
  const std::string what = absl::StrCat("lr ", config.learning_rate, " epochs ", config.epochs);
  if (auto st = WriteWeights(config.output_pth, what); !st.ok()) return st;
  return WriteWeights(config.output_safetensors, what);
}

absl::StatusOr<std::vector<train::TrialSpec>> FakeEngine::PlanSweep(
    const train::SweepPlan& plan) {
  return train::ExpandTrials(plan);
}

absl::StatusOr<train::SweepResult> FakeEngine::Sweep(const SweepRequest& request,
                                                     train::SweepSink* sink,
                                                     const train::CancelToken& cancel) {
  train::SweepResult result;
  for (const auto& t : request.trials) {
    result.epochs_requested += t.epochs;
    if (request.finished.count(t.trial)) continue;
    if (!Gate(cancel)) return absl::CancelledError("cancelled");
    sink->OnTrialStarted(t, t.trial);
    train::TrialOutcome o;
    o.spec = t;
    o.run = t.trial;
    for (int e = 1; e <= t.epochs; ++e) {
      o.final.trial = t.trial;
      o.final.epoch = e;
      o.final.validation_loss = 1.0 / (e * t.learning_rate * 1e3);
      sink->OnEpoch(o.final);
      ++result.epochs_trained;
    }
    o.epochs_run = t.epochs;
    const std::string stem =
        (fs::path(request.output_dir) / absl::StrCat("trial-", t.trial)).string();
    o.output_pth = stem + ".pth";
    o.output_safetensors = stem + ".safetensors";
    const std::string what = absl::StrCat("trial ", t.trial);
    if (auto st = WriteWeights(o.output_pth, what); !st.ok()) return st;
    if (auto st = WriteWeights(o.output_safetensors, what); !st.ok()) return st;
    sink->OnTrialFinished(o);
    result.outcomes.push_back(o);
  }
  return result;
}

absl::Status FakeEngine::CheckWeights(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return text.status();
  if (text->rfind("fake weights", 0) != 0) return absl::InvalidArgumentError("not fake weights");
  return absl::OkStatus();
}

namespace {

// Predicts class (image size mod classes), then the next ones.
class FakeModel final : public Model {
 public:
  FakeModel(std::string weights, int num_classes)
      : weights_(std::move(weights)), num_classes_(num_classes) {}
  absl::StatusOr<std::vector<std::vector<train::Prediction>>> Classify(
      const std::vector<std::string>& images, int top_k) const override {
    std::vector<std::vector<train::Prediction>> out;
    for (size_t i = 0; i < images.size(); ++i) {
      if (images[i] == "not an image") {
        return absl::InvalidArgumentError(absl::StrCat("images[", i, "]: does not decode"));
      }
      auto& per_image = out.emplace_back();
      for (int k = 0; k < std::min(top_k, num_classes_); ++k) {
        per_image.push_back({static_cast<int>((images[i].size() + k) % num_classes_),
                             1.0 / (k + 2)});
      }
    }
    return out;
  }

 private:
  const std::string weights_;
  const int num_classes_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<const Model>> FakeEngine::LoadModel(
    const std::string& weights_path, int num_classes, int image_size) {
  if (auto st = CheckWeights(weights_path); !st.ok()) return st;
  ++models_loaded_;
  return std::make_shared<const FakeModel>(weights_path, num_classes);
}

}  // namespace traind::jobs
