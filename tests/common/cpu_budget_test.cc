// The cgroup CPU quota as the kernel exposes it (v2 and v1 layouts), read
// from a made-up cgroup filesystem in a temporary folder.
#include "common/cpu_budget.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/test_util.h"

namespace traind {
namespace {

namespace fs = std::filesystem;

void Write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

TEST(CpuBudgetTest, CgroupV2QuotaIsTheSmallestAlongThePath) {
  const fs::path root = testing_util::FreshTestDir("cpu_budget_v2");
  Write(root / "cpu.max", "max 100000\n");
  EXPECT_EQ(CgroupQuotaCores("0::/\n", root.string()), 0);  // no quota
  Write(root / "kubepods" / "cpu.max", "400000 100000\n");
  Write(root / "kubepods" / "pod1" / "cpu.max", "150000 100000\n");
  EXPECT_DOUBLE_EQ(CgroupQuotaCores("0::/kubepods/pod1\n", root.string()), 1.5);
  // A parent tighter than the leaf wins.
  Write(root / "kubepods" / "cpu.max", "100000 100000\n");
  EXPECT_DOUBLE_EQ(CgroupQuotaCores("0::/kubepods/pod1\n", root.string()), 1.0);
  // Inside a container's cgroup namespace the path is "/": the root's file.
  Write(root / "cpu.max", "250000 100000\n");
  EXPECT_DOUBLE_EQ(CgroupQuotaCores("0::/\n", root.string()), 2.5);
  // A path that is not there (another namespace's view): the root's.
  EXPECT_DOUBLE_EQ(CgroupQuotaCores("0::/elsewhere/x\n", root.string()), 2.5);
}

TEST(CpuBudgetTest, CgroupV1QuotaUnderTheCpuController) {
  const fs::path root = testing_util::FreshTestDir("cpu_budget_v1");
  const std::string self =
      "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n";
  Write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n");
  Write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(CgroupQuotaCores(self, root.string()), 0);
  Write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "400000\n");
  Write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n");
  EXPECT_DOUBLE_EQ(CgroupQuotaCores(self, root.string()), 4.0);
  EXPECT_EQ(CgroupQuotaCores("garbage\n", root.string()), 0);
}

TEST(CpuBudgetTest, ThisProcessHasAtLeastOneCoreAndNoMoreThanItsCpus) {
  const CpuBudget b = ReadCpuBudget();
  EXPECT_GE(b.cores, 1);
  EXPECT_LE(b.cores, b.affinity_cpus);
}

}  // namespace
}  // namespace traind
