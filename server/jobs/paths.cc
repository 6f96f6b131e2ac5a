#include "server/jobs/paths.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace traind::jobs {
namespace fs = std::filesystem;

absl::StatusOr<std::string> ResolveBeneath(const std::string& root,
                                           const std::string& root_name,
                                           const std::string& name,
                                           const std::string& field) {
  auto invalid = [&field](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
  };
  if (name.empty()) return invalid("is required");
  if (name.size() > 1024) return invalid("is longer than 1024 characters");
  if (name.find('\0') != std::string::npos) return invalid("contains a NUL byte");
  if (name.front() == '/') {
    return invalid(absl::StrCat("\"", name, "\" is absolute; give a name relative to the root"));
  }
  for (absl::string_view part : absl::StrSplit(name, '/')) {
    if (part == "..") return invalid(absl::StrCat("\"", name, "\" contains \"..\""));
  }
  std::error_code ec;
  const fs::path real_root = fs::canonical(root, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat(field, ": ", root_name, " is missing on the server (an admin must create it)"));
  }
  // The kernel's own check first: openat2 with RESOLVE_BENEATH refuses any
  // step (a "..", an absolute symlink, a symlink leading out) that leaves the
  // root, and RESOLVE_NO_MAGICLINKS refuses /proc-style links.
  const int root_fd = ::open(real_root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root_fd >= 0) {
    struct open_how how;
    std::memset(&how, 0, sizeof(how));
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    const long fd = ::syscall(SYS_openat2, root_fd, name.c_str(), &how, sizeof(how));
    const int err = errno;
    ::close(root_fd);
    if (fd >= 0) {
      ::close(static_cast<int>(fd));
    } else if (err == EXDEV || err == ELOOP) {
      return invalid(absl::StrCat("\"", name, "\" leads outside ", root_name,
                                  " (symlinks must be relative and stay inside it)"));
    } else if (err == ENOENT || err == ENOTDIR) {
      return invalid(absl::StrCat("\"", name, "\" does not exist in ", root_name));
    }
    // ENOSYS/EPERM (an old kernel or a seccomp filter): the checks below.
  }
  const fs::path real = fs::canonical(real_root / name, ec);
  if (ec) return invalid(absl::StrCat("\"", name, "\" does not exist in ", root_name));
  const std::string r = real_root.string(), p = real.string();
  if (p != r && (p.size() <= r.size() || p.compare(0, r.size(), r) != 0 ||
                 (r != "/" && p[r.size()] != '/'))) {
    return invalid(absl::StrCat("\"", name, "\" leads outside ", root_name));
  }
  return p;
}

}  // namespace traind::jobs
