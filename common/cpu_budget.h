// How many cores this process may use: the CPUs of its affinity mask,
// capped by its cgroup's CPU quota (cgroup v2 `cpu.max`, or v1
// `cpu.cfs_quota_us` / `cpu.cfs_period_us`, the smallest along the cgroup's
// path up to the root). LibTorch and OpenMP size their pools from the
// machine's core count and ignore quotas, so a pod limited to 4 of 64 cores
// would start 64 threads that the quota then stalls.
#ifndef TRAIND_COMMON_CPU_BUDGET_H_
#define TRAIND_COMMON_CPU_BUDGET_H_

#include <string>

namespace traind {

struct CpuBudget {
  int affinity_cpus = 1;   // CPUs the process may be scheduled on
  double quota_cores = 0;  // the cgroup's quota in cores; 0: none
  // min(affinity_cpus, quota rounded up), at least 1.
  int cores = 1;
};

// The cgroup quota, in cores, of the process whose /proc/<pid>/cgroup
// reads `proc_cgroup`, with the cgroup filesystem mounted at `root`
// (v2: unified; v1: one folder per controller set, e.g. cpu,cpuacct).
// 0 when there is none or it cannot be read.
double CgroupQuotaCores(const std::string& proc_cgroup, const std::string& root);

// This process's budget (/proc/self/cgroup, /sys/fs/cgroup, its affinity).
CpuBudget ReadCpuBudget();

}  // namespace traind

#endif  // TRAIND_COMMON_CPU_BUDGET_H_
