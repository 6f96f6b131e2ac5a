// What one training run needs and what it reports, with no LibTorch, RPC or
// storage types: the engine's whole surface besides the run functions.
#ifndef TRAIND_SERVER_TRAIN_CONFIG_H_
#define TRAIND_SERVER_TRAIN_CONFIG_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace traind::train {

enum class Kind { kFinetune, kScratch };

// Per-image augmentation; the defaults are the reference recipe's.
struct AugmentConfig {
  double hflip_probability = 0.5;
  double rotation_degrees = 10.0;
  double brightness = 0.2;
  double contrast = 0.2;
  double saturation = 0.2;
  double hue = 0.1;
};

// Where the images are and how they are split and prepared.
struct DataConfig {
  // Absolute path of the dataset folder (already resolved by the caller).
  std::string dir;
  std::vector<std::string> exclude_classes = {"BACKGROUND_Google"};
  int image_size = 128;
  double train_fraction = 0.8;
  uint64_t seed = 0;
  AugmentConfig augmentation;
  bool augment_validation = false;
  int loader_threads = 2;
};

// One training run (fine-tune or scratch). Defaults are the recipe's.
struct TrainConfig {
  Kind kind = Kind::kFinetune;
  DataConfig data;
  int epochs = 5;
  int batch_size = 32;
  double learning_rate = 1e-3;           // classifier (fine-tune) or all
  double backbone_learning_rate = 1e-4;  // trainable blocks (fine-tune)
  std::vector<std::string> trainable_blocks = {"layer3", "layer4"};
  std::string device = "auto";  // "auto", "cpu" or "cuda"
  int threads = 2;              // intra-op threads
  // The steps' thread count follows contention, up to `threads`
  // (thread_governor.h); results are then not bit-reproducible.
  bool adaptive_threads = false;
  bool bf16 = false;            // bfloat16 autocast of the forward pass
  // float32 3x3 stride-1 convolutions as oneDNN's Winograd kernels where the
  // CPU has them (winograd_conv.h): faster, and within rounding of
  // LibTorch's convolutions per step, not bit-identical to them.
  bool winograd = false;
  // Starting weights (state_dict .pth or .safetensors); required for
  // kFinetune. A classifier whose shape does not fit the dataset is replaced.
  std::string initial_weights;
  // Where the final weights are written; empty: not written.
  std::string output_pth;
  std::string output_safetensors;
  // Sweep trial index reported with every metric; 0 outside sweeps.
  int trial = 0;
  // Added to the global batch index reported (sweeps continue counting).
  int64_t global_step_offset = 0;
  // Where checkpoints are written (after every epoch, and at the batch
  // boundary where an Interrupt() lands); empty: none.
  std::string checkpoint_dir;
  // A checkpoint to continue from (already verified by the caller); empty:
  // start afresh.
  std::string resume_from;
};

struct BatchProgress {
  int trial = 0;
  int epoch = 0;  // from 1
  int batch = 0;  // from 0
  int batches = 0;
  int64_t global_step = 0;
  double loss = 0;
  double images_per_second = 0;
};

// Where an epoch's training steps spent their time, seconds summed over the
// steps: the forward pass (and the loss), the backward pass, the gradient
// allreduce of a data-parallel job (with packing the gradients and the
// step's loss into its buffer; 0 otherwise) and the optimizer's update.
// The rest of the steps' time is copying each batch in and reading the loss
// back. Wall-clock on the job's thread: on a GPU, the launching of kernels.
struct StepPhases {
  double forward_seconds = 0;
  double backward_seconds = 0;
  double allreduce_seconds = 0;
  double update_seconds = 0;

  StepPhases& operator+=(const StepPhases& o) {
    forward_seconds += o.forward_seconds;
    backward_seconds += o.backward_seconds;
    allreduce_seconds += o.allreduce_seconds;
    update_seconds += o.update_seconds;
    return *this;
  }
};

struct EpochResult {
  int trial = 0;
  int epoch = 0;
  double train_loss = 0;
  double train_accuracy = 0;
  double validation_loss = 0;
  double validation_accuracy = 0;
  double seconds = 0;
  double images_per_second = 0;
  // Where the epoch's wall time went: training steps (forward, backward,
  // update, loss read-back), waiting for the loader, validation.
  double step_seconds = 0;
  double data_seconds = 0;
  double validation_seconds = 0;
  // Where step_seconds went.
  StepPhases phases;
};

// A checkpoint as written: `epoch` is the epoch the run continues with and
// next_batch the first of its batches not yet trained (0: the epoch has not
// started, every earlier epoch is trained and validated).
struct CheckpointInfo {
  int epoch = 1;
  int next_batch = 0;
  int64_t global_step = 0;
  std::string path;
  std::string sha256;  // hex digest of the file
  int64_t size = 0;
  // Epochs fully trained and validated at this point.
  int completed_epochs() const { return epoch - 1; }
};

struct DatasetSummary {
  std::vector<std::string> class_names;
  int train_images = 0;
  int validation_images = 0;
};

// How the final model classifies the validation split (from the last
// epoch's validation pass).
struct Evaluation {
  int num_classes = 0;
  int64_t images = 0;
  int64_t top1_correct = 0;
  int64_t top5_correct = 0;  // true class among the 5 highest logits
  // num_classes x num_classes, row-major: [true class][predicted class].
  std::vector<int64_t> confusion;
};

// Where a distributed job's ranks run.
struct Placement {
  std::string launcher;
  int world_size = 1;
  std::string scheduler_job;
  std::vector<std::string> ranks;
};

// Receives progress from the training thread. Implementations must return
// quickly: training waits for them.
class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  virtual void OnDataset(const DatasetSummary& summary) = 0;
  virtual void OnBatch(const BatchProgress& batch) = 0;
  virtual void OnEpoch(const EpochResult& epoch) = 0;
  virtual void OnInfo(const std::string& text) = 0;
  virtual void OnWarning(const std::string& text) = 0;
  // The final model's validation figures, once at the end of a run.
  virtual void OnEvaluation(const Evaluation& evaluation) {}
  // A distributed job's placement, when it is known or changes.
  virtual void OnPlacement(const Placement& placement) {}
  // A scheduler holds the ranks back (Slurm's PENDING, with its reason),
  // then starts them.
  virtual void OnWaiting(const std::string& reason) {}
  virtual void OnStarted() {}
  // A checkpoint was written durably. An error fails the run (the caller
  // could not record it).
  virtual absl::Status OnCheckpoint(const CheckpointInfo& checkpoint) {
    return absl::OkStatus();
  }
};

// Set from any thread; the run stops at the next batch boundary. After
// Interrupt() (a daemon shutting down, a job paused or preempted) it first
// writes a checkpoint there, when the run has a checkpoint folder.
class CancelToken {
 public:
  CancelToken() = default;
  // Also fires when `parent` does.
  explicit CancelToken(const CancelToken* parent) : parent_(parent) {}

  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  void Interrupt() {
    interrupted_.store(true, std::memory_order_relaxed);
    Cancel();
  }
  bool cancelled() const {
    return cancelled_.load(std::memory_order_relaxed) || (parent_ && parent_->cancelled());
  }
  bool interrupted() const {
    return interrupted_.load(std::memory_order_relaxed) || (parent_ && parent_->interrupted());
  }
  // Unset again, for a job's next attempt; only while no run uses the token
  // and nothing else can set it.
  void Reset() {
    cancelled_.store(false, std::memory_order_relaxed);
    interrupted_.store(false, std::memory_order_relaxed);
  }

 private:
  const CancelToken* const parent_ = nullptr;
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> interrupted_{false};
};

// One class a model predicts for an image (Classify).
struct Prediction {
  int class_index = 0;
  double probability = 0;
};

struct TrainResult {
  DatasetSummary dataset;
  std::vector<EpochResult> epochs;
};

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_CONFIG_H_
