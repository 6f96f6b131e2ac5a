#include "server/jobs/paths.h"

#include <filesystem>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace traind::jobs {
namespace fs = std::filesystem;

absl::StatusOr<std::string> ResolveBeneath(const std::string& root,
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
        absl::StrCat(field, ": the root folder ", root, " does not exist"));
  }
  const fs::path real = fs::canonical(real_root / name, ec);
  if (ec) return invalid(absl::StrCat("\"", name, "\" does not exist under ", root));
  const std::string r = real_root.string(), p = real.string();
  if (p != r && (p.size() <= r.size() || p.compare(0, r.size(), r) != 0 ||
                 (r != "/" && p[r.size()] != '/'))) {
    return invalid(absl::StrCat("\"", name, "\" leads outside ", root));
  }
  return p;
}

}  // namespace traind::jobs
