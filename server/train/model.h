// ResNet-18 whose named_parameters()/named_buffers() match torchvision's
// state_dict keys exactly ("conv1.weight", "layer1.0.bn1.running_mean", ...).
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

// torchvision.models.resnet18(num_classes=...), with torchvision's default
// initialisation (Kaiming-normal convolutions, unit BatchNorm).
class ResNet18Impl : public torch::nn::Module {
 public:
  explicit ResNet18Impl(int64_t num_classes);
  torch::Tensor forward(torch::Tensor x);

  torch::nn::Linear& fc() { return fc_; }
  // Replaces the classifier with a new Linear(512, num_classes), default
  // initialised; the caller applies the recipe's initialisation.
  void ResetClassifier(int64_t num_classes);

 private:
  torch::nn::Conv2d conv1_{nullptr};
  torch::nn::BatchNorm2d bn1_{nullptr};
  torch::nn::Sequential layer1_{nullptr}, layer2_{nullptr}, layer3_{nullptr},
      layer4_{nullptr};
  torch::nn::Linear fc_{nullptr};
};
TORCH_MODULE(ResNet18);

// The recipe's scratch initialisation: Xavier-uniform weights for every Conv2d
// and Linear, zero biases.
void XavierInit(torch::nn::Module& module);

// state_dict entries in torchvision's order: per module, its parameters then
// its buffers, modules in registration order.
std::vector<std::pair<std::string, torch::Tensor>> StateDict(
    const torch::nn::Module& module);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_MODEL_H_
