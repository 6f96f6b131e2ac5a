// engine_forward WEIGHTS NUM_CLASSES INPUT OUTPUT [train]
// Loads WEIGHTS (a state_dict .pth or .safetensors) into the engine's
// ResNet-18, runs it on INPUT (a safetensors file with tensor "input") and
// writes OUTPUT (safetensors with "logits", and in train mode the updated
// BatchNorm running statistics). Used by the golden tests against
// torchvision.
#include <cstdio>
#include <string>

#include "common/file_util.h"
#include "server/train/model.h"
#include "server/train/weights.h"

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: engine_forward WEIGHTS NUM_CLASSES INPUT OUTPUT [train]\n");
    return 2;
  }
  using namespace traind::train;
  torch::set_num_threads(2);
  auto weights = LoadStateDict(argv[1]);
  if (!weights.ok()) {
    std::fprintf(stderr, "%s\n", std::string(weights.status().message()).c_str());
    return 1;
  }
  ResNet18 model(std::stoll(argv[2]));
  if (auto st = CopyIntoModule(*weights, *model); !st.ok()) {
    std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return 1;
  }
  auto input = LoadStateDict(argv[3]);
  if (!input.ok() || input->empty()) {
    std::fprintf(stderr, "cannot read input\n");
    return 1;
  }
  const bool train = argc > 5 && std::string(argv[5]) == "train";
  torch::NoGradGuard no_grad;
  if (train) {
    model->train();
  } else {
    model->eval();
  }
  torch::Tensor logits = model->forward(input->front().second);
  NamedTensors out = {{"logits", logits}};
  if (train) {
    for (auto& [name, t] : StateDict(*model)) {
      if (name.find("running_") != std::string::npos) out.emplace_back(name, t);
    }
  }
  auto bytes = SerializeSafetensors(out);
  if (!bytes.ok() || !traind::WriteFileAtomically(argv[4], *bytes).ok()) {
    std::fprintf(stderr, "cannot write output\n");
    return 1;
  }
  return 0;
}
