#include "server/train/split_backward.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include <atomic>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "server/train/autocast.h"
#include "server/train/winograd_mode.h"

namespace traind::train {
namespace {

std::atomic<bool> g_split_backward_enabled{true};

// Per-thread intra-op counts need OpenMP's (the engine-only build, which
// compiles without it, does not split).
#if defined(_OPENMP)
constexpr bool kCanSplitBackward = true;
#else
constexpr bool kCanSplitBackward = false;
#endif

// One split backward pass: the weight gradients queued, and what they gave.
class SplitPass {
 public:
  void Queue(const at::Tensor& weight, std::function<at::Tensor()> gradient) {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back({weight, std::move(gradient), at::Tensor()});
  }

  // The second thread: runs the gradients oldest first as they are queued,
  // until `done` is set and none is left.
  void RunOldest(const std::atomic<bool>& done) {
    for (;;) {
      const bool finished = done.load(std::memory_order_acquire);
      if (std::optional<size_t> i = Take(/*oldest=*/true)) {
        Run(*i);
      } else if (finished) {
        return;
      } else {
        CpuRelax();
      }
    }
  }

  // This thread, its own part done (nothing is queued any more): runs the
  // gradients not yet started, newest first (the stem's, in a scratch job,
  // is queued last and is the largest).
  void RunNewest() {
    while (std::optional<size_t> i = Take(/*oldest=*/false)) Run(*i);
  }

  // Once both threads are done: each weight its gradient, in the order
  // queued; or the first error raised.
  void HandOver() {
    if (error_) std::rethrow_exception(error_);
    for (Task& t : tasks_) {
      at::Tensor& grad = t.weight.mutable_grad();
      if (grad.defined()) {
        grad.add_(t.result);
      } else {
        grad = std::move(t.result);
      }
    }
  }

  void Fail(std::exception_ptr error) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_) error_ = std::move(error);
  }

 private:
  struct Task {
    at::Tensor weight;
    std::function<at::Tensor()> gradient;
    at::Tensor result;
  };

  static void CpuRelax() {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }

  std::optional<size_t> Take(bool oldest) {
    std::lock_guard<std::mutex> lock(mu_);
    if (front_ + back_ >= tasks_.size()) return std::nullopt;
    return oldest ? front_++ : tasks_.size() - ++back_;
  }

  void Run(size_t i) {
    std::function<at::Tensor()> gradient;
    {
      std::lock_guard<std::mutex> lock(mu_);
      gradient = std::move(tasks_[i].gradient);
    }
    try {
      at::NoGradGuard no_grad;  // the second thread's mode is its own
      at::Tensor result = gradient();
      std::lock_guard<std::mutex> lock(mu_);
      tasks_[i].result = std::move(result);
    } catch (...) {
      Fail(std::current_exception());
    }
  }

  std::mutex mu_;
  std::deque<Task> tasks_;
  size_t front_ = 0;  // taken from the front (oldest first)
  size_t back_ = 0;   // taken from the back, once nothing more is queued
  std::exception_ptr error_;
};

thread_local SplitPass* t_split_pass = nullptr;

// A LibTorch convolution (no bias, dilation and groups 1) whose weight
// gradient QueueWeightGradient may take.
struct SplittableConv : public torch::autograd::Function<SplittableConv> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& w, std::vector<int64_t> stride,
                            std::vector<int64_t> padding) {
    ctx->save_for_backward({x, w});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    return at::convolution(x, w, {}, stride, padding, /*dilation=*/{1, 1},
                           /*transposed=*/false, /*output_padding=*/{0, 0}, /*groups=*/1);
  }

  // One of the convolution's gradients at (x, gy): the input's, else the
  // weight's.
  static at::Tensor Gradient(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w,
                             at::IntArrayRef stride, at::IntArrayRef padding, bool input) {
    auto grads = at::convolution_backward(gy, x, w, c10::nullopt, stride, padding,
                                          /*dilation=*/{1, 1}, /*transposed=*/false,
                                          /*output_padding=*/{0, 0}, /*groups=*/1,
                                          {input, !input, false});
    return input ? std::get<0>(grads) : std::get<1>(grads);
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor x = saved[0], w = saved[1], gy = grads[0];
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
    const std::vector<int64_t> padding = ctx->saved_data["padding"].toIntVector();
    // The weight gradient over images [begin, begin + size) of the batch.
    auto weight_gradient = [&](int64_t begin, int64_t size) {
      return [x = x.narrow(0, begin, size), w, gy = gy.narrow(0, begin, size), stride,
              padding] { return Gradient(gy, x, w, stride, padding, /*input=*/false); };
    };
    const int64_t n = x.size(0);
    at::Tensor gx, gw;
    if (ctx->needs_input_grad(1)) {
      if (ctx->needs_input_grad(0) || n < 2) {
        if (!QueueWeightGradient(w, weight_gradient(0, n))) gw = weight_gradient(0, n)();
      } else if (!QueueWeightGradient(w, weight_gradient(0, n / 2))) {
        gw = weight_gradient(0, n)();
      } else {
        // The first trainable layer (the stem, in a scratch job): nothing
        // is left for this thread after it, so its gradient goes as two
        // halves of the batch, one for each thread, summed in order.
        QueueWeightGradient(w, weight_gradient(n / 2, n - n / 2));
      }
    }
    if (ctx->needs_input_grad(0)) gx = Gradient(gy, x, w, stride, padding, /*input=*/true);
    return {gx, gw, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

void SetSplitBackwardEnabled(bool enabled) { g_split_backward_enabled.store(enabled); }

bool SplitBackwardEnabled() { return g_split_backward_enabled.load(); }

bool SplitBackwardApplies() {
  return kCanSplitBackward && g_split_backward_enabled.load() &&
         GetWinogradMode() == WinogradMode::kAuto && WinogradAvailable();
}

void Backward(const at::Tensor& loss) { Backward(loss, nullptr); }

void Backward(const at::Tensor& loss, const std::function<void()>& side) {
  if (t_split_pass != nullptr || at::get_num_threads() != 2 || !SplitBackwardApplies()) {
    loss.backward();
    if (side) {
      at::NoGradGuard no_grad;
      side();
    }
    return;
  }
#if defined(_OPENMP)
  SplitPass pass;
  std::atomic<bool> done{false};
  // This thread's team of two: thread 0 is this thread. Inside, LibTorch
  // and oneDNN run each operator on its calling thread (plans included:
  // primitives are made for the count set here).
#pragma omp parallel num_threads(2)
  {
    at::internal::lazy_init_num_threads();  // else it could reset the count later
    omp_set_num_threads(1);
    if (omp_get_thread_num() == 0) {
      t_split_pass = &pass;
      try {
        loss.backward();
      } catch (...) {
        pass.Fail(std::current_exception());
      }
      t_split_pass = nullptr;
      done.store(true, std::memory_order_release);
      pass.RunNewest();
    } else {
      if (side) {
        try {
          at::NoGradGuard no_grad;
          side();
        } catch (...) {
          pass.Fail(std::current_exception());
        }
      }
      pass.RunOldest(done);
    }
  }
  pass.HandOver();
#endif
}

bool QueueWeightGradient(const at::Tensor& weight, std::function<at::Tensor()> gradient) {
  // A weight that is not a leaf (a cast's output) gets its gradient back
  // through autograd, not through .grad.
  if (t_split_pass == nullptr || !weight.is_leaf()) return false;
  t_split_pass->Queue(weight, std::move(gradient));
  return true;
}

at::Tensor ConvForward(torch::nn::Conv2dImpl& conv, const at::Tensor& x) {
  const auto& o = conv.options;
  const bool bf16 = autocast::Enabled(torch::kCPU);
  const auto dtype = bf16 ? at::kBFloat16 : at::kFloat;
  if (!conv.weight.requires_grad() || conv.bias.defined() || !x.device().is_cpu() ||
      (bf16 && autocast::Dtype(torch::kCPU) != at::kBFloat16) ||
      (x.scalar_type() != at::kFloat && x.scalar_type() != dtype) ||
      (conv.weight.scalar_type() != at::kFloat && conv.weight.scalar_type() != dtype) ||
      o.groups() != 1 || (*o.dilation())[0] != 1 || (*o.dilation())[1] != 1 ||
      c10::get_if<torch::ExpandingArray<2>>(&o.padding()) == nullptr ||
      c10::get_if<torch::enumtype::kZeros>(&o.padding_mode()) == nullptr ||
      !SplitBackwardApplies()) {
    return conv.forward(x);
  }
  const auto& padding = *c10::get_if<torch::ExpandingArray<2>>(&o.padding());
  // Under autocast, both operands in bfloat16 as autocast would cast them
  // (differentiable casts; a bf16 step's trainable weights are already its
  // optimizer's bfloat16 copies, step.h).
  return SplittableConv::apply(x.to(dtype), conv.weight.to(dtype),
                               std::vector<int64_t>(o.stride()->begin(), o.stride()->end()),
                               std::vector<int64_t>(padding->begin(), padding->end()));
}

}  // namespace traind::train
