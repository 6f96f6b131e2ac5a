// libFuzzer: image bytes through decoding and resizing, as datasets and
// Classify take them. Bad images must come back as errors.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "server/train/data.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  setenv("OPENCV_IO_MAX_IMAGE_PIXELS", "4000000", 1);  // as traind bounds it
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  auto img = traind::train::DecodeImageBytes(bytes, 32);
  if (img.ok() && (img->rows != 32 || img->cols != 32)) std::abort();
  return 0;
}
