// Resolution of user-supplied names strictly inside a root folder.
#ifndef TRAIND_SERVER_JOBS_PATHS_H_
#define TRAIND_SERVER_JOBS_PATHS_H_

#include <string>

#include "absl/status/statusor.h"

namespace traind::jobs {

// Resolves `name` (relative, no "..", no NUL, at most 1024 bytes) under
// `root`, following symlinks, and checks that the result stays inside the
// root. INVALID_ARGUMENT naming `field` otherwise, or when nothing exists
// there.
absl::StatusOr<std::string> ResolveBeneath(const std::string& root,
                                           const std::string& name,
                                           const std::string& field);

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_PATHS_H_
