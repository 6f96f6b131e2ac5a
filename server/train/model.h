// torchvision's ResNet family (ResNet-18 built) whose
// named_parameters()/named_buffers() match torchvision's state_dict keys
// exactly ("conv1.weight", "layer1.0.bn1.running_mean", ...).
//
// Thread-safety: a module is used by one thread at a time.
#ifndef TRAIND_SERVER_TRAIN_MODEL_H_
#define TRAIND_SERVER_TRAIN_MODEL_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace traind::train {

// torchvision.models.resnet.BasicBlock.
class BasicBlockImpl : public torch::nn::Module {
 public:
  BasicBlockImpl(int64_t in_planes, int64_t planes, int64_t stride);
  torch::Tensor forward(torch::Tensor x);

  // Its modules, for passes that read the network's structure
  // (folded_eval.h); the downsample's are null when it has none.
  torch::nn::Conv2d& conv1() { return conv1_; }
  torch::nn::BatchNorm2d& bn1() { return bn1_; }
  torch::nn::Conv2d& conv2() { return conv2_; }
  torch::nn::BatchNorm2d& bn2() { return bn2_; }
  torch::nn::Conv2d& downsample_conv() { return downsample_conv_; }
  torch::nn::BatchNorm2d& downsample_bn() { return downsample_bn_; }

 private:
  torch::nn::Conv2d conv1_{nullptr};
  torch::nn::BatchNorm2d bn1_{nullptr};
  torch::nn::Conv2d conv2_{nullptr};
  torch::nn::BatchNorm2d bn2_{nullptr};
  torch::nn::Sequential downsample_{nullptr};  // null when shapes match
  torch::nn::Conv2d downsample_conv_{nullptr};  // downsample_'s two modules
  torch::nn::BatchNorm2d downsample_bn_{nullptr};
};
TORCH_MODULE(BasicBlock);

// The residual block a ResNet is built of. torchvision's family has two;
// traind builds BasicBlock networks (ResNet-18). A Bottleneck (ResNet-50)
// would be a second value here and a second block class.
enum class Block { kBasic };

// A member of torchvision's ResNet family: its block, and how many blocks
// each of its four stages has.
struct Architecture {
  const char* name;  // torchvision's: "resnet18"
  Block block;
  int layers[4];
};

// ResNet-18: BasicBlocks, {2, 2, 2, 2}.
const Architecture& ResNet18Architecture();

// torchvision.models.resnet.ResNet(block, layers, num_classes=...), with
// torchvision's default initialisation (Kaiming-normal convolutions, unit
// BatchNorm). The architecture is a value, not a type: every function of the
// engine takes a ResNet.
class ResNetImpl : public torch::nn::Module {
 public:
  ResNetImpl(const Architecture& architecture, int64_t num_classes);
  torch::Tensor forward(torch::Tensor x);
  // forward(x) in two parts: the stem (with its max pooling) and the first
  // `stages` stages (0-4), then the rest. ForwardHead(ForwardTrunk(x, k), k)
  // runs the operators forward(x) runs.
  torch::Tensor ForwardTrunk(torch::Tensor x, int stages);
  torch::Tensor ForwardHead(torch::Tensor x, int stages);

  const Architecture& architecture() const { return architecture_; }
  torch::nn::Linear& fc() { return fc_; }
  // The stem and the four stages (0-3), for passes that read the network's
  // structure (folded_eval.h).
  torch::nn::Conv2d& conv1() { return conv1_; }
  torch::nn::BatchNorm2d& bn1() { return bn1_; }
  torch::nn::Sequential& layer(int stage) {
    return stage == 0 ? layer1_ : stage == 1 ? layer2_ : stage == 2 ? layer3_ : layer4_;
  }
  // Replaces the classifier with a new Linear(features, num_classes),
  // default initialised; the caller applies the recipe's initialisation.
  void ResetClassifier(int64_t num_classes);

 private:
  Architecture architecture_;
  int64_t features_ = 0;  // the classifier's input width
  torch::nn::Conv2d conv1_{nullptr};
  torch::nn::BatchNorm2d bn1_{nullptr};
  torch::nn::Sequential layer1_{nullptr}, layer2_{nullptr}, layer3_{nullptr},
      layer4_{nullptr};
  torch::nn::Linear fc_{nullptr};
};
TORCH_MODULE(ResNet);

// torchvision.models.resnet18(num_classes=...).
ResNet ResNet18(int64_t num_classes);

// The recipe's scratch initialisation: Xavier-uniform weights for every Conv2d
// and Linear, zero biases.
void XavierInit(torch::nn::Module& module);

// state_dict entries in torchvision's order: per module, its parameters then
// its buffers, modules in registration order.
std::vector<std::pair<std::string, torch::Tensor>> StateDict(
    const torch::nn::Module& module);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_MODEL_H_
