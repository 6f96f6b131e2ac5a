// Training checkpoints: everything a run needs to continue exactly where it
// stopped (model parameters and buffers, Adam moments and step counts, the
// position in the epoch, the epoch's data order and partial totals, the
// data-order generator's state), as one safetensors file.
//
// Tensors are named "model/<state_dict key>", "adam/<group>/<index>/<field>"
// and "state/<field>", so a checkpoint can also be inspected with any
// safetensors reader.
#ifndef TRAIND_SERVER_TRAIN_CHECKPOINT_H_
#define TRAIND_SERVER_TRAIN_CHECKPOINT_H_

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "server/train/config.h"
#include "server/train/model.h"

namespace traind::train {

// Where a run stands, apart from the model and optimizer.
struct RunPosition {
  int epoch = 1;         // the epoch in progress, from 1
  int next_batch = 0;    // first batch of `epoch` not yet trained; 0: not started
  int64_t global_step = 0;
  // The data order of `epoch`; present when next_batch > 0, and at batch 0
  // when the run stopped after drawing it (an interrupt before its first batch).
  std::vector<int64_t> order;
  // Training totals of `epoch` so far, and where its time went.
  double loss_sum = 0;
  int64_t correct = 0;
  int64_t count = 0;
  double elapsed_seconds = 0;
  double step_seconds = 0;
  double data_seconds = 0;
  StepPhases phases;
  // State of the generator that draws each epoch's order (after `epoch`'s draw
  // when next_batch > 0, before it otherwise).
  torch::Tensor order_rng;
};

absl::StatusOr<std::string> SerializeCheckpoint(ResNet& model, torch::optim::Adam& optimizer,
                                                const RunPosition& position);

// Loads `bytes` into `model` and `optimizer` (built as the job's recipe
// builds them) and returns the position. DATA_LOSS naming the problem when
// the checkpoint is damaged or belongs to another model or recipe.
absl::StatusOr<RunPosition> RestoreCheckpoint(const std::string& bytes, ResNet& model,
                                              torch::optim::Adam& optimizer);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_CHECKPOINT_H_
