#include "server/train/folded_eval.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <utility>

#include "server/train/gemm_conv.h"
#include "server/train/max_pool.h"
#include "server/train/step.h"

#if TRAIND_HAVE_DNNL
#include <dnnl.hpp>

#include "server/train/onednn.h"
#endif

namespace traind::train {
namespace {

std::atomic<bool> g_enabled{true};

int64_t OutputSize(int64_t in, int64_t kernel, int64_t stride, int64_t padding) {
  return (in + 2 * padding - kernel) / stride + 1;
}

}  // namespace

void SetFoldedEvalEnabled(bool enabled) { g_enabled.store(enabled); }

struct FoldedResNet::Conv {
  int64_t in = 0, out = 0, kernel = 0, stride = 1, padding = 0;
  bool relu = false;
  torch::Tensor weight;  // bfloat16, [out, in, k, k] channels-last, BatchNorm's scale in
  torch::Tensor bias;    // float, [out]: BatchNorm's shift

  // Folds `bn` (in evaluation mode) into `conv`, which has no bias.
  Conv(torch::nn::Conv2dImpl& conv, torch::nn::BatchNorm2dImpl& bn, bool relu_after)
      : relu(relu_after) {
    const auto& o = conv.options;
    const torch::Tensor& w = conv.weight;
    in = w.size(1);
    out = w.size(0);
    kernel = w.size(2);
    stride = (*o.stride())[0];
    // A ResNet's convolutions pad by half their kernel (model.cc); LibTorch
    // holds the padding in a type that differs between versions.
    padding = kernel / 2;
    torch::NoGradGuard no_grad;
    const torch::Tensor scale = bn.weight / torch::sqrt(bn.running_var + bn.options.eps());
    weight = (w * scale.view({-1, 1, 1, 1}))
                 .to(torch::kBFloat16)
                 .contiguous(torch::MemoryFormat::ChannelsLast);
    bias = (bn.bias - bn.running_mean * scale).contiguous();
  }

  // relu(conv(x) + bias + residual) (without the ReLU or the residual where
  // this convolution has none), rounded once to bfloat16, channels-last.
  // A defined `residual` is overwritten with the result, which is returned.
  torch::Tensor Run(const torch::Tensor& x, const torch::Tensor& residual);

#if TRAIND_HAVE_DNNL
  // A primitive for one input shape and thread count, the layouts of its
  // operands, and the weights in the layout it chose.
  struct Shape {
    bool gemm;  // a matrix product over the input's patches
    dnnl::primitive primitive;
    dnnl::memory::desc src, weights, bias, dst, scratchpad;
    torch::Tensor weights_memory;
  };
  // Null when oneDNN has only its reference kernel for the shape (or none).
  Shape* ShapeFor(int64_t n, int64_t h, int64_t w, bool add);

  // (batch, height, width, residual added, threads)
  std::map<std::tuple<int64_t, int64_t, int64_t, bool, int>, std::unique_ptr<Shape>> shapes;
#endif
};

#if TRAIND_HAVE_DNNL
using onednn::Bytes;
using onednn::Engine;
using onednn::Memory;

FoldedResNet::Conv::Shape* FoldedResNet::Conv::ShapeFor(int64_t n, int64_t h, int64_t w, bool add) {
  const auto key = std::make_tuple(n, h, w, add, at::get_num_threads());
  auto it = shapes.find(key);
  if (it != shapes.end()) return it->second.get();
  using dnnl::memory;
  const auto bf16 = memory::data_type::bf16;
  const auto any = memory::format_tag::any;
  const int64_t ho = OutputSize(h, kernel, stride, padding);
  const int64_t wo = OutputSize(w, kernel, stride, padding);
  dnnl::post_ops ops;
  if (add) ops.append_sum(1.0f);  // dst holds the residual before
  if (relu) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto shape = std::make_unique<Shape>();
  // Small 3x3 maps (layer4's) as one matrix product over the patches, as
  // the training step does (gemm_conv.h): 512 channels at 4x4, batch 32,
  // with the epilogue, 2.9 ms against the convolution's 3.7.
  shape->gemm = kernel == 3 && ho * wo <= kGemmConvMaxPixels;
  // The folded weights as oneDNN first sees them: [out, in, k, k] for the
  // convolution; [9*in, out] (columns the channels-last rows) for the GEMM.
  memory::desc plain;
  try {
    if (shape->gemm) {
      const int64_t m = n * ho * wo, k = kernel * kernel * in;
      shape->src = memory::desc({m, k}, bf16, memory::format_tag::ab);
      shape->bias = memory::desc({1, out}, memory::data_type::f32, memory::format_tag::ab);
      shape->dst = memory::desc({m, out}, bf16, memory::format_tag::ab);  // NHWC
      dnnl::matmul::primitive_desc pd(
          {shape->src, memory::desc({k, out}, bf16, any), shape->bias, shape->dst}, attr, Engine());
      if (std::string(pd.impl_info_str()).rfind("ref", 0) == 0) return nullptr;
      shape->primitive = dnnl::matmul(pd);
      shape->weights = pd.weights_desc();
      shape->scratchpad = pd.scratchpad_desc();
      plain = memory::desc({k, out}, bf16, memory::format_tag::ba);
    } else {
      shape->src = memory::desc({n, in, h, w}, bf16, memory::format_tag::nhwc);
      shape->bias = memory::desc({out}, memory::data_type::f32, memory::format_tag::x);
      shape->dst = memory::desc({n, out, ho, wo}, bf16, memory::format_tag::nhwc);
      dnnl::convolution_forward::primitive_desc pd(
          {dnnl::prop_kind::forward_inference,
           dnnl::algorithm::convolution_direct,
           shape->src,
           memory::desc({out, in, kernel, kernel}, bf16, any),
           shape->bias,
           shape->dst,
           {stride, stride},
           {padding, padding},
           {padding, padding}},
          attr, Engine());
      // oneDNN's reference kernels are far slower than autocast's path.
      if (std::string(pd.impl_info_str()).rfind("ref", 0) == 0) return nullptr;
      shape->primitive = dnnl::convolution_forward(pd);
      shape->weights = pd.weights_desc();
      shape->scratchpad = pd.scratchpad_desc();
      plain = memory::desc({out, in, kernel, kernel}, bf16, memory::format_tag::ohwi);
    }
  } catch (const dnnl::error&) {
    return nullptr;
  }
  // The folded weights in the primitive's layout, once per shape.
  shape->weights_memory = Bytes(shape->weights);
  dnnl::memory from = Memory(plain, weight), to = Memory(shape->weights, shape->weights_memory);
  dnnl::stream stream(Engine());
  dnnl::reorder(from, to).execute(stream, from, to);
  return shapes.emplace(key, std::move(shape)).first->second.get();
}

torch::Tensor FoldedResNet::Conv::Run(const torch::Tensor& x, const torch::Tensor& residual) {
  RECORD_FUNCTION("traind::folded_conv", std::vector<c10::IValue>());
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3);
  const bool add = residual.defined();
  Shape* shape = ShapeFor(n, h, w, add);
  TORCH_CHECK(shape != nullptr, "no oneDNN bfloat16 convolution for ", in, "->", out,
              " channels at ", h, "x", w);
  const auto cl = torch::MemoryFormat::ChannelsLast;
  const torch::Tensor x16 = x.to(torch::kBFloat16);
  const torch::Tensor src = shape->gemm ? Conv3x3Patches(x16, stride) : x16.contiguous(cl);
  const std::vector<int64_t> sizes{n, out, OutputSize(h, kernel, stride, padding),
                                   OutputSize(w, kernel, stride, padding)};
  torch::Tensor dst;
  if (add) {
    TORCH_CHECK(residual.sizes() == sizes, "residual of shape ", residual.sizes(),
                " for an output of ", c10::IntArrayRef(sizes));
    dst = residual.to(torch::kBFloat16).contiguous(cl);
  } else {
    dst = torch::empty(sizes, x.options().dtype(torch::kBFloat16).memory_format(cl));
  }
  torch::Tensor scratch = Bytes(shape->scratchpad);
  dnnl::stream stream(Engine());
  shape->primitive.execute(stream,
                           {{DNNL_ARG_SRC, Memory(shape->src, src)},
                            {DNNL_ARG_WEIGHTS, Memory(shape->weights, shape->weights_memory)},
                            {DNNL_ARG_BIAS, Memory(shape->bias, bias)},
                            {DNNL_ARG_DST, Memory(shape->dst, dst)},
                            {DNNL_ARG_SCRATCHPAD, Memory(shape->scratchpad, scratch)}});
  return dst;
}

#else
torch::Tensor FoldedResNet::Conv::Run(const torch::Tensor&, const torch::Tensor&) {
  TORCH_CHECK(false, "traind was built without oneDNN: no folded evaluation");
}
#endif

FoldedResNet::FoldedResNet(ResNetImpl& model) : model_(model) {
  auto add = [this](torch::nn::Conv2dImpl& conv, torch::nn::BatchNorm2dImpl& bn, bool relu) {
    convs_.push_back(std::make_unique<Conv>(conv, bn, relu));
    return convs_.back().get();
  };
  stem_ = add(*model.conv1(), *model.bn1(), /*relu=*/true);
  for (int stage = 0; stage < 4; ++stage) {
    for (const auto& child : model.layer(stage)->children()) {
      auto* block = child->as<BasicBlockImpl>();
      TORCH_CHECK(block != nullptr, "folded evaluation takes BasicBlock networks");
      Block b;
      b.downsample = block->downsample_conv()
                         ? add(*block->downsample_conv(), *block->downsample_bn(), false)
                         : nullptr;
      b.conv1 = add(*block->conv1(), *block->bn1(), /*relu=*/true);
      b.conv2 = add(*block->conv2(), *block->bn2(), /*relu=*/true);  // after the add
      blocks_.push_back(b);
    }
  }
}

FoldedResNet::~FoldedResNet() = default;

std::unique_ptr<FoldedResNet> FoldedResNet::Make(ResNetImpl& model) {
#if TRAIND_HAVE_DNNL
  if (!g_enabled.load() || !CpuHasOneDnnBf16Gemms()) return nullptr;
  for (const auto& m : model.modules(/*include_self=*/true)) {
    if (m->is_training()) return nullptr;
  }
  for (const auto& p : model.parameters()) {
    if (!p.device().is_cpu() || p.scalar_type() != torch::kFloat) return nullptr;
  }
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (auto* conv = m->as<torch::nn::Conv2d>()) {
      const auto& o = conv->options;
      if (conv->bias.defined() || o.groups() != 1 || (*o.dilation())[0] != 1 ||
          (*o.dilation())[1] != 1 || (*o.stride())[0] != (*o.stride())[1] ||
          (*o.kernel_size())[0] != (*o.kernel_size())[1]) {
        return nullptr;
      }
    } else if (auto* bn = m->as<torch::nn::BatchNorm2d>()) {
      if (!bn->options.affine() || !bn->options.track_running_stats()) return nullptr;
    }
  }
  std::unique_ptr<FoldedResNet> folded(new FoldedResNet(model));
  // oneDNN has a bfloat16 kernel (not its reference one) for the stem on
  // this CPU: then for the rest too.
  if (folded->stem_->ShapeFor(1, 32, 32, false) == nullptr) return nullptr;
  return folded;
#else
  (void)model;
  return nullptr;
#endif
}

torch::Tensor FoldedResNet::Forward(const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  torch::Tensor h = stem_->Run(x, {});
  h = MaxPool3x3Stride2(h);
  for (const Block& b : blocks_) {
    // The block's input (or its downsample's output) is the residual, and
    // the second convolution writes its output over it.
    torch::Tensor residual = b.downsample != nullptr ? b.downsample->Run(h, {}) : h;
    h = b.conv2->Run(b.conv1->Run(h, {}), residual);
  }
  h = torch::adaptive_avg_pool2d(h, {1, 1}).flatten(1);
  ScopedBf16Autocast autocast(true, torch::kCPU);
  return model_.fc()->forward(h);
}

}  // namespace traind::train
