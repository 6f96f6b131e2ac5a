// libFuzzer: untrusted weights files. The same bytes go to the safetensors
// reader (checkpoints and imported weights) and to the torch.save archive
// reader with its allow-listed pickle interpreter; both must refuse bad input
// with an error, never crash or read out of bounds.
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/train/weights.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  (void)traind::train::ParseSafetensors(bytes);
  try {
    (void)traind::train::ParseTorchArchive(bytes);
  } catch (const c10::Error&) {
    // LibTorch's zip reader reports damage by throwing; the daemon catches it.
  }
  return 0;
}
