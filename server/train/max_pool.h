// ResNet's stem max pooling (3x3, stride 2, padding 1) on the CPU as oneDNN's
// pooling: forward, and in bfloat16 backward too.
//
// LibTorch 1.13's max pooling of channels-last maps is slow: on the stem's
// 32x64x64x64 map (2 threads, AVX-512 EPYC, Zen 5) 2.2 ms forward and 7.0
// ms backward in float32, 5.4 and 3.0 ms in bfloat16; oneDNN's jit kernels
// take a fraction of that (0.55 ms forward in bfloat16).
//
// The pooled map is LibTorch's bit for bit (a maximum is exact). The
// gradient goes to the same element of each window (both take the first
// maximum in the same scan order, rows then columns), but where a pixel is
// the maximum of three or four overlapping windows oneDNN adds their
// gradients in another order: in float32 the last bit may differ, so a
// float32 gradient stays LibTorch's, whose sums are part of traind's exact
// agreement with PyTorch. In bfloat16 both round each partial sum, so the
// gradients agree with float32's within those roundings
// (tests/train/max_pool_test.cc checks both, on maps full of ties, as ReLU's
// zeros make them).
//
// Where oneDNN has only its reference kernels, the input is not a 4-d
// float32 or bfloat16 CPU tensor, or traind was built without oneDNN's
// headers, it is LibTorch's max_pool2d.
//
// Thread-safety: thread-safe; runs on the caller's intra-op threads.
#ifndef TRAIND_SERVER_TRAIN_MAX_POOL_H_
#define TRAIND_SERVER_TRAIN_MAX_POOL_H_

#include <torch/torch.h>

namespace traind::train {

// torch::max_pool2d(x, 3, 2, 1), differentiable in x. Through oneDNN where
// UsesOneDnnMaxPool(x), except a float32 `x` that wants a gradient; the
// result is then channels-last.
torch::Tensor MaxPool3x3Stride2(const torch::Tensor& x);

// Whether oneDNN's pooling takes `x` (enabled, and oneDNN has a kernel for
// it); MaxPool3x3Stride2 runs it then, except for a float32 gradient.
bool UsesOneDnnMaxPool(const torch::Tensor& x);

// Process-wide; on by default. Off, MaxPool3x3Stride2 is LibTorch's
// (engine_bench --onednn_pool 0, for side-by-side figures).
void SetOneDnnMaxPoolEnabled(bool enabled);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_MAX_POOL_H_
