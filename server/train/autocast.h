// LibTorch's autocast state across versions: 2.4 replaced the per-device
// functions with ones taking the device type, and the engine core builds
// against both (bench/gpu_check.sh uses a newer, CUDA LibTorch).
#ifndef TRAIND_SERVER_TRAIN_AUTOCAST_H_
#define TRAIND_SERVER_TRAIN_AUTOCAST_H_

#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <torch/version.h>

namespace traind::train::autocast {

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
inline bool Enabled(c10::DeviceType d) { return at::autocast::is_autocast_enabled(d); }
inline void SetEnabled(c10::DeviceType d, bool on) { at::autocast::set_autocast_enabled(d, on); }
inline c10::ScalarType Dtype(c10::DeviceType d) { return at::autocast::get_autocast_dtype(d); }
inline void SetDtype(c10::DeviceType d, c10::ScalarType t) { at::autocast::set_autocast_dtype(d, t); }
#else
inline bool Enabled(c10::DeviceType d) {
  return d == c10::kCPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled();
}
inline void SetEnabled(c10::DeviceType d, bool on) {
  if (d == c10::kCPU) {
    at::autocast::set_cpu_enabled(on);
  } else {
    at::autocast::set_enabled(on);
  }
}
inline c10::ScalarType Dtype(c10::DeviceType d) {
  return d == c10::kCPU ? at::autocast::get_autocast_cpu_dtype()
                        : at::autocast::get_autocast_gpu_dtype();
}
inline void SetDtype(c10::DeviceType d, c10::ScalarType t) {
  if (d == c10::kCPU) {
    at::autocast::set_autocast_cpu_dtype(t);
  } else {
    at::autocast::set_autocast_gpu_dtype(t);
  }
}
#endif

}  // namespace traind::train::autocast

#endif  // TRAIND_SERVER_TRAIN_AUTOCAST_H_
