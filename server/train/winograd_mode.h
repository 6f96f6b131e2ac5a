// Whether float32 3x3 convolutions run as oneDNN's Winograd kernels
// (winograd_conv.h), without LibTorch's headers: what the daemon's flags set.
//
// Thread-safety: thread-safe.
#ifndef TRAIND_SERVER_TRAIN_WINOGRAD_MODE_H_
#define TRAIND_SERVER_TRAIN_WINOGRAD_MODE_H_

namespace traind::train {

enum class WinogradMode {
  kOff,   // LibTorch's convolutions, as PyTorch's
  kAuto,  // Winograd where oneDNN has a kernel for this CPU and shape
};

// Process-wide. kOff until set: the daemon sets kAuto (traind --winograd, on
// by default) for the jobs on its workers; a distributed job's ranks
// (`traind worker`) keep kOff.
void SetWinogradMode(WinogradMode mode);
WinogradMode GetWinogradMode();

// Whether Winograd convolutions run here at all (built with oneDNN, and
// oneDNN has a float32 Winograd kernel for this CPU), whatever the mode.
bool WinogradAvailable();

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_WINOGRAD_MODE_H_
