// Resolution of user-supplied names strictly inside a root folder.
#ifndef TRAIND_SERVER_JOBS_PATHS_H_
#define TRAIND_SERVER_JOBS_PATHS_H_

#include <string>

#include "absl/status/statusor.h"

namespace traind::jobs {

// Resolves `name` (relative, no "..", no NUL, at most 1024 bytes) under
// `root`: the kernel resolves it beneath the root (openat2 RESOLVE_BENEATH,
// so no symlink may lead out), and the canonical path is checked to stay
// inside the root as well (the only check where openat2 is unavailable).
// INVALID_ARGUMENT naming `field` otherwise, or when nothing exists there.
// Errors name the root by `root_name` ("the data root"), never by its path:
// they reach every caller, and the server's folders are none of theirs.
// The files are then opened by path: the data root must not be writable by
// the users whose names are resolved.
absl::StatusOr<std::string> ResolveBeneath(const std::string& root,
                                           const std::string& root_name,
                                           const std::string& name,
                                           const std::string& field);

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_PATHS_H_
