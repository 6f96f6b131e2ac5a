#include "server/train/trainer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <opencv2/core.hpp>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "server/train/checkpoint.h"
#include "server/train/data.h"
#include "server/train/model.h"
#include "server/train/recipe.h"
#include "server/train/weights.h"

namespace traind::train {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// PyTorch's BatchNorm raises in training mode when a channel holds a single
// value: one image whose deepest ResNet-18 feature map is 1x1 (<= 32 px).
bool BatchNormRaisesOnOneImage(int image_size) {
  int s = (image_size + 2 * 3 - 7) / 2 + 1;  // conv1, 7x7 stride 2
  s = (s + 2 * 1 - 3) / 2 + 1;               // max pool, 3x3 stride 2
  for (int layer = 2; layer <= 4; ++layer) s = (s + 2 * 1 - 3) / 2 + 1;  // 3x3 stride 2
  return s * s == 1;
}

absl::StatusOr<torch::Device> PickDevice(const std::string& device) {
  const bool cuda = torch::cuda::is_available();
  if (device == "cuda") {
    if (!cuda) {
      return absl::FailedPreconditionError(
          "device: cuda requested but this LibTorch build sees no CUDA device");
    }
    return torch::Device(torch::kCUDA);
  }
  if (device == "auto" && cuda) return torch::Device(torch::kCUDA);
  return torch::Device(torch::kCPU);
}

void ToChannelsLast(torch::nn::Module& module) {
  for (auto& p : module.parameters()) {
    if (p.dim() == 4) p.set_data(p.data().contiguous(torch::MemoryFormat::ChannelsLast));
  }
}

// Reads and decodes a dataset, sharing decoded images between runs.
struct LoadedData {
  DatasetIndex index;
  DecodedSet train;
  DecodedSet validation;
};

absl::StatusOr<LoadedData> LoadData(const DataConfig& config, ProgressSink* sink) {
  auto index = ScanDataset(config);
  if (!index.ok()) return index.status();
  LoadedData data;
  data.index = std::move(*index);
  std::vector<std::string> warnings;
  const int threads = std::max(1, config.loader_threads);
  DecodedImageCache* cache = &DecodedImageCache::Global();
  data.train = DecodeImages(data.index.train, config.image_size, threads, &warnings, cache);
  data.validation =
      DecodeImages(data.index.validation, config.image_size, threads, &warnings, cache);
  for (const auto& w : warnings) sink->OnWarning(w);
  // A few bad files are skipped; many mean the wrong folder or a broken copy.
  const size_t listed = data.index.train.size() + data.index.validation.size();
  const size_t skipped = listed - data.train.images.size() - data.validation.images.size();
  if (listed > 0 && skipped * 10 > listed) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dataset: ", skipped, " of ", listed,
        " images are unreadable (more than 10%); see the warnings for which"));
  }
  if (data.train.images.empty() || data.validation.images.empty()) {
    return absl::FailedPreconditionError(
        "dataset: no readable images left in the training or validation split");
  }
  return data;
}

struct EvalTotals {
  double loss_sum = 0;
  int64_t correct = 0;
  int64_t count = 0;
  Evaluation detail;  // validation passes only
  absl::Status status;  // the loader's, when it stopped early
};

class Run {
 public:
  Run(const TrainConfig& config, ProgressSink* sink, const CancelToken& cancel)
      : config_(config), sink_(sink), cancel_(cancel) {}

  absl::StatusOr<TrainResult> Execute(const LoadedData& data) {
    auto device = PickDevice(config_.device);
    if (!device.ok()) return device.status();
    device_ = *device;
    torch::set_num_threads(std::max(1, config_.threads));

    TrainResult result;
    result.dataset.class_names = data.index.classes;
    result.dataset.train_images = static_cast<int>(data.train.images.size());
    result.dataset.validation_images = static_cast<int>(data.validation.images.size());
    sink_->OnDataset(result.dataset);

    const int64_t num_classes = static_cast<int64_t>(data.index.classes.size());
    auto model = BuildModel(config_, num_classes);
    if (!model.ok()) return model.status();
    model_ = *model;
    auto optimizer = BuildOptimizer(model_, config_);
    model_->to(device_);
    ToChannelsLast(*model_);
    sink_->OnInfo(absl::StrCat("training on ", device_.str(), " (",
                               config_.bf16 ? "bf16 autocast" : "fp32", ") with ",
                               torch::get_num_threads(), " threads: ",
                               result.dataset.train_images, " train / ",
                               result.dataset.validation_images,
                               " validation images, ", num_classes, " classes"));

    order_gen_ = at::detail::createCPUGenerator(config_.data.seed);
    RunPosition pos;
    pos.global_step = config_.global_step_offset;
    if (!config_.resume_from.empty()) {
      auto bytes = ReadFile(config_.resume_from);
      if (!bytes.ok()) return bytes.status();
      auto restored = RestoreCheckpoint(*bytes, model_, *optimizer);
      if (!restored.ok()) return restored.status();
      pos = std::move(*restored);
      if (pos.next_batch > 0 && pos.order.size() != data.train.images.size()) {
        return absl::DataLossError(absl::StrCat(
            "checkpoint: its data order has ", pos.order.size(), " images, the training split ",
            data.train.images.size(), "; the dataset changed since it was written"));
      }
      order_gen_.set_state(pos.order_rng);
      sink_->OnInfo(absl::StrCat("continuing at epoch ", pos.epoch, ", batch ", pos.next_batch,
                                 " from checkpoint ", config_.resume_from));
    }
    for (int epoch = pos.epoch; epoch <= config_.epochs; ++epoch) {
      const auto epoch_start = Clock::now();
      const bool resumed_mid_epoch = epoch == pos.epoch && pos.next_batch > 0;
      std::vector<int64_t> order;
      int first_batch = 0;
      EvalTotals train;
      double train_seconds = 0;
      double data_seconds = 0;
      double earlier_seconds = 0;  // spent on this epoch before a resume
      if (resumed_mid_epoch) {
        order = pos.order;
        first_batch = pos.next_batch;
        train.loss_sum = pos.loss_sum;
        train.correct = pos.correct;
        train.count = pos.count;
        train_seconds = pos.step_seconds;
        data_seconds = pos.data_seconds;
        earlier_seconds = pos.elapsed_seconds;
      } else {
        torch::Tensor perm = torch::randperm(
            static_cast<int64_t>(data.train.images.size()), order_gen_, torch::kLong);
        order.assign(perm.data_ptr<int64_t>(), perm.data_ptr<int64_t>() + perm.numel());
      }
      const int64_t bs = config_.batch_size;
      const int batches = static_cast<int>((static_cast<int64_t>(order.size()) + bs - 1) / bs);
      first_batch = std::min(first_batch, batches);
      // Each sample's augmentation is seeded by its dataset index, so the
      // batches after first_batch come out as they would have.
      std::vector<int64_t> rest(order.begin() + std::min<int64_t>(first_batch * bs, order.size()),
                                order.end());
      BatchLoader::Options lo;
      lo.batch_size = config_.batch_size;
      lo.augment = true;
      lo.augmentation = config_.data.augmentation;
      lo.seed = config_.data.seed;
      lo.epoch = epoch;
      lo.threads = config_.data.loader_threads;
      lo.prefetch = PrefetchDepth();
      BatchLoader loader(data.train, std::move(rest), lo);

      // Where the run stands before batch b of this epoch.
      auto position = [&](int b) {
        RunPosition p;
        p.epoch = epoch;
        p.next_batch = b;
        p.global_step = pos.global_step;
        p.order = order;
        p.loss_sum = train.loss_sum;
        p.correct = train.correct;
        p.count = train.count;
        p.elapsed_seconds = earlier_seconds + Seconds(epoch_start);
        p.step_seconds = train_seconds;
        p.data_seconds = data_seconds;
        return p;
      };
      auto stop = [&](int b) -> absl::Status {
        if (cancel_.interrupted()) {
          if (auto st = WriteCheckpoint(*optimizer, position(b)); !st.ok()) return st;
        }
        return absl::CancelledError("cancelled");
      };

      model_->train();
      // A last batch that PyTorch could not train on is left out, and not
      // counted in `batches`.
      const bool skip_last = static_cast<int64_t>(order.size()) % bs == 1 &&
                             BatchNormRaisesOnOneImage(config_.data.image_size);
      const int trained_batches = batches - (skip_last ? 1 : 0);
      Batch batch;
      for (int b = first_batch;; ++b) {
        const auto wait_start = Clock::now();
        if (!loader.Next(&batch)) {
          if (auto st = loader.status(); !st.ok()) return st;
          break;
        }
        data_seconds += Seconds(wait_start);
        if (cancel_.cancelled()) return stop(b);
        if (batch.labels.size(0) == 1 && skip_last) {
          if (!warned_single_) {
            sink_->OnWarning(absl::StrCat(
                "the last batch of each epoch holds a single image, which BatchNorm cannot "
                "train on at ", config_.data.image_size, " px (PyTorch raises); it is skipped (",
                data.train.images.size(), " training images, batch size ", config_.batch_size,
                ")"));
            warned_single_ = true;
          }
          continue;
        }
        const auto step_start = Clock::now();
        torch::Tensor x = batch.images.to(device_);
        torch::Tensor y = batch.labels.to(device_);
        StepResult step = TrainStep(model_, *optimizer, x, y, config_.bf16);
        const torch::Tensor& logits = step.logits;
        const double loss_value = step.loss.item<double>();
        if (!std::isfinite(loss_value)) {
          return absl::InternalError(absl::StrCat(
              "training loss became ", loss_value, " at epoch ", epoch,
              " batch ", b, "; lower the learning rate"));
        }
        const int64_t n = y.size(0);
        train.loss_sum += loss_value * n;
        train.correct += logits.argmax(1).eq(y).sum().item<int64_t>();
        train.count += n;
        const double step_seconds = Seconds(step_start);
        train_seconds += step_seconds;
        BatchProgress progress;
        progress.trial = config_.trial;
        progress.epoch = epoch;
        progress.batch = b;
        progress.batches = trained_batches;
        progress.global_step = pos.global_step++;
        progress.loss = loss_value;
        progress.images_per_second = step_seconds > 0 ? n / step_seconds : 0;
        sink_->OnBatch(progress);
      }
      if (cancel_.cancelled()) return stop(batches);
      const auto validation_start = Clock::now();
      EvalTotals val = Evaluate(data.validation, epoch);
      if (!val.status.ok()) return val.status;
      const double validation_seconds = Seconds(validation_start);

      EpochResult er;
      er.trial = config_.trial;
      er.epoch = epoch;
      er.train_loss = train.loss_sum / std::max<int64_t>(1, train.count);
      er.train_accuracy = static_cast<double>(train.correct) / std::max<int64_t>(1, train.count);
      er.validation_loss = val.loss_sum / std::max<int64_t>(1, val.count);
      er.validation_accuracy =
          static_cast<double>(val.correct) / std::max<int64_t>(1, val.count);
      er.seconds = earlier_seconds + Seconds(epoch_start);
      er.images_per_second = train_seconds > 0 ? train.count / train_seconds : 0;
      er.step_seconds = train_seconds;
      er.data_seconds = data_seconds;
      er.validation_seconds = validation_seconds;
      result.epochs.push_back(er);
      sink_->OnEpoch(er);
      last_evaluation_ = std::move(val.detail);
      // The next epoch's start: its order is drawn from the generator's state.
      RunPosition next;
      next.epoch = epoch + 1;
      next.global_step = pos.global_step;
      if (auto st = WriteCheckpoint(*optimizer, std::move(next)); !st.ok()) return st;
      if (after_epoch_) {
        auto go = after_epoch_(er);
        if (!go.ok()) return go.status();
        if (!*go) break;
      }
    }
    if (auto st = WriteWeights(); !st.ok()) return st;
    if (last_evaluation_.images > 0) sink_->OnEvaluation(last_evaluation_);
    return result;
  }

 private:
  EvalTotals Evaluate(const DecodedSet& set, int epoch) {
    torch::NoGradGuard no_grad;
    model_->eval();
    std::vector<int64_t> order(set.images.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
    BatchLoader::Options lo;
    lo.batch_size = config_.batch_size;
    lo.augment = config_.data.augment_validation;
    lo.augmentation = config_.data.augmentation;
    // A different stream from training's: validation samples share indices.
    lo.seed = config_.data.seed ^ 0x5a17d0e5ULL;
    lo.epoch = epoch;
    lo.threads = config_.data.loader_threads;
    lo.prefetch = PrefetchDepth();
    BatchLoader loader(set, std::move(order), lo);
    EvalTotals totals;
    const int64_t classes = model_->fc()->weight.size(0);
    totals.detail.num_classes = static_cast<int>(classes);
    totals.detail.confusion.assign(classes * classes, 0);
    Batch batch;
    while (loader.Next(&batch)) {
      torch::Tensor x = batch.images.to(device_);
      torch::Tensor y = batch.labels.to(device_);
      torch::Tensor logits;
      {
        ScopedBf16Autocast autocast(config_.bf16, device_.type());
        logits = model_->forward(x);
      }
      logits = logits.to(torch::kFloat);
      totals.loss_sum += torch::nn::functional::cross_entropy(
                             logits, y,
                             torch::nn::functional::CrossEntropyFuncOptions()
                                 .reduction(torch::kSum))
                             .item<double>();
      const torch::Tensor predicted = logits.argmax(1);
      totals.correct += predicted.eq(y).sum().item<int64_t>();
      totals.count += y.size(0);
      const torch::Tensor top5 = std::get<1>(logits.topk(std::min<int64_t>(5, classes), 1));
      totals.detail.top5_correct += top5.eq(y.unsqueeze(1)).any(1).sum().item<int64_t>();
      const torch::Tensor truth = y.to(torch::kCPU).contiguous();
      const torch::Tensor guess = predicted.to(torch::kCPU).contiguous();
      for (int64_t i = 0; i < truth.size(0); ++i) {
        ++totals.detail.confusion[truth.data_ptr<int64_t>()[i] * classes +
                                  guess.data_ptr<int64_t>()[i]];
      }
    }
    totals.detail.images = totals.count;
    totals.detail.top1_correct = totals.correct;
    totals.status = loader.status();
    return totals;
  }

  // Background batch preparation only when there are cores to spare for it:
  // otherwise it preempts the intra-op threads mid-step, and the step waits
  // for the slowest (measured here: 2 cores, 2 threads, 58 -> 50 img/s).
  int PrefetchDepth() const {
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    return cores >= config_.threads + config_.data.loader_threads ? 4 : 0;
  }

  // Writes `pos` (plus the model, the optimizer and the order generator's
  // state) durably under checkpoint_dir and reports it to the sink.
  absl::Status WriteCheckpoint(torch::optim::Adam& optimizer, RunPosition pos) {
    if (config_.checkpoint_dir.empty()) return absl::OkStatus();
    pos.order_rng = order_gen_.get_state();
    auto bytes = SerializeCheckpoint(model_, optimizer, pos);
    if (!bytes.ok()) return bytes.status();
    std::error_code ec;
    std::filesystem::create_directories(config_.checkpoint_dir, ec);
    CheckpointInfo info;
    info.epoch = pos.epoch;
    info.next_batch = pos.next_batch;
    info.global_step = pos.global_step;
    info.path = (std::filesystem::path(config_.checkpoint_dir) /
                 absl::StrFormat("epoch-%03d-batch-%05d.safetensors", pos.epoch, pos.next_batch))
                    .string();
    if (auto st = WriteFileAtomically(info.path, *bytes); !st.ok()) {
      return absl::Status(st.code(), absl::StrCat("checkpoint: ", st.message()));
    }
    info.sha256 = Sha256Hex(*bytes);
    info.size = static_cast<int64_t>(bytes->size());
    return sink_->OnCheckpoint(info);
  }

  absl::Status WriteWeights() {
    return WriteWeightsTo(config_.output_pth, config_.output_safetensors);
  }

 public:
  // Called after each epoch's metrics and checkpoint; false ends the run
  // early (successfully).
  void set_after_epoch(std::function<absl::StatusOr<bool>(const EpochResult&)> f) {
    after_epoch_ = std::move(f);
  }

  // The model's current weights as a torch.save archive and/or safetensors.
  absl::Status WriteWeightsTo(const std::string& pth, const std::string& safetensors) {
    NamedTensors tensors;
    for (auto& [name, t] : StateDict(*model_)) {
      // Plain contiguous CPU tensors: the layout torch.load users expect.
      tensors.emplace_back(name, t.detach().to(torch::kCPU).contiguous());
    }
    if (!pth.empty()) {
      auto bytes = SerializeTorchArchive(tensors);
      if (!bytes.ok()) return bytes.status();
      if (auto st = WriteFileAtomically(pth, *bytes); !st.ok()) return st;
    }
    if (!safetensors.empty()) {
      auto bytes = SerializeSafetensors(tensors);
      if (!bytes.ok()) return bytes.status();
      if (auto st = WriteFileAtomically(safetensors, *bytes); !st.ok()) {
        return st;
      }
    }
    return absl::OkStatus();
  }

  const TrainConfig& config_;
  ProgressSink* sink_;
  const CancelToken& cancel_;
  torch::Device device_{torch::kCPU};
  ResNet18 model_{nullptr};
  at::Generator order_gen_;
  bool warned_single_ = false;
  Evaluation last_evaluation_;
  std::function<absl::StatusOr<bool>(const EpochResult&)> after_epoch_;
};

template <typename F>
auto CatchingLibraryErrors(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("LibTorch: ", e.what_without_backtrace()));
  } catch (const cv::Exception& e) {
    return absl::InternalError(absl::StrCat("OpenCV: ", e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(e.what());
  }
}

}  // namespace

absl::StatusOr<TrainResult> Train(const TrainConfig& config, ProgressSink* sink,
                                  const CancelToken& cancel) {
  return CatchingLibraryErrors([&]() -> absl::StatusOr<TrainResult> {
    auto data = LoadData(config.data, sink);
    if (!data.ok()) return data.status();
    if (cancel.cancelled()) return absl::CancelledError("cancelled");
    return Run(config, sink, cancel).Execute(*data);
  });
}

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
    std::mutex mu;  // guards result and asha across concurrent runs
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
        std::lock_guard<std::mutex> lock(mu);
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
          std::lock_guard<std::mutex> lock(mu);
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
      std::lock_guard<std::mutex> lock(mu);
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
          std::lock_guard<std::mutex> lock(mu);
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

absl::Status CheckWeightsFile(const std::string& path) {
  return CatchingLibraryErrors([&]() -> absl::StatusOr<bool> {
           auto weights = LoadStateDict(path);
           if (!weights.ok()) return weights.status();
           ResNet18 model(1000);
           if (auto st = CopyIntoModule(*weights, *model, {"fc.weight", "fc.bias"}); !st.ok()) {
             return st;
           }
           return true;
         })
      .status();
}

}  // namespace traind::train
