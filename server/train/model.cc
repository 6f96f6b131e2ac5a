#include "server/train/model.h"

#include "server/train/fused_batch_norm.h"
#include "server/train/gemm_conv.h"
#include "server/train/split_backward.h"
#include "server/train/max_pool.h"

namespace traind::train {
namespace {

torch::nn::Conv2d Conv(int64_t in, int64_t out, int64_t kernel, int64_t stride,
                       int64_t padding) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel)
                               .stride(stride)
                               .padding(padding)
                               .bias(false));
}

// One stage: `blocks` blocks, the first with `stride` (and a downsample
// when the shape changes). Returns the stage; `in_planes` becomes its output
// width.
torch::nn::Sequential MakeLayer(Block block, int64_t* in_planes, int64_t planes, int blocks,
                                int64_t stride) {
  torch::nn::Sequential layer;
  switch (block) {
    case Block::kBasic:
      for (int i = 0; i < blocks; ++i) {
        layer->push_back(BasicBlock(*in_planes, planes, i == 0 ? stride : 1));
        *in_planes = planes;  // BasicBlock's expansion is 1
      }
      break;
  }
  return layer;
}

}  // namespace

BasicBlockImpl::BasicBlockImpl(int64_t in_planes, int64_t planes,
                               int64_t stride) {
  conv1_ = register_module("conv1", Conv(in_planes, planes, 3, stride, 1));
  bn1_ = register_module("bn1", torch::nn::BatchNorm2d(planes));
  conv2_ = register_module("conv2", Conv(planes, planes, 3, 1, 1));
  bn2_ = register_module("bn2", torch::nn::BatchNorm2d(planes));
  if (stride != 1 || in_planes != planes) {
    downsample_conv_ = Conv(in_planes, planes, 1, stride, 0);
    downsample_bn_ = torch::nn::BatchNorm2d(planes);
    // "downsample.0" and "downsample.1", as torchvision names them.
    downsample_ = register_module(
        "downsample", torch::nn::Sequential(downsample_conv_, downsample_bn_));
  }
}

torch::Tensor BasicBlockImpl::forward(torch::Tensor x) {
  torch::Tensor identity =
      downsample_ ? BatchNormAct(*downsample_bn_, ConvForward(*downsample_conv_, x),
                                 {}, /*relu=*/false)
                  : x;
  // BatchNorm, the add and the ReLU in one pass where BatchNormAct fuses
  // them; otherwise the add and the ReLU in place, as torchvision's block
  // (BatchNorm's backward needs its input, not its output).
  torch::Tensor out =
      BatchNormAct(*bn1_, Conv3x3Forward(*conv1_, x), {}, /*relu=*/true);
  return BatchNormAct(*bn2_, Conv3x3Forward(*conv2_, out), identity,
                      /*relu=*/true);
}

const Architecture& ResNet18Architecture() {
  static const Architecture kResNet18{"resnet18", Block::kBasic, {2, 2, 2, 2}};
  return kResNet18;
}

ResNet ResNet18(int64_t num_classes) { return ResNet(ResNet18Architecture(), num_classes); }

ResNetImpl::ResNetImpl(const Architecture& architecture, int64_t num_classes)
    : architecture_(architecture) {
  const Block block = architecture.block;
  const int* layers = architecture.layers;
  conv1_ = register_module("conv1", Conv(3, 64, 7, 2, 3));
  bn1_ = register_module("bn1", torch::nn::BatchNorm2d(64));
  int64_t planes = 64;
  layer1_ = register_module("layer1", MakeLayer(block, &planes, 64, layers[0], 1));
  layer2_ = register_module("layer2", MakeLayer(block, &planes, 128, layers[1], 2));
  layer3_ = register_module("layer3", MakeLayer(block, &planes, 256, layers[2], 2));
  layer4_ = register_module("layer4", MakeLayer(block, &planes, 512, layers[3], 2));
  features_ = planes;
  fc_ = register_module("fc", torch::nn::Linear(features_, num_classes));

  torch::NoGradGuard no_grad;
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* conv = m->as<torch::nn::Conv2d>()) {
      torch::nn::init::kaiming_normal_(conv->weight, 0.0, torch::kFanOut,
                                       torch::kReLU);
    } else if (auto* bn = m->as<torch::nn::BatchNorm2d>()) {
      torch::nn::init::ones_(bn->weight);
      torch::nn::init::zeros_(bn->bias);
    }
  }
}

torch::Tensor ResNetImpl::forward(torch::Tensor x) { return ForwardHead(ForwardTrunk(x, 0), 0); }

torch::Tensor ResNetImpl::ForwardTrunk(torch::Tensor x, int stages) {
  x = BatchNormAct(*bn1_, ConvForward(*conv1_, x), {}, /*relu=*/true);
  x = MaxPool3x3Stride2(x);
  for (int s = 0; s < stages; ++s) x = layer(s)->forward(x);
  return x;
}

torch::Tensor ResNetImpl::ForwardHead(torch::Tensor x, int stages) {
  for (int s = stages; s < 4; ++s) x = layer(s)->forward(x);
  x = torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
  return fc_->forward(x);
}

void ResNetImpl::ResetClassifier(int64_t num_classes) {
  fc_ = replace_module("fc", torch::nn::Linear(features_, num_classes));
}

void XavierInit(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& m : module.modules(/*include_self=*/true)) {
    if (auto* conv = m->as<torch::nn::Conv2d>()) {
      torch::nn::init::xavier_uniform_(conv->weight);
      if (conv->bias.defined()) torch::nn::init::zeros_(conv->bias);
    } else if (auto* linear = m->as<torch::nn::Linear>()) {
      torch::nn::init::xavier_uniform_(linear->weight);
      if (linear->bias.defined()) torch::nn::init::zeros_(linear->bias);
    }
  }
}

std::vector<std::pair<std::string, torch::Tensor>> StateDict(
    const torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : module.named_modules(/*name_prefix=*/"",
                                               /*include_self=*/true)) {
    const std::string prefix = item.key().empty() ? "" : item.key() + ".";
    for (const auto& p : item.value()->named_parameters(/*recurse=*/false)) {
      out.emplace_back(prefix + p.key(), p.value());
    }
    for (const auto& b : item.value()->named_buffers(/*recurse=*/false)) {
      out.emplace_back(prefix + b.key(), b.value());
    }
  }
  return out;
}

}  // namespace traind::train
