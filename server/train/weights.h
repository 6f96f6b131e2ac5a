// Import and export of model weights, with no code execution on import:
// - PyTorch state_dict archives as written by `torch.save(model.state_dict())`
//   (zip, with the small pickle subset a state_dict uses),
// - safetensors files.
// Export writes a `torch.load`-able state_dict archive and safetensors.
#ifndef TRAIND_SERVER_TRAIN_WEIGHTS_H_
#define TRAIND_SERVER_TRAIN_WEIGHTS_H_

#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace traind::train {

// Ordered (name, tensor) pairs, as a state_dict holds them.
using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Reads a state_dict file; the format is told by its content (a zip archive
// or a safetensors header). Tensors come back on the CPU.
absl::StatusOr<NamedTensors> LoadStateDict(const std::string& path);

// Parses state_dict archive bytes (the content of a `torch.save` zip file).
absl::StatusOr<NamedTensors> ParseTorchArchive(const std::string& bytes);

// Parses safetensors bytes.
absl::StatusOr<NamedTensors> ParseSafetensors(const std::string& bytes);

// Serialises as `torch.save(state_dict)` does (torch_save.cc): a zip archive
// whose pickle is an OrderedDict of tensors, which torch.load(weights_only=
// True) accepts in every PyTorch since 1.13.
absl::StatusOr<std::string> SerializeTorchArchive(const NamedTensors& tensors);

// Serialises as safetensors.
absl::StatusOr<std::string> SerializeSafetensors(const NamedTensors& tensors);

// Copies `tensors` into `module`'s parameters and buffers. Every key must
// exist in both with the same shape, except that keys listed in `skip` are
// left at the module's values.
absl::Status CopyIntoModule(const NamedTensors& tensors,
                            torch::nn::Module& module,
                            const std::vector<std::string>& skip = {});

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_WEIGHTS_H_
