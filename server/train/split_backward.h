// Weight gradients off the backward pass's critical path.
//
// A backward pass carries the input gradient down the network, layer by
// layer; a convolution's weight gradient is needed by nobody until the
// optimizer's step. With both intra-op threads on each operator, every
// operator waits at its end for the slower thread, so a thread that another
// process displaces for a millisecond or two stalls the other too (README,
// "Beside other work"). Split, one thread carries the input gradients down
// the network while the other computes the weight gradients, queued as they
// become computable, each operator on one thread: the two streams wait for
// each other only at the end of the pass, so a displaced thread delays its
// own stream and not the other's. ResNet-18's step at 128 px, fp32, batch
// 32, on a 2-core Zen 5 (engine_bench --split_backward 1 against 0,
// alternating): alone the same (fine-tune 191 against 178 img/s, scratch
// 115 against 114, medians of 3 and 5), beside bench/neighbour.py 15 % and
// 13 % faster (fine-tune 121 against 105, scratch 78 against 69). In whole
// jobs it gains less: a one-epoch Caltech-101 fine-tune beside the
// neighbour spent 57.8 s in its steps against 59.9 unsplit (medians of 4;
// traind --split_backward=false), alone 38.5 against 37.4 (medians of 3,
// within the noise); README, "Where the rest goes".
//
// A fine-tune step gives the second thread another stream first: the next
// batch's frozen trunk (step.h, TrainStepWithTrunk).
//
// What moves are the convolutions' weight gradients: the Winograd ones'
// (winograd_conv.h) and, through ConvForward, LibTorch's (the stem, the
// strided 3x3s, the 1x1 downsamples, and in a bfloat16 step every one) and
// the GEMM convolutions' (gemm_conv.h); everything else in the pass runs on
// this thread. A gradient computed on one thread instead of two sums in
// another order, so the split applies only where the job already accepts
// last-bit differences from PyTorch: Winograd convolutions on, and a kernel
// for them on this CPU (winograd_mode.h).
//
// Thread-safety: Backward and QueueWeightGradient act on the calling
// thread's pass.
#ifndef TRAIND_SERVER_TRAIN_SPLIT_BACKWARD_H_
#define TRAIND_SERVER_TRAIN_SPLIT_BACKWARD_H_

#include <ATen/core/Tensor.h>

#include <functional>

namespace torch::nn {
class Conv2dImpl;
}  // namespace torch::nn

namespace traind::train {

// Whether ForwardBackward splits its backward passes (process-wide; on by
// default). engine_bench's --split_backward 0 turns it off for side-by-side
// runs.
void SetSplitBackwardEnabled(bool enabled);
bool SplitBackwardEnabled();

// Whether backward passes on this thread would be split now: enabled, and
// the thread's Winograd mode on with a Winograd kernel for this CPU.
bool SplitBackwardApplies();

// loss.backward(), split where it applies (SplitBackwardApplies) and this
// thread runs its operators on 2 intra-op threads: this thread carries the
// input gradients with one, and the other thread of its OpenMP team (the
// one its parallel regions already run on) computes the weight gradients
// queued with QueueWeightGradient as they come, each operator on one
// thread. When its own part is done this thread takes the gradients not
// yet started. Then each weight gets its gradient (its .grad, added to one
// already there), in the order queued. Other thread counts run
// loss.backward() as it is: with more threads the second stream would need
// an OpenMP pool of its own, and once the process holds more pool threads
// than cores libgomp stops spinning between parallel regions (intra_op.h).
void Backward(const at::Tensor& loss);

// Backward(loss), and `side` (grad mode off): where the pass is split, the
// second thread runs `side` first, then takes weight gradients as they come
// (this thread takes those it has not started once its own part is done);
// otherwise `side` runs after the pass, on this thread. An exception from
// either is rethrown here, after both.
void Backward(const at::Tensor& loss, const std::function<void()>& side);

// Inside a split Backward on this thread, queues `gradient` (run on either
// thread, with grad mode off) as `weight`'s gradient and returns true;
// otherwise returns false and the caller computes it. Only a leaf's
// gradient is queued: it is handed over through the weight's .grad.
bool QueueWeightGradient(const at::Tensor& weight, std::function<at::Tensor()> gradient);

// conv(x) for a LibTorch convolution, whose weight gradient is queued where
// the backward pass is split and the weight is a leaf (under bfloat16
// autocast, a bf16 step's optimizer copy). The same operators as
// conv.forward(x) (with autocast's casts; one at::convolution_backward for
// each gradient instead of one for both), so the same results where it is
// not split. conv.forward(x) itself where the split does not apply, for
// frozen weights, and for anything but a float32 (or, under bfloat16
// autocast, bfloat16) CPU convolution without bias.
at::Tensor ConvForward(torch::nn::Conv2dImpl& conv, const at::Tensor& x);

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_SPLIT_BACKWARD_H_
