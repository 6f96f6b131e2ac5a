// Whether float32 3x3 convolutions run as oneDNN's Winograd kernels
// (winograd_conv.h), without LibTorch's headers.
//
// A job says it in its TrainConfig (the spec's `winograd`, whose default is
// the daemon's --winograd): Run::Execute holds a ScopedWinogradMode on its
// thread for the run, so jobs side by side on one daemon, and a distributed
// job's ranks, each follow their own setting. Code outside a run (tests,
// benchmarks) sets the process-wide mode.
//
// Thread-safety: thread-safe.
#ifndef TRAIND_SERVER_TRAIN_WINOGRAD_MODE_H_
#define TRAIND_SERVER_TRAIN_WINOGRAD_MODE_H_

namespace traind::train {

enum class WinogradMode {
  kOff,   // LibTorch's convolutions, as PyTorch's
  kAuto,  // Winograd where oneDNN has a kernel for this CPU and shape
};

// Process-wide, for threads with no ScopedWinogradMode; kOff until set.
void SetWinogradMode(WinogradMode mode);

// The calling thread's mode: its innermost ScopedWinogradMode's, else the
// process-wide one.
WinogradMode GetWinogradMode();

// Sets the calling thread's mode for its lifetime (nests).
class ScopedWinogradMode {
 public:
  explicit ScopedWinogradMode(WinogradMode mode);
  ~ScopedWinogradMode();
  ScopedWinogradMode(const ScopedWinogradMode&) = delete;
  ScopedWinogradMode& operator=(const ScopedWinogradMode&) = delete;

 private:
  int previous_;  // the thread's setting before: -1 none, else a WinogradMode
};

// Whether Winograd convolutions run here at all (built with oneDNN, and
// oneDNN has a float32 Winograd kernel for this CPU), whatever the mode.
bool WinogradAvailable();

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_WINOGRAD_MODE_H_
