#include "server/train/max_pool.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#if TRAIND_HAVE_DNNL
#include <dnnl.hpp>

#include "server/train/onednn.h"
#endif

namespace traind::train {
namespace {

constexpr int64_t kPoolKernel = 3, kPoolStride = 2, kPoolPadding = 1;

std::atomic<bool> g_pool_enabled{true};

int64_t PooledSize(int64_t in) { return (in + 2 * kPoolPadding - kPoolKernel) / kPoolStride + 1; }

}  // namespace

void SetOneDnnMaxPoolEnabled(bool enabled) { g_pool_enabled.store(enabled); }

#if TRAIND_HAVE_DNNL
namespace {

using onednn::Bytes;
using onednn::Engine;
using onednn::Memory;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// The primitives of one shape, type and thread count.
struct Pooling {
  dnnl::memory::desc src, dst;
  dnnl::pooling_forward::primitive_desc training_pd;
  dnnl::pooling_forward training;  // writes the workspace (where each maximum was)
  dnnl::pooling_forward inference;
  dnnl::pooling_backward backward;
};

// (batch, channels, height, width, bfloat16, threads)
using PoolKey = std::tuple<int64_t, int64_t, int64_t, int64_t, bool, int>;

// Null when oneDNN has only its reference kernel for the shape.
std::shared_ptr<const Pooling> MakePooling(const PoolKey& key) {
  const auto [n, c, h, w, bf16, threads] = key;
  (void)threads;
  using dnnl::memory;
  const auto type = bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  const memory::desc src({n, c, h, w}, type, memory::format_tag::nhwc);
  const memory::desc dst({n, c, PooledSize(h), PooledSize(w)}, type, memory::format_tag::nhwc);
  const dnnl::memory::dims strides{kPoolStride, kPoolStride}, kernel{kPoolKernel, kPoolKernel},
      padding{kPoolPadding, kPoolPadding};
  const auto max = dnnl::algorithm::pooling_max;
  try {
    dnnl::pooling_forward::primitive_desc training_pd(
        {dnnl::prop_kind::forward_training, max, src, dst, strides, kernel, padding, padding},
        Engine());
    dnnl::pooling_forward::primitive_desc inference_pd(
        {dnnl::prop_kind::forward_inference, max, src, dst, strides, kernel, padding, padding},
        Engine());
    dnnl::pooling_backward::primitive_desc backward_pd(
        {max, src, dst, strides, kernel, padding, padding}, Engine(), training_pd);
    for (const char* impl :
         {training_pd.impl_info_str(), inference_pd.impl_info_str(), backward_pd.impl_info_str()}) {
      if (std::string(impl).rfind("ref", 0) == 0) return nullptr;
    }
    return std::make_shared<const Pooling>(
        Pooling{src, dst, training_pd, dnnl::pooling_forward(training_pd),
                dnnl::pooling_forward(inference_pd), dnnl::pooling_backward(backward_pd)});
  } catch (const dnnl::error&) {
    return nullptr;
  }
}

// A handful of shapes per job (training and validation batches); kept for
// the process's life, as LibTorch keeps oneDNN's.
std::shared_ptr<const Pooling> GetPooling(const torch::Tensor& x) {
  static std::mutex mu;
  static auto* cache = new std::map<PoolKey, std::shared_ptr<const Pooling>>;
  const PoolKey key{x.size(0),
                    x.size(1),
                    x.size(2),
                    x.size(3),
                    x.scalar_type() == torch::kBFloat16,
                    at::get_num_threads()};
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(key);
  if (it == cache->end()) it = cache->emplace(key, MakePooling(key)).first;
  return it->second;
}

torch::Tensor EmptyChannelsLast(const torch::Tensor& x, c10::IntArrayRef sizes) {
  return torch::empty(sizes, x.options().memory_format(torch::MemoryFormat::ChannelsLast));
}

// The pooled map; with `workspace`, also where each maximum was, for the
// backward pass.
torch::Tensor PoolForward(const torch::Tensor& x, torch::Tensor* workspace) {
  const auto p = GetPooling(x);
  const torch::Tensor src = x.contiguous(torch::MemoryFormat::ChannelsLast);
  torch::Tensor dst =
      EmptyChannelsLast(x, {x.size(0), x.size(1), PooledSize(x.size(2)), PooledSize(x.size(3))});
  dnnl::stream stream(Engine());
  if (workspace == nullptr) {
    p->inference.execute(
        stream, {{DNNL_ARG_SRC, Memory(p->src, src)}, {DNNL_ARG_DST, Memory(p->dst, dst)}});
    return dst;
  }
  const dnnl::memory::desc ws_desc = p->training_pd.workspace_desc();
  *workspace = Bytes(ws_desc);
  p->training.execute(stream, {{DNNL_ARG_SRC, Memory(p->src, src)},
                               {DNNL_ARG_DST, Memory(p->dst, dst)},
                               {DNNL_ARG_WORKSPACE, Memory(ws_desc, *workspace)}});
  return dst;
}

struct OneDnnMaxPool : public torch::autograd::Function<OneDnnMaxPool> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x) {
    RECORD_FUNCTION("traind::max_pool_forward", std::vector<c10::IValue>());
    torch::Tensor ws;
    torch::Tensor y = PoolForward(x, &ws);
    ctx->save_for_backward({ws});
    ctx->saved_data["x_sizes"] = x.sizes();
    return y;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    RECORD_FUNCTION("traind::max_pool_backward", std::vector<c10::IValue>());
    const torch::Tensor ws = ctx->get_saved_variables()[0];
    const std::vector<int64_t> sizes = ctx->saved_data["x_sizes"].toIntVector();
    const torch::Tensor gy = grads[0].contiguous(torch::MemoryFormat::ChannelsLast);
    torch::Tensor gx = EmptyChannelsLast(gy, sizes);
    // The primitives of the forward pass's shape at the backward pass's
    // thread count; the workspace's layout does not depend on it.
    const auto p = GetPooling(gx);
    dnnl::stream stream(Engine());
    p->backward.execute(stream,
                        {{DNNL_ARG_DIFF_DST, Memory(p->dst, gy)},
                         {DNNL_ARG_DIFF_SRC, Memory(p->src, gx)},
                         {DNNL_ARG_WORKSPACE, Memory(p->training_pd.workspace_desc(), ws)}});
    return {gx};
  }
};

}  // namespace

bool UsesOneDnnMaxPool(const torch::Tensor& x) {
  if (!g_pool_enabled.load(std::memory_order_relaxed) || x.dim() != 4 || !x.device().is_cpu() ||
      (x.scalar_type() != torch::kFloat && x.scalar_type() != torch::kBFloat16) || x.size(2) < 2 ||
      x.size(3) < 2) {
    return false;
  }
  return GetPooling(x) != nullptr;
}

torch::Tensor MaxPool3x3Stride2(const torch::Tensor& x) {
  const bool gradient = torch::GradMode::is_enabled() && x.requires_grad();
  // A float32 gradient stays LibTorch's, bit for bit (max_pool.h).
  if ((gradient && x.scalar_type() == torch::kFloat) || !UsesOneDnnMaxPool(x)) {
    return torch::max_pool2d(x, kPoolKernel, kPoolStride, kPoolPadding);
  }
  if (gradient) return OneDnnMaxPool::apply(x);
  RECORD_FUNCTION("traind::max_pool_forward", std::vector<c10::IValue>());
  return PoolForward(x, nullptr);
}

#else  // !TRAIND_HAVE_DNNL

bool UsesOneDnnMaxPool(const torch::Tensor&) { return false; }

torch::Tensor MaxPool3x3Stride2(const torch::Tensor& x) {
  return torch::max_pool2d(x, kPoolKernel, kPoolStride, kPoolPadding);
}

#endif  // TRAIND_HAVE_DNNL

}  // namespace traind::train
