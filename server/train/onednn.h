// What traind's oneDNN kernels (winograd_conv.cc, folded_eval.cc) share of
// oneDNN's C++ API: the CPU engine, and tensors' memory as oneDNN memory.
// Included only where traind builds with oneDNN's headers (TRAIND_HAVE_DNNL).
//
// Thread-safety: thread-safe.
#ifndef TRAIND_SERVER_TRAIN_ONEDNN_H_
#define TRAIND_SERVER_TRAIN_ONEDNN_H_

#include <cstdint>

#include <dnnl.hpp>
#include <torch/torch.h>

namespace traind::train::onednn {

// The one CPU engine every primitive runs on.
inline const dnnl::engine& Engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// `t`'s memory, laid out as `desc` says.
inline dnnl::memory Memory(const dnnl::memory::desc& desc, const torch::Tensor& t) {
  return dnnl::memory(desc, Engine(), t.data_ptr());
}

// Memory for oneDNN's layout `desc`, allocated as a tensor of bytes (through
// traind's allocator, freed with the tensor).
inline torch::Tensor Bytes(const dnnl::memory::desc& desc) {
  return torch::empty({static_cast<int64_t>(desc.get_size())}, torch::kByte);
}

}  // namespace traind::train::onednn

#endif  // TRAIND_SERVER_TRAIN_ONEDNN_H_
