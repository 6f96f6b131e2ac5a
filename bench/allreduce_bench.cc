// allreduce_bench: one rank of a c10d Gloo allreduce of ResNet-18's gradient
// (11,689,512 floats, 46.8 MB) between processes, as traind's ranks do it:
// rendezvous through a TCPStore hosted by rank 0, one preallocated flat
// buffer reused every step. Prints min / median / max milliseconds (rank 0),
// and the same for a freshly allocated buffer per call (what not to do).
//
// Usage (torchrun's variables, like `traind worker`):
//   RANK=r WORLD_SIZE=n MASTER_ADDR=a MASTER_PORT=p [TRAIND_RANK_ADDR=own]
//   allreduce_bench [ITERATIONS]
// bench/allreduce.sh runs two local processes, or one per network namespace.
#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "server/train/collective.h"

namespace {

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

std::string EnvStr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

void Print(const char* what, std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  std::printf("%-34s min %7.1f  median %7.1f  max %7.1f ms  (%zu calls)\n", what, ms.front(),
              ms[ms.size() / 2], ms.back(), ms.size());
}

}  // namespace

int main(int argc, char** argv) {
  using Clock = std::chrono::steady_clock;
  const int iterations = argc > 1 ? std::atoi(argv[1]) : 20;
  traind::train::RankInfo info;
  info.rank = EnvInt("RANK", 0);
  info.world_size = EnvInt("WORLD_SIZE", 1);
  info.master_addr = EnvStr("MASTER_ADDR", "127.0.0.1");
  info.master_port = EnvInt("MASTER_PORT", 29500);
  info.own_addr = EnvStr("TRAIND_RANK_ADDR", info.master_addr);
  info.timeout_seconds = 120;
  torch::set_num_threads(1);
  auto collective = traind::train::ConnectGloo(info);
  if (!collective.ok()) {
    std::fprintf(stderr, "allreduce_bench: %s\n", collective.status().ToString().c_str());
    return 1;
  }
  constexpr int64_t kFloats = 11'689'512 + 5;  // ResNet-18's gradient and traind's 5 figures
  torch::Tensor flat = torch::ones({kFloats}, torch::kFloat);
  std::vector<double> reused, fresh;
  for (int i = 0; i < iterations + 2; ++i) {
    const auto t0 = Clock::now();
    if (auto st = (*collective)->AllreduceSum(flat); !st.ok()) {
      std::fprintf(stderr, "allreduce_bench: %s\n", st.ToString().c_str());
      return 1;
    }
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    if (i >= 2) reused.push_back(ms);  // the first calls connect pairs
    flat.fill_(1.f);
  }
  for (int i = 0; i < std::max(3, iterations / 4); ++i) {
    const auto t0 = Clock::now();
    torch::Tensor t = torch::ones({kFloats}, torch::kFloat);
    if (auto st = (*collective)->AllreduceSum(t); !st.ok()) return 1;
    fresh.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  const float expect = static_cast<float>(info.world_size);
  torch::Tensor check = torch::ones({4}, torch::kFloat);
  if (auto st = (*collective)->AllreduceSum(check); !st.ok() || check[3].item<float>() != expect) {
    std::fprintf(stderr, "allreduce_bench: wrong sum %f, want %f\n", check[3].item<float>(),
                 expect);
    return 1;
  }
  if (info.rank == 0) {
    std::printf("allreduce of %lld floats (%.1f MB) over %d ranks:\n",
                static_cast<long long>(kFloats), kFloats * 4 / 1e6, info.world_size);
    Print("  preallocated buffer, reused", reused);
    Print("  fresh buffer per call", fresh);
  }
  return 0;
}
