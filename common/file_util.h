// Small file helpers shared by the daemon and the CLI.
#ifndef TRAIND_COMMON_FILE_UTIL_H_
#define TRAIND_COMMON_FILE_UTIL_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace traind {

// Reads a whole file; NOT_FOUND if it does not exist.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Replaces `path` with `data` atomically: a temporary file in the same
// folder, fsync, rename, fsync of the folder. A crash leaves either the old
// or the new content, never a mix.
absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& data);

}  // namespace traind

#endif  // TRAIND_COMMON_FILE_UTIL_H_
