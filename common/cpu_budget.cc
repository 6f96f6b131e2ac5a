#include "common/cpu_budget.h"

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace traind {
namespace {

namespace fs = std::filesystem;

std::string Slurp(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// `dir` and its parents up to `top`, leaf first; `top` itself when `dir`
// is not beneath it (a cgroup path from outside a container's namespace).
std::vector<fs::path> UpTo(const fs::path& top, const std::string& cgroup_path) {
  std::vector<fs::path> dirs;
  fs::path dir = top / fs::path(cgroup_path).relative_path();
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {top};
  while (true) {
    dirs.push_back(dir);
    if (dir == top || !dir.has_parent_path() || dir.parent_path() == dir) break;
    dir = dir.parent_path();
  }
  return dirs;
}

// cpu.max: "max 100000" or "150000 100000".
double V2Quota(const fs::path& dir) {
  std::vector<std::string> words =
      absl::StrSplit(absl::StripAsciiWhitespace(Slurp(dir / "cpu.max")), ' ', absl::SkipEmpty());
  double quota, period;
  if (words.size() != 2 || !absl::SimpleAtod(words[0], &quota) ||
      !absl::SimpleAtod(words[1], &period) || quota <= 0 || period <= 0) {
    return 0;
  }
  return quota / period;
}

double V1Quota(const fs::path& dir) {
  double quota, period;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(Slurp(dir / "cpu.cfs_quota_us")), &quota) ||
      !absl::SimpleAtod(absl::StripAsciiWhitespace(Slurp(dir / "cpu.cfs_period_us")), &period) ||
      quota <= 0 || period <= 0) {
    return 0;  // -1: no quota
  }
  return quota / period;
}

}  // namespace

double CgroupQuotaCores(const std::string& proc_cgroup, const std::string& root) {
  double best = 0;
  auto take = [&best](double q) {
    if (q > 0 && (best == 0 || q < best)) best = q;
  };
  for (absl::string_view line : absl::StrSplit(proc_cgroup, '\n', absl::SkipEmpty())) {
    // "hierarchy-id:controllers:path"; v2's is "0::path".
    std::vector<std::string> parts = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (parts.size() != 3) continue;
    if (parts[0] == "0" && parts[1].empty()) {
      for (const fs::path& dir : UpTo(root, parts[2])) take(V2Quota(dir));
      continue;
    }
    std::vector<std::string> controllers = absl::StrSplit(parts[1], ',');
    if (std::find(controllers.begin(), controllers.end(), "cpu") == controllers.end()) continue;
    for (const std::string& mount : {parts[1], std::string("cpu")}) {
      const fs::path top = fs::path(root) / mount;
      std::error_code ec;
      if (!fs::is_directory(top, ec)) continue;
      for (const fs::path& dir : UpTo(top, parts[2])) take(V1Quota(dir));
      break;
    }
  }
  return best;
}

CpuBudget ReadCpuBudget() {
  CpuBudget budget;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    budget.affinity_cpus = std::max(1, CPU_COUNT(&set));
  } else {
    budget.affinity_cpus = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }
  budget.quota_cores = CgroupQuotaCores(Slurp("/proc/self/cgroup"), "/sys/fs/cgroup");
  budget.cores = budget.affinity_cpus;
  if (budget.quota_cores > 0) {
    budget.cores = std::min(budget.cores, static_cast<int>(std::ceil(budget.quota_cores - 1e-9)));
  }
  budget.cores = std::max(1, budget.cores);
  return budget;
}

}  // namespace traind
