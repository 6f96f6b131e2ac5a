// bfloat16 as raw bits, and the function attribute that vectorizes traind's
// own per-element kernels for the CPU they run on (fused_adam.cc,
// fused_batch_norm.cc).
#ifndef TRAIND_SERVER_TRAIN_BF16_H_
#define TRAIND_SERVER_TRAIN_BF16_H_

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
// One clone per x86-64 level, chosen at load time; the default clone computes
// the same.
#define TRAIND_VECTOR_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TRAIND_VECTOR_CLONES
#endif

namespace traind::train {

// Rounds to the nearest bfloat16, ties to even, as ATen's casts do for
// finite values.
inline uint16_t ToBf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// ToBf16, and a NaN stays a NaN (ToBf16 may round one with only low
// mantissa bits to infinity).
inline uint16_t ToBf16KeepNan(float x) {
  return x != x ? static_cast<uint16_t>(0x7fc0) : ToBf16(x);  // NOLINT: NaN test
}

inline float FromBf16(uint16_t x) {
  const uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_BF16_H_
