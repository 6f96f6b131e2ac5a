#include "server/train/run.h"

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
#include "server/train/folded_eval.h"
#include "server/train/gemm_conv.h"
#include "server/train/intra_op.h"
#include "server/train/model.h"
#include "server/train/recipe.h"
#include "server/train/split_backward.h"
#include "server/train/step.h"
#include "server/train/weights.h"
#include "server/train/winograd_mode.h"

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





}  // namespace

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

absl::Status Run::Prepare(const LoadedData& data, TrainResult* result) {
  auto device = PickDevice(config_.device);
  if (!device.ok()) return device.status();
  device_ = *device;
  UseIntraOpThreads(config_.threads);
  // Data-parallel ranks wait for each other every step: their step time
  // does not say what a thread count costs (spec.cc refuses the setting).
  if (config_.adaptive_threads && config_.threads > 1 && !distributed()) {
    ThreadGovernor::Options options;
    options.max_threads = config_.threads;
    governor_ = std::make_unique<ThreadGovernor>(options);
  }
  // Without AVX-512 BF16, oneDNN and LibTorch emulate bfloat16 arithmetic:
  // correct, and many times slower than fp32.
  if (config_.bf16 && device_.is_cpu() && !CpuHasOneDnnBf16Gemms()) {
    sink_->OnWarning(
        "precision bf16: this CPU has no AVX-512 BF16 instructions, so bfloat16 arithmetic is "
        "emulated and the steps run many times slower than in fp32 (1.3 against 37.8 images/s "
        "measured on an AVX2 CPU); submit with precision fp32 here");
  }
  result->dataset.class_names = data.index.classes;
  result->dataset.train_images = static_cast<int>(data.train.images.size());
  result->dataset.validation_images = static_cast<int>(data.validation.images.size());
  sink_->OnDataset(result->dataset);

  const int64_t num_classes = static_cast<int64_t>(data.index.classes.size());
  auto model = BuildModel(config_, num_classes);
  if (!model.ok()) return model.status();
  model_ = *model;
  optimizer_ = BuildOptimizer(model_, config_);
  model_->to(device_);
  ToChannelsLast(*model_);
  // Which convolutions the steps run, so that a job's results can be
  // explained: only LibTorch's train bit-identically to PyTorch.
  std::string precision = config_.bf16 ? "bf16 autocast" : "fp32";
  if (config_.winograd && device_.is_cpu() && !config_.bf16) {
    absl::StrAppend(&precision, WinogradAvailable()
                                    ? ", Winograd convolutions"
                                    : ", LibTorch's convolutions: no Winograd kernel for this CPU");
  }
  sink_->OnInfo(absl::StrCat(
      "training on ", device_.str(), " (", precision, ") with ", torch::get_num_threads(),
      governor_ ? " threads at most (adapting to contention): " : " threads: ",
      result->dataset.train_images, " train / ", result->dataset.validation_images,
      " validation images, ", num_classes, " classes"));
  order_gen_ = at::detail::createCPUGenerator(config_.data.seed);
  if (distributed()) {
    int64_t n = 0;
    for (const auto& p : model_->parameters()) {
      if (p.requires_grad()) n += p.numel();
    }
    flat_ = torch::zeros({n + 5}, torch::kFloat);
    if (auto st = SyncFromRankZero(true); !st.ok()) return st;
  }
  return absl::OkStatus();
}

std::vector<int64_t> Run::RankShare(const std::vector<int64_t>& order, bool pad) const {
  if (!distributed()) return order;
  const int64_t w = collective_->world_size();
  const int64_t r = collective_->rank();
  std::vector<int64_t> padded = order;
  if (pad && !order.empty()) {
    for (size_t i = 0; padded.size() % w != 0; ++i) padded.push_back(order[i % order.size()]);
  }
  std::vector<int64_t> share;
  for (size_t i = r; i < padded.size(); i += w) share.push_back(padded[i]);
  return share;
}

absl::Status Run::SyncFromRankZero(bool parameters) {
  torch::NoGradGuard no_grad;
  auto sync = [&](torch::Tensor t) -> absl::Status {
    torch::Tensor c = t.to(torch::kCPU).contiguous();
    if (auto st = collective_->Broadcast(c, 0); !st.ok()) return st;
    t.copy_(c);
    return absl::OkStatus();
  };
  if (parameters) {
    for (auto& p : model_->parameters()) {
      if (auto st = sync(p); !st.ok()) return st;
    }
  }
  for (auto& b : model_->buffers()) {
    if (auto st = sync(b); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::StatusOr<Run::SharedStep> Run::DistributedStep(const torch::Tensor& x,
                                                     const torch::Tensor& y) {
  // A stop arrives with this step's allreduce, after its forward pass moved
  // BatchNorm's running statistics: they are put back then, so that the
  // checkpoint written at the stop holds the model as it was before this
  // batch, which the resumed run trains again.
  std::vector<torch::Tensor> buffers = model_->buffers();
  std::vector<torch::Tensor> before;
  before.reserve(buffers.size());
  for (const auto& b : buffers) before.push_back(b.clone());
  StepResult step = ForwardBackward(model_, *optimizer_, x, y, config_.bf16);
  const auto exchange_start = Clock::now();
  const int64_t n = y.size(0);
  torch::NoGradGuard no_grad;
  int64_t at = 0;
  std::vector<torch::Tensor> params;
  for (auto& p : model_->parameters()) {
    if (!p.requires_grad()) continue;
    torch::Tensor dst = flat_.narrow(0, at, p.numel());
    // A bf16 step's gradient may be in bfloat16 (GradientOf); copy_ widens
    // it exactly and handles channels-last strides.
    if (torch::Tensor grad = GradientOf(*optimizer_, p); grad.defined()) {
      dst.view_as(p).copy_(grad);
    } else {
      dst.zero_();
    }
    at += p.numel();
    params.push_back(p);
  }
  float* tail = flat_.data_ptr<float>() + at;
  tail[0] = static_cast<float>(step.loss.item<double>() * n);
  tail[1] = static_cast<float>(step.logits.argmax(1).eq(y).sum().item<int64_t>());
  tail[2] = static_cast<float>(n);
  tail[3] = cancel_.cancelled() ? 1.f : 0.f;
  tail[4] = cancel_.interrupted() ? 1.f : 0.f;
  if (auto st = collective_->AllreduceSum(flat_); !st.ok()) return st;
  SharedStep shared;
  shared.phases = step.phases;
  shared.loss_sum = tail[0];
  shared.correct = static_cast<int64_t>(std::llround(tail[1]));
  shared.count = static_cast<int64_t>(std::llround(tail[2]));
  shared.stop = tail[3] > 0;
  shared.interrupt = tail[4] > 0;
  if (shared.stop) {
    for (size_t i = 0; i < buffers.size(); ++i) buffers[i].copy_(before[i]);
    return shared;
  }
  if (!std::isfinite(shared.loss_sum)) return shared;
  // The mean of the ranks' mean-loss gradients: equal shares, so the mean
  // over the global batch as each rank normalised its own share.
  const float scale = 1.f / static_cast<float>(collective_->world_size());
  at = 0;
  for (auto& p : params) {
    torch::Tensor mean = flat_.narrow(0, at, p.numel()).view_as(p) * scale;
    if (p.grad().defined()) {
      p.grad().copy_(mean);
    } else {
      p.mutable_grad() = std::move(mean);  // FusedAdam takes any layout
    }
    at += p.numel();
  }
  shared.phases.allreduce_seconds = Seconds(exchange_start);
  const auto update_start = Clock::now();
  optimizer_->step();
  shared.phases.update_seconds = Seconds(update_start);
  return shared;
}

absl::StatusOr<RunPosition> Run::Resume(const LoadedData& data) {
  RunPosition pos;
  pos.global_step = config_.global_step_offset;
  if (config_.resume_from.empty()) return pos;
  auto bytes = ReadFile(config_.resume_from);
  if (!bytes.ok()) return bytes.status();
  auto restored = RestoreCheckpoint(*bytes, model_, *optimizer_);
  if (!restored.ok()) return restored.status();
  pos = std::move(*restored);
  if (!pos.order.empty() && pos.order.size() != data.train.images.size()) {
    return absl::DataLossError(absl::StrCat(
        "checkpoint: its data order has ", pos.order.size(), " images, the training split ",
        data.train.images.size(), "; the dataset changed since it was written"));
  }
  order_gen_.set_state(pos.order_rng);
  sink_->OnInfo(absl::StrCat("continuing at epoch ", pos.epoch, ", batch ", pos.next_batch,
                             " from checkpoint ", config_.resume_from));
  return pos;
}

absl::StatusOr<TrainResult> Run::Execute(const LoadedData& data) {
  // The job's convolutions, whatever other runs in this process use.
  ScopedWinogradMode winograd(config_.winograd ? WinogradMode::kAuto : WinogradMode::kOff);
  TrainResult result;
  if (auto st = Prepare(data, &result); !st.ok()) return st;
  auto pos = Resume(data);
  if (!pos.ok()) return pos.status();
  for (int epoch = pos->epoch; epoch <= config_.epochs; ++epoch) {
    auto er = TrainEpoch(data, epoch, &*pos);
    if (!er.ok()) return er.status();
    result.epochs.push_back(*er);
    sink_->OnEpoch(*er);
    // The next epoch's start: its order is drawn from the generator's state.
    RunPosition next;
    next.epoch = epoch + 1;
    next.global_step = pos->global_step;
    if (auto st = WriteCheckpoint(std::move(next)); !st.ok()) return st;
    if (after_epoch_) {
      auto go = after_epoch_(*er);
      if (!go.ok()) return go.status();
      if (!*go) break;
    }
  }
  if (auto st = WriteWeights(); !st.ok()) return st;
  if (last_evaluation_.images > 0) sink_->OnEvaluation(last_evaluation_);
  return result;
}

// Where an epoch stands: enough to checkpoint it mid-way and to resume it.
struct Run::EpochState {
  int epoch = 0;
  std::vector<int64_t> order;
  int first_batch = 0;
  EvalTotals train;
  double train_seconds = 0;
  double data_seconds = 0;
  StepPhases phases;           // where train_seconds went
  double earlier_seconds = 0;  // spent on this epoch before a resume
  Clock::time_point start = Clock::now();

  // The run's position before batch b.
  RunPosition Position(int b, int64_t global_step) const {
    RunPosition p;
    p.epoch = epoch;
    p.next_batch = b;
    p.global_step = global_step;
    p.order = order;
    p.loss_sum = train.loss_sum;
    p.correct = train.correct;
    p.count = train.count;
    p.elapsed_seconds = earlier_seconds + Seconds(start);
    p.step_seconds = train_seconds;
    p.data_seconds = data_seconds;
    p.phases = phases;
    return p;
  }
};

absl::StatusOr<EpochResult> Run::TrainEpoch(const LoadedData& data, int epoch,
                                            RunPosition* pos) {
  EpochState e;
  e.epoch = epoch;
  // Resumed inside an epoch: its order was drawn before the checkpoint (an
  // interrupt before the epoch's first batch too: then next_batch is 0 and
  // the generator is already past this epoch's draw).
  if (epoch == pos->epoch && !pos->order.empty()) {
    e.order = pos->order;
    e.first_batch = pos->next_batch;
    e.train.loss_sum = pos->loss_sum;
    e.train.correct = pos->correct;
    e.train.count = pos->count;
    e.train_seconds = pos->step_seconds;
    e.data_seconds = pos->data_seconds;
    e.phases = pos->phases;
    e.earlier_seconds = pos->elapsed_seconds;
  } else {
    torch::Tensor perm = torch::randperm(static_cast<int64_t>(data.train.images.size()),
                                         order_gen_, torch::kLong);
    e.order.assign(perm.data_ptr<int64_t>(), perm.data_ptr<int64_t>() + perm.numel());
  }
  if (auto st = TrainBatches(data, &e, pos); !st.ok()) return st;
  const auto validation_start = Clock::now();
  EvalTotals val = Evaluate(data.validation, epoch);
  if (!val.status.ok()) return val.status;

  EpochResult er;
  er.trial = config_.trial;
  er.epoch = epoch;
  er.train_loss = e.train.loss_sum / std::max<int64_t>(1, e.train.count);
  er.train_accuracy =
      static_cast<double>(e.train.correct) / std::max<int64_t>(1, e.train.count);
  er.validation_loss = val.loss_sum / std::max<int64_t>(1, val.count);
  er.validation_accuracy = static_cast<double>(val.correct) / std::max<int64_t>(1, val.count);
  er.seconds = e.earlier_seconds + Seconds(e.start);
  er.images_per_second = e.train_seconds > 0 ? e.train.count / e.train_seconds : 0;
  er.step_seconds = e.train_seconds;
  er.data_seconds = e.data_seconds;
  er.phases = e.phases;
  er.validation_seconds = Seconds(validation_start);
  last_evaluation_ = std::move(val.detail);
  return er;
}

absl::Status Run::TrainBatches(const LoadedData& data, EpochState* e, RunPosition* pos) {
  // This rank's images (all of them outside data-parallel runs) and its part
  // of each global batch.
  const std::vector<int64_t> share = RankShare(e->order, /*pad=*/true);
  const int64_t bs = config_.batch_size / (distributed() ? collective_->world_size() : 1);
  const int batches = static_cast<int>((static_cast<int64_t>(share.size()) + bs - 1) / bs);
  e->first_batch = std::min(e->first_batch, batches);
  // Each sample's augmentation is seeded by its dataset index, so the
  // batches after first_batch come out as they would have.
  std::vector<int64_t> rest(share.begin() + std::min<int64_t>(e->first_batch * bs, share.size()),
                            share.end());
  BatchLoader::Options lo;
  lo.batch_size = static_cast<int>(bs);
  lo.augment = true;
  lo.augmentation = config_.data.augmentation;
  lo.seed = config_.data.seed;
  lo.epoch = e->epoch;
  lo.threads = config_.data.loader_threads;
  lo.prefetch = PrefetchDepth();
  BatchLoader loader(data.train, std::move(rest), lo);
  // A fine-tune job's frozen trunk runs one batch ahead, during the step
  // before (step.h), where the backward pass is split; a trunk computed for
  // a step that will not run is dropped, its statistics put back, before a
  // checkpoint or on any way out.
  const int frozen_stages = FrozenStages(model_);
  const bool trunk_ahead = !distributed() && device_.is_cpu() && frozen_stages >= 0 &&
                           at::get_num_threads() == 2 && SplitBackwardApplies();
  TrunkAhead ahead;
  struct DropOnExit {
    std::function<void()> drop;
    ~DropOnExit() { drop(); }
  } drop_on_exit{[&] { DropTrunkAhead(model_, frozen_stages, &ahead); }};
  // Cancelled: after an interrupt (a shutdown), a checkpoint at batch b first.
  auto stop = [&](int b) -> absl::Status {
    DropTrunkAhead(model_, frozen_stages, &ahead);
    if (cancel_.interrupted()) {
      if (auto st = WriteCheckpoint(e->Position(b, pos->global_step)); !st.ok()) return st;
    }
    return absl::CancelledError("cancelled");
  };

  model_->train();
  // A last batch that PyTorch could not train on is left out, and not
  // counted in `batches`.
  const bool skip_last = static_cast<int64_t>(share.size()) % bs == 1 &&
                         BatchNormRaisesOnOneImage(config_.data.image_size);
  const int trained_batches = batches - (skip_last ? 1 : 0);
  auto single = [&](const Batch& batch) { return batch.labels.size(0) == 1 && skip_last; };
  Batch batch;
  Batch next;  // with trunk_ahead, the batch after this one
  bool has_next = false;
  bool exhausted = false;
  for (int b = e->first_batch;; ++b) {
    const auto wait_start = Clock::now();
    if (has_next) {
      batch = std::move(next);
      has_next = false;
    } else if (exhausted || !loader.Next(&batch)) {
      if (auto st = loader.status(); !st.ok()) return st;
      break;
    }
    e->data_seconds += Seconds(wait_start);
    // Data-parallel ranks stop together, at the batch where any rank's flag
    // arrives through the step's allreduce.
    if (!distributed() && cancel_.cancelled()) return stop(b);
    if (single(batch)) {
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
    torch::Tensor next_x;
    if (trunk_ahead && !exhausted) {
      const auto next_start = Clock::now();
      has_next = loader.Next(&next);
      exhausted = !has_next;
      if (has_next && !single(next)) next_x = next.images.to(device_);
      e->data_seconds += Seconds(next_start);
    }
    const auto step_start = Clock::now();
    torch::Tensor x = batch.images.to(device_);
    torch::Tensor y = batch.labels.to(device_);
    double loss_value;
    int64_t n;
    int64_t correct;
    if (distributed()) {
      auto shared = DistributedStep(x, y);
      if (!shared.ok()) return shared.status();
      if (shared->stop) {
        // Every rank saw the same flags; rank 0 checkpoints an interrupt.
        if (shared->interrupt && !cancel_.interrupted()) {
          return absl::CancelledError("cancelled");
        }
        return stop(b);
      }
      n = shared->count;
      loss_value = shared->loss_sum / std::max<int64_t>(1, n);
      correct = shared->correct;
      e->phases += shared->phases;
    } else {
      StepResult step = trunk_ahead ? TrainStepWithTrunk(model_, *optimizer_, x, y, config_.bf16,
                                                         frozen_stages, next_x, &ahead)
                                    : TrainStep(model_, *optimizer_, x, y, config_.bf16);
      loss_value = step.loss.item<double>();
      n = y.size(0);
      correct = step.logits.argmax(1).eq(y).sum().item<int64_t>();
      e->phases += step.phases;
    }
    if (!std::isfinite(loss_value)) {
      return absl::InternalError(absl::StrCat("training loss became ", loss_value, " at epoch ",
                                              e->epoch, " batch ", b,
                                              "; lower the learning rate"));
    }
    e->train.loss_sum += loss_value * n;
    e->train.correct += correct;
    e->train.count += n;
    const double step_seconds = Seconds(step_start);
    e->train_seconds += step_seconds;
    if (governor_) {
      if (governor_->Record(step_seconds, n)) UseIntraOpThreads(governor_->threads());
      if (std::string change = governor_->TakeChange(); !change.empty()) sink_->OnInfo(change);
    }
    BatchProgress progress;
    progress.trial = config_.trial;
    progress.epoch = e->epoch;
    progress.batch = b;
    progress.batches = trained_batches;
    progress.global_step = pos->global_step++;
    progress.loss = loss_value;
    progress.images_per_second = step_seconds > 0 ? n / step_seconds : 0;
    sink_->OnBatch(progress);
  }
  if (!distributed() && cancel_.cancelled()) return stop(batches);
  return absl::OkStatus();
}

EvalTotals Run::Evaluate(const DecodedSet& set, int epoch) {
  EvalTotals totals;
  // Data-parallel: every rank evaluates rank 0's weights (its BatchNorm
  // statistics are the saved ones) on its own share, unpadded.
  if (distributed()) {
    if (auto st = SyncFromRankZero(false); !st.ok()) {
      totals.status = st;
      return totals;
    }
  }
  torch::NoGradGuard no_grad;
  model_->eval();
  std::vector<int64_t> all(set.images.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
  std::vector<int64_t> order = RankShare(all, /*pad=*/false);
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
  const int64_t classes = model_->fc()->weight.size(0);
  totals.detail.num_classes = static_cast<int>(classes);
  totals.detail.confusion.assign(classes * classes, 0);
  // In bf16 on the CPU, the network folded for this pass (folded_eval.h).
  std::unique_ptr<FoldedResNet> folded = config_.bf16 ? FoldedResNet::Make(*model_) : nullptr;
  Batch batch;
  while (loader.Next(&batch)) {
    torch::Tensor x = batch.images.to(device_);
    torch::Tensor y = batch.labels.to(device_);
    torch::Tensor logits;
    if (folded != nullptr) {
      logits = folded->Forward(x);
    } else {
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
  totals.status = loader.status();
  if (distributed() && totals.status.ok()) {
    // One allreduce of the sums and the confusion matrix (exact in double).
    const int64_t cells = classes * classes;
    torch::Tensor sums = torch::zeros({cells + 4}, torch::kDouble);
    double* v = sums.data_ptr<double>();
    for (int64_t i = 0; i < cells; ++i) v[i] = static_cast<double>(totals.detail.confusion[i]);
    v[cells] = totals.loss_sum;
    v[cells + 1] = static_cast<double>(totals.correct);
    v[cells + 2] = static_cast<double>(totals.count);
    v[cells + 3] = static_cast<double>(totals.detail.top5_correct);
    totals.status = collective_->AllreduceSum(sums);
    for (int64_t i = 0; i < cells; ++i) totals.detail.confusion[i] = std::llround(v[i]);
    totals.loss_sum = v[cells];
    totals.correct = std::llround(v[cells + 1]);
    totals.count = std::llround(v[cells + 2]);
    totals.detail.top5_correct = std::llround(v[cells + 3]);
  }
  totals.detail.images = totals.count;
  totals.detail.top1_correct = totals.correct;
  return totals;
}

// Background batch preparation only when there are cores to spare for it:
// otherwise it preempts the intra-op threads mid-step, and the step waits
// for the slowest (measured here: 2 cores, 2 threads, 58 -> 50 img/s).
int Run::PrefetchDepth() const {
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  return cores >= config_.threads + config_.data.loader_threads ? 4 : 0;
}

absl::Status Run::WriteCheckpoint(RunPosition pos) {
  if (config_.checkpoint_dir.empty()) return absl::OkStatus();
  pos.order_rng = order_gen_.get_state();
  auto bytes = SerializeCheckpoint(model_, *optimizer_, pos);
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

absl::Status Run::WriteWeights() {
  return WriteWeightsTo(config_.output_pth, config_.output_safetensors);
}

// The model's current weights as a torch.save archive and/or safetensors.
absl::Status Run::WriteWeightsTo(const std::string& pth, const std::string& safetensors) {
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

}  // namespace traind::train
