// SHA-256 digests (OpenSSL), as lowercase hex.
//
// Thread-safety: a Sha256 object is used by one thread at a time.
#ifndef TRAIND_COMMON_SHA256_H_
#define TRAIND_COMMON_SHA256_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace traind {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(absl::string_view data);
  // Lowercase hex digest of everything given so far; ends the computation.
  std::string HexDigest();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string Sha256Hex(absl::string_view data);
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace traind

#endif  // TRAIND_COMMON_SHA256_H_
