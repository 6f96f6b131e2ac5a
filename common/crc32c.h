// CRC-32C (Castagnoli), as TFRecord framing uses it. Debian 12 packages no C
// or C++ CRC-32C library (Abseil's arrived after 20220623), so this is the
// small table-driven form.
#ifndef TRAIND_COMMON_CRC32C_H_
#define TRAIND_COMMON_CRC32C_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace traind {

uint32_t Crc32c(absl::string_view data);

// TFRecord's masked CRC: rotate right by 15 bits, add 0xa282ead8.
uint32_t MaskedCrc32c(absl::string_view data);

}  // namespace traind

#endif  // TRAIND_COMMON_CRC32C_H_
