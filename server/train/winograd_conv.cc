#include "server/train/winograd_conv.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <atomic>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "server/train/autocast.h"
#include "server/train/split_backward.h"

#if TRAIND_HAVE_DNNL
#include <dnnl.hpp>

#include "server/train/onednn.h"
#endif

namespace traind::train {
namespace {

std::atomic<WinogradMode> g_winograd_mode{WinogradMode::kOff};
// -1: no ScopedWinogradMode on this thread; else its WinogradMode.
thread_local int t_winograd_mode = -1;

}  // namespace

void SetWinogradMode(WinogradMode mode) { g_winograd_mode.store(mode); }

WinogradMode GetWinogradMode() {
  if (t_winograd_mode >= 0) return static_cast<WinogradMode>(t_winograd_mode);
  return g_winograd_mode.load(std::memory_order_relaxed);
}

ScopedWinogradMode::ScopedWinogradMode(WinogradMode mode) : previous_(t_winograd_mode) {
  t_winograd_mode = static_cast<int>(mode);
}

ScopedWinogradMode::~ScopedWinogradMode() { t_winograd_mode = previous_; }

#if TRAIND_HAVE_DNNL
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;
using Dims = dnnl::memory::dims;
using onednn::Engine;
using onednn::Memory;

Dims DimsOf(const torch::Tensor& t) { return Dims(t.sizes().begin(), t.sizes().end()); }

// A float32 tensor's memory as oneDNN sees it: its sizes and strides.
dnnl::memory::desc DescOf(const torch::Tensor& t) {
  return dnnl::memory::desc(DimsOf(t), dnnl::memory::data_type::f32,
                            Dims(t.strides().begin(), t.strides().end()));
}

// The primitives of one shape at one thread count (oneDNN sizes a
// primitive's work split for the threads there are when it is made).
struct Primitives {
  dnnl::convolution_forward::primitive_desc forward_pd;
  dnnl::convolution_backward_data::primitive_desc data_pd;
  dnnl::convolution_backward_weights::primitive_desc weights_pd;
  dnnl::convolution_forward forward;
  dnnl::convolution_backward_data data;
  dnnl::convolution_backward_weights weights;
};

// (batch, in channels, out channels, height, width, threads)
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int>;

// The primitives of the shapes met most recently. A long-lived daemon meets
// many (each job's batch sizes, image sizes and thread counts), and each
// entry holds JIT-compiled kernels, so the least recently used go beyond
// kWinogradCacheCapacity; a pass that still runs one keeps it alive.
class Cache {
 public:
  // The primitives for the shape at the caller's thread count; null when
  // oneDNN has no Winograd kernel for it.
  std::shared_ptr<const Primitives> Get(int64_t n, int64_t c, int64_t k, int64_t h, int64_t w) {
    const Key key{n, c, k, h, w, at::get_num_threads()};
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(key);
    if (it != entries_.end()) {
      recency_.splice(recency_.begin(), recency_, it->second.recency);
      return it->second.primitives;
    }
    recency_.push_front(key);
    it = entries_.emplace(key, Entry{Make(n, c, k, h, w), recency_.begin()}).first;
    if (entries_.size() > kWinogradCacheCapacity) {
      entries_.erase(recency_.back());
      recency_.pop_back();
    }
    return it->second.primitives;
  }

  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return entries_.size();
  }

 private:
  struct Entry {
    std::shared_ptr<const Primitives> primitives;
    std::list<Key>::iterator recency;
  };

  static std::shared_ptr<const Primitives> Make(int64_t n, int64_t c, int64_t k, int64_t h,
                                                int64_t w) {
    using dnnl::memory;
    const auto any = memory::format_tag::any;
    const auto f32 = memory::data_type::f32;
    const memory::desc src({n, c, h, w}, f32, any);
    const memory::desc weights({k, c, 3, 3}, f32, any);
    const memory::desc dst({n, k, h, w}, f32, any);
    const Dims strides{1, 1}, padding{1, 1};
    const auto winograd = dnnl::algorithm::convolution_winograd;
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    try {
      dnnl::convolution_forward::primitive_desc forward_pd(
          {dnnl::prop_kind::forward_training, winograd, src, weights, dst, strides, padding,
           padding},
          attr, Engine());
      dnnl::convolution_backward_data::primitive_desc data_pd(
          {winograd, src, weights, dst, strides, padding, padding}, attr, Engine(), forward_pd);
      dnnl::convolution_backward_weights::primitive_desc weights_pd(
          {winograd, src, weights, dst, strides, padding, padding}, attr, Engine(), forward_pd);
      return std::make_shared<const Primitives>(
          Primitives{forward_pd, data_pd, weights_pd, dnnl::convolution_forward(forward_pd),
                     dnnl::convolution_backward_data(data_pd),
                     dnnl::convolution_backward_weights(weights_pd)});
    } catch (const dnnl::error&) {
      return nullptr;  // no Winograd kernel here for this shape
    }
  }

  std::mutex mu_;
  std::map<Key, Entry> entries_;
  std::list<Key> recency_;  // most recently used first
};

Cache& TheCache() {
  static Cache* cache = new Cache;
  return *cache;
}

// `t`, or a copy of it, dense in memory (channels-last or contiguous), as
// oneDNN's reorders take it.
torch::Tensor Dense(const torch::Tensor& t) {
  if (t.is_contiguous(torch::MemoryFormat::ChannelsLast) || t.is_contiguous()) return t;
  return t.contiguous(torch::MemoryFormat::ChannelsLast);
}

// Memory of oneDNN's layout `desc`, allocated as a tensor (through traind's
// allocator, freed with the tensor).
torch::Tensor Empty(const dnnl::memory::desc& desc) {
  return torch::empty({static_cast<int64_t>((desc.get_size() + 3) / 4)}, torch::kFloat);
}

// Copies `from` (memory laid out as `from_desc`) into `to`, laid out as
// `to_desc`, on the caller's intra-op threads.
void Reorder(const dnnl::memory::desc& from_desc, const torch::Tensor& from,
             const dnnl::memory::desc& to_desc, const torch::Tensor& to) {
  dnnl::memory src = Memory(from_desc, from), dst = Memory(to_desc, to);
  dnnl::stream stream(Engine());
  dnnl::reorder(src, dst).execute(stream, src, dst);
}

// `t` (a strided float32 tensor) in oneDNN's layout `desc`.
torch::Tensor ToLayout(const torch::Tensor& t, const dnnl::memory::desc& desc) {
  torch::Tensor out = Empty(desc);
  Reorder(DescOf(t), t, desc, out);
  return out;
}

// Blocked memory `t` (laid out as `from`) as laid out as `to`: `t` itself
// when the two layouts are the same, else a reordered copy.
torch::Tensor Relayout(const torch::Tensor& t, const dnnl::memory::desc& from,
                       const dnnl::memory::desc& to) {
  if (from == to) return t;
  torch::Tensor out = Empty(to);
  Reorder(from, t, to, out);
  return out;
}

// Blocked memory `t` (laid out as `desc`) as a channels-last tensor of
// `sizes`.
torch::Tensor ToChannelsLast(const torch::Tensor& t, const dnnl::memory::desc& desc,
                             c10::IntArrayRef sizes) {
  torch::Tensor out =
      torch::empty(sizes, t.options().memory_format(torch::MemoryFormat::ChannelsLast));
  Reorder(desc, t, DescOf(out), out);
  return out;
}

void Execute(const dnnl::primitive& primitive, const dnnl::memory::desc& scratchpad,
             std::unordered_map<int, dnnl::memory> args) {
  torch::Tensor scratch = onednn::Bytes(scratchpad);
  args.emplace(DNNL_ARG_SCRATCHPAD, Memory(scratchpad, scratch));
  dnnl::stream stream(Engine());
  primitive.execute(stream, args);
}

struct WinogradConv : public torch::autograd::Function<WinogradConv> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& w) {
    // Named for the profiler (bench/profile_step.py counts it as convolution
    // time).
    RECORD_FUNCTION("traind::winograd_conv_forward", std::vector<c10::IValue>());
    const int64_t n = x.size(0), h = x.size(2), width = x.size(3), k = w.size(0);
    const torch::Tensor x_dense = Dense(x);
    const auto p = TheCache().Get(n, x.size(1), k, h, width);
    TORCH_CHECK(p != nullptr, "no Winograd convolution for this shape");
    const auto& pd = p->forward_pd;
    torch::Tensor xb = ToLayout(x_dense, pd.src_desc());
    torch::Tensor wb = ToLayout(w, pd.weights_desc());
    torch::Tensor yb = Empty(pd.dst_desc());
    Execute(p->forward, pd.scratchpad_desc(),
            {{DNNL_ARG_SRC, Memory(pd.src_desc(), xb)},
             {DNNL_ARG_WEIGHTS, Memory(pd.weights_desc(), wb)},
             {DNNL_ARG_DST, Memory(pd.dst_desc(), yb)}});
    // The weight gradient needs x in oneDNN's layout: keep that, not x.
    ctx->save_for_backward({xb, w});
    ctx->saved_data["x_sizes"] = x.sizes();
    return ToChannelsLast(yb, pd.dst_desc(), {n, k, h, width});
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    RECORD_FUNCTION("traind::winograd_conv_backward", std::vector<c10::IValue>());
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& xb = saved[0];
    const torch::Tensor& w = saved[1];
    const std::vector<int64_t> x_sizes = ctx->saved_data["x_sizes"].toIntVector();
    // The primitives for the backward pass's own thread count.
    const auto p = TheCache().Get(x_sizes[0], x_sizes[1], w.size(0), x_sizes[2], x_sizes[3]);
    TORCH_CHECK(p != nullptr, "no Winograd convolution for this shape");
    // The output gradient in oneDNN's layout once, for both passes.
    const dnnl::memory::desc gy_desc = p->data_pd.diff_dst_desc();
    const torch::Tensor gyb = ToLayout(Dense(grads[0]), gy_desc);
    torch::Tensor gx, gw;
    // The weight gradient first: where this backward pass is split
    // (split_backward.h) it runs on the second thread while this one goes on.
    if (ctx->needs_input_grad(1)) {
      auto weight_gradient = [xb, x_desc = p->forward_pd.src_desc(), gyb, gy_desc, w, x_sizes] {
        // The primitives for the running thread's count.
        const auto q = TheCache().Get(x_sizes[0], x_sizes[1], w.size(0), x_sizes[2], x_sizes[3]);
        TORCH_CHECK(q != nullptr, "no Winograd convolution for this shape");
        const auto& pd = q->weights_pd;
        const torch::Tensor src = Relayout(xb, x_desc, pd.src_desc());
        const torch::Tensor gy = Relayout(gyb, gy_desc, pd.diff_dst_desc());
        torch::Tensor gwb = Empty(pd.diff_weights_desc());
        Execute(q->weights, pd.scratchpad_desc(),
                {{DNNL_ARG_SRC, Memory(pd.src_desc(), src)},
                 {DNNL_ARG_DIFF_DST, Memory(pd.diff_dst_desc(), gy)},
                 {DNNL_ARG_DIFF_WEIGHTS, Memory(pd.diff_weights_desc(), gwb)}});
        // The gradient in the weight's own layout (channels-last in traind).
        torch::Tensor g = torch::empty_strided(w.sizes(), w.strides(), w.options());
        Reorder(pd.diff_weights_desc(), gwb, DescOf(g), g);
        return g;
      };
      if (!QueueWeightGradient(w, weight_gradient)) gw = weight_gradient();
    }
    if (ctx->needs_input_grad(0)) {
      const auto& pd = p->data_pd;
      torch::Tensor wb = ToLayout(w, pd.weights_desc());
      torch::Tensor gxb = Empty(pd.diff_src_desc());
      Execute(p->data, pd.scratchpad_desc(),
              {{DNNL_ARG_DIFF_DST, Memory(pd.diff_dst_desc(), gyb)},
               {DNNL_ARG_WEIGHTS, Memory(pd.weights_desc(), wb)},
               {DNNL_ARG_DIFF_SRC, Memory(pd.diff_src_desc(), gxb)}});
      gx = ToChannelsLast(gxb, pd.diff_src_desc(), x_sizes);
    }
    return {gx, gw};
  }
};

}  // namespace

bool WinogradAvailable() {
  // ResNet-18's smallest 3x3 shape: a Winograd kernel for it means one for
  // the CPU.
  static const bool available = TheCache().Get(1, 64, 64, 8, 8) != nullptr;
  return available;
}

size_t WinogradCachedShapes() { return TheCache().size(); }

bool UsesWinogradConv(const torch::nn::Conv2dImpl& conv, const torch::Tensor& x) {
  if (GetWinogradMode() == WinogradMode::kOff) return false;
  const auto& o = conv.options;
  const auto& w = conv.weight;
  if (x.dim() != 4 || !x.device().is_cpu() || x.scalar_type() != torch::kFloat ||
      w.scalar_type() != torch::kFloat || conv.bias.defined() || w.dim() != 4 || w.size(2) != 3 ||
      w.size(3) != 3 || w.size(1) != x.size(1) || o.groups() != 1 || (*o.dilation())[0] != 1 ||
      (*o.dilation())[1] != 1 || (*o.stride())[0] != 1 || (*o.stride())[1] != 1 ||
      autocast::Enabled(torch::kCPU)) {
    return false;
  }
  // On maps smaller than Winograd's 4x4 output tile most of each tile is
  // padding: 512 channels at 2x2 took 5.3 ms forward against the direct
  // convolution's 3.5 (at 4x4: 5.4 against 10.9).
  if (x.size(2) < kWinogradMinSide || x.size(3) < kWinogradMinSide) return false;
  if (!WinogradAvailable()) return false;
  return TheCache().Get(x.size(0), x.size(1), w.size(0), x.size(2), x.size(3)) != nullptr;
}

torch::Tensor WinogradConv3x3(const torch::Tensor& x, const torch::Tensor& weight) {
  return WinogradConv::apply(x, weight);
}

#else  // !TRAIND_HAVE_DNNL

bool WinogradAvailable() { return false; }

size_t WinogradCachedShapes() { return 0; }

bool UsesWinogradConv(const torch::nn::Conv2dImpl&, const torch::Tensor&) { return false; }

torch::Tensor WinogradConv3x3(const torch::Tensor&, const torch::Tensor&) {
  TORCH_CHECK(false, "traind was built without oneDNN: no Winograd convolutions");
}

#endif  // TRAIND_HAVE_DNNL

}  // namespace traind::train
