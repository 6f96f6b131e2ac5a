// engine_bench [--threads N] [--steps N] [--image_size S] [--batch B]
//              [--bf16 0|1] [--device cpu|cuda] [--on main|worker]
//              [--profile DIR] [--optimizer fused|torch] [--weights FILE]
//              [--gemm_conv 0|1] [--fused_bn 0|1] [--modes finetune,scratch,eval]
//              [--adaptive 0|1] [--winograd 0|1] [--folded_eval 0|1]
//              [--onednn_pool 0|1] [--fp32 0|1] [--split_backward 0|1]
// Times the engine's training and evaluation steps on synthetic batches and
// prints images/s per mode (and, for training, the step's forward, backward and
// update times). The steps are the daemon's: the recipe's network,
// frozen blocks and FusedAdam groups (recipe.h), starting weights read by the
// daemon's loader (--weights, e.g. a trained job's; default: a random
// initialisation), on a worker thread as traind's jobs run (glibc gives such
// a thread its own arena, whose memory behaves differently from the main
// thread's; `--on main` runs them on the main thread). `--profile DIR` also
// records the timed steps of each mode with LibTorch's autograd profiler into
// DIR/<mode>.json (Chrome trace; bench/profile_step.py tabulates it).
// `--gemm_conv 0` runs layer4's bf16 convolutions as LibTorch's, `1` as
// GEMMs on any CPU (default: GEMMs where the CPU has AVX-512 BF16, as the
// daemon does; gemm_conv.h), `--fused_bn 0` their BatchNorms, adds and ReLUs as
// LibTorch's separate operators (fused_batch_norm.h), for side-by-side
// figures. `--adaptive 1` lets the training steps' thread count follow
// contention as a job with adaptive threads does (thread_governor.h), after
// a warm-up long enough for the governor's first try, and prints the count
// it ended with. `--winograd 0` runs the float32 3x3 stride-1 convolutions as
// LibTorch's instead of oneDNN's Winograd kernels (default: Winograd where
// oneDNN has it for this CPU, as the daemon's jobs do; winograd_conv.h).
// `--folded_eval 0` runs the bf16 evaluation as the module's forward under
// autocast instead of folded (default: folded where oneDNN has bf16
// kernels, as the daemon's validation passes are; folded_eval.h).
// `--onednn_pool 0` runs the stem's max pooling as LibTorch's (default:
// oneDNN's where it has kernels, except float32 gradients; max_pool.h).
// `--split_backward 0` runs backward passes with both threads on each
// operator instead of split into two streams (split_backward.h).
// With -DTRAIND_ENGINE_ONLY=ON it needs LibTorch alone and builds the same
// network and groups itself, so it also builds against a CUDA LibTorch
// (bench/gpu_check.sh). Pair with reference_bench.py (run.sh does both and
// prints the ratios); compare figures from one run, the machine is shared.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <thread>

#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include "bench/flags.h"
#include "server/train/allocator.h"
#include "server/train/folded_eval.h"
#include "server/train/fused_adam.h"
#include "server/train/fused_batch_norm.h"
#include "server/train/gemm_conv.h"
#include "server/train/max_pool.h"
#include "server/train/model.h"
#include "server/train/split_backward.h"
#include "server/train/winograd_conv.h"
#ifndef TRAIND_ENGINE_ONLY
#include "server/train/recipe.h"
#endif
#include "server/train/step.h"
#include "server/train/thread_governor.h"

namespace {

using traind::bench::Arg;
using traind::bench::StrArg;

using traind::train::ResNet;
using traind::train::ResNet18;

// Where --profile writes traces; empty: no profiling.
std::string g_profile_dir;
// --optimizer torch: LibTorch's own Adam instead of the daemon's FusedAdam.
bool g_torch_adam = false;
// --weights FILE: fine-tuning and evaluation start from FILE (a state_dict,
// .pth or .safetensors, e.g. a trained job's weights); otherwise from the
// network's random initialisation.
std::string g_weights;
// --adaptive 1: training steps under a ThreadGovernor.
bool g_adaptive = false;

#ifndef TRAIND_ENGINE_ONLY
// What a job builds (server/train/recipe.h): the recipe's initialisation,
// frozen blocks and Adam groups, the starting weights read by the daemon's
// own loader.
traind::train::TrainConfig Recipe(const char* mode) {
  traind::train::TrainConfig config;
  config.kind = std::strcmp(mode, "scratch") == 0 ? traind::train::Kind::kScratch
                                                  : traind::train::Kind::kFinetune;
  config.initial_weights = g_weights;
  return config;
}

ResNet BuildNetwork(const char* mode) {
  const auto config = Recipe(mode);
  if (config.kind == traind::train::Kind::kFinetune && g_weights.empty()) {
    torch::manual_seed(0);
    return ResNet18(101);
  }
  auto model = traind::train::BuildModel(config, 101);
  if (!model.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", model.status().ToString().c_str());
    std::exit(1);
  }
  return *model;
}

std::unique_ptr<torch::optim::Adam> BuildAdam(ResNet& model, const char* mode) {
  auto fused = traind::train::BuildOptimizer(model, Recipe(mode));
  if (!g_torch_adam) return fused;
  return std::make_unique<torch::optim::Adam>(
      fused->param_groups(), static_cast<const torch::optim::AdamOptions&>(fused->defaults()));
}
#else
// The engine core alone (bench/gpu_check.sh): the same network and groups,
// built here; --weights is not read.
ResNet BuildNetwork(const char* mode) {
  torch::manual_seed(0);
  ResNet model = ResNet18(101);
  if (std::strcmp(mode, "scratch") == 0) traind::train::XavierInit(*model);
  return model;
}

std::unique_ptr<torch::optim::Adam> BuildAdam(ResNet& model, const char* mode) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  std::vector<torch::Tensor> head, backbone;
  const bool finetune = std::strcmp(mode, "finetune") == 0;
  for (auto& p : model->named_parameters()) {
    const std::string& name = p.key();
    if (!finetune || name.rfind("fc", 0) == 0) {
      head.push_back(p.value());
    } else if (name.rfind("layer3", 0) == 0 || name.rfind("layer4", 0) == 0) {
      backbone.push_back(p.value());
    } else {
      p.value().set_requires_grad(false);
    }
  }
  groups.emplace_back(head, std::make_unique<torch::optim::AdamOptions>(1e-3));
  if (!backbone.empty()) {
    groups.emplace_back(backbone, std::make_unique<torch::optim::AdamOptions>(1e-4));
  }
  const torch::optim::AdamOptions defaults(1e-3);
  if (g_torch_adam) return std::make_unique<torch::optim::Adam>(groups, defaults);
  return std::make_unique<traind::train::FusedAdam>(groups, defaults);
}
#endif

double MeasureOn(const char* mode, int steps, int batch, int size, bool bf16,
                 const torch::Device& device);

// Runs Measure on a fresh thread unless `on_main`.
double Measure(const char* mode, int steps, int batch, int size, bool bf16,
               const torch::Device& device, bool on_main) {
  if (on_main) return MeasureOn(mode, steps, batch, size, bf16, device);
  double result = 0;
  const int threads = torch::get_num_threads();  // OpenMP's count is per thread
  std::thread worker([&] {
    torch::set_num_threads(threads);
    result = MeasureOn(mode, steps, batch, size, bf16, device);
  });
  worker.join();
  return result;
}

double MeasureOn(const char* mode, int steps, int batch, int size, bool bf16,
               const torch::Device& device) {
  ResNet model = BuildNetwork(mode);
  model->to(device);
  for (auto& p : model->parameters()) {
    if (p.dim() == 4) p.set_data(p.data().contiguous(torch::MemoryFormat::ChannelsLast));
  }
  const bool train = std::strcmp(mode, "eval") != 0;
  std::unique_ptr<torch::optim::Adam> opt = train ? BuildAdam(model, mode) : nullptr;
  torch::Tensor x = torch::randn({batch, 3, size, size}, device)
                      .contiguous(torch::MemoryFormat::ChannelsLast);
  torch::Tensor y = torch::randint(0, 101, {batch}, torch::TensorOptions(device).dtype(torch::kLong));
  std::unique_ptr<traind::train::ThreadGovernor> governor;
  if (g_adaptive && train) {
    traind::train::ThreadGovernor::Options options;
    options.max_threads = torch::get_num_threads();
    governor = std::make_unique<traind::train::ThreadGovernor>(options);
  }
  std::unique_ptr<traind::train::FoldedResNet> folded;
  double phases[3] = {0, 0, 0};  // forward, backward, update: seconds
  auto step = [&] {
    if (train) {
      const auto start = std::chrono::steady_clock::now();
      const auto r = traind::train::TrainStep(model, *opt, x, y, bf16);
      (void)r.loss.item<float>();
      phases[0] += r.phases.forward_seconds;
      phases[1] += r.phases.backward_seconds;
      phases[2] += r.phases.update_seconds;
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (governor && governor->Record(s, batch)) torch::set_num_threads(governor->threads());
    } else {
      torch::NoGradGuard ng;
      model->eval();
      // As Run::Evaluate does: in bf16, the network folded once per pass.
      if (bf16 && !folded) folded = traind::train::FoldedResNet::Make(*model);
      if (folded) {
        (void)folded->Forward(x).sum().item<float>();
      } else {
        traind::train::ScopedBf16Autocast autocast(bf16, device.type());
        (void)model->forward(x).sum().item<float>();
      }
    }
  };
  // Warm-up; with --adaptive also the governor's first window and try,
  // which a job pays once (the timed steps measure the steady state).
  for (int i = 0, n = governor ? 20 : 3; i < n; ++i) step();
  if (!train && bf16) {
    std::printf("engine: bf16 evaluation %s\n",
                folded ? "folded (BatchNorm in the convolutions, oneDNN epilogues)"
                       : "under autocast (--folded_eval 0, or no oneDNN bf16 kernels here)");
  }
  folded.reset();  // the timed steps are one evaluation pass, folding included
  std::fill(std::begin(phases), std::end(phases), 0.0);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (train) {
    std::printf("engine: %s%s per step: forward %.1f ms, backward %.1f ms, update %.1f ms\n", mode,
                bf16 ? " bf16" : "", 1e3 * phases[0] / steps, 1e3 * phases[1] / steps,
                1e3 * phases[2] / steps);
  }
  if (governor) {
    std::printf("engine: %s adaptive threads: %d at the end, %d tries, %d kept\n", mode,
                governor->threads(), governor->tries(), governor->switches());
  }
  if (!g_profile_dir.empty()) {  // after the timing, which it would distort
    torch::autograd::profiler::RecordProfile profile(
        g_profile_dir + "/" + mode + (bf16 ? "-bf16" : "") + ".json");
    for (int i = 0; i < steps; ++i) step();
  }
  return steps * batch / s;
}

}  // namespace

int main(int argc, char** argv) {
  traind::train::TuneAllocator();
  const int threads = Arg(argc, argv, "--threads", 2);
  const int steps = Arg(argc, argv, "--steps", 10);
  const int size = Arg(argc, argv, "--image_size", 128);
  const int batch = Arg(argc, argv, "--batch", 32);
  const std::string device_name = StrArg(argc, argv, "--device", "cpu");
  if (device_name == "cuda" && !torch::cuda::is_available()) {
    std::fprintf(stderr, "engine_bench: --device cuda but this LibTorch sees no CUDA device\n");
    return 1;
  }
  const torch::Device device(device_name);
  // Fixed shapes: let cuDNN pick the fastest algorithms once.
  if (device.is_cuda()) at::globalContext().setBenchmarkCuDNN(true);
  torch::set_num_threads(threads);
  std::printf("engine: ResNet-18 %dx%d, batch %d, %d threads, %d timed steps, device %s\n",
              size, size, batch, threads, steps, device.str().c_str());
  const bool bf16 = Arg(argc, argv, "--bf16", 1) != 0;
  const bool on_main = std::strcmp(StrArg(argc, argv, "--on", "worker"), "main") == 0;
  g_profile_dir = StrArg(argc, argv, "--profile", "");
  g_torch_adam = std::strcmp(StrArg(argc, argv, "--optimizer", "fused"), "torch") == 0;
  g_weights = StrArg(argc, argv, "--weights", "");
  g_adaptive = Arg(argc, argv, "--adaptive", 0) != 0;
  // Unset: the daemon's choice (GEMMs where the CPU has AVX-512 BF16).
  const int gemm_arg = Arg(argc, argv, "--gemm_conv", -1);
  traind::train::SetGemmConvMode(gemm_arg < 0    ? traind::train::GemmConvMode::kAuto
                                 : gemm_arg == 0 ? traind::train::GemmConvMode::kOff
                                                 : traind::train::GemmConvMode::kOn);
  const bool gemm_conv = gemm_arg > 0 || (gemm_arg < 0 && traind::train::CpuHasOneDnnBf16Gemms());
  traind::train::SetWinogradMode(Arg(argc, argv, "--winograd", 1) != 0
                                     ? traind::train::WinogradMode::kAuto
                                     : traind::train::WinogradMode::kOff);
  std::printf("engine: float32 3x3 stride-1 convolutions %s\n",
              traind::train::GetWinogradMode() == traind::train::WinogradMode::kOff
                  ? "as LibTorch's (--winograd 0)"
                  : (traind::train::WinogradAvailable()
                         ? "as oneDNN's Winograd kernels"
                         : "as LibTorch's (no Winograd kernel for this CPU)"));
  traind::train::SetSplitBackwardEnabled(Arg(argc, argv, "--split_backward", 1) != 0);
  std::printf("engine: float32 backward passes on 2 threads %s\n",
              traind::train::SplitBackwardApplies()
                  ? "split: weight gradients beside the input gradients"
                  : "not split (--split_backward 0, or no Winograd convolutions)");
  const bool fused_bn = Arg(argc, argv, "--fused_bn", 1) != 0;
  traind::train::SetFusedBatchNormEnabled(fused_bn);
  std::printf("engine: steps on %s thread, %s, the recipe's groups, %s\n",
              on_main ? "the main" : "a worker", g_torch_adam ? "LibTorch's Adam" : "FusedAdam",
              g_weights.empty() ? "random initial weights" : ("weights " + g_weights).c_str());
  std::printf("engine: bf16 3x3 convolutions on maps of <= %lld pixels %s\n",
              static_cast<long long>(traind::train::kGemmConvMaxPixels),
              gemm_conv ? "as GEMMs"
                        : (gemm_arg == 0 ? "as LibTorch's convolutions (--gemm_conv 0)"
                                         : "as LibTorch's convolutions (no AVX-512 BF16)"));
  std::printf("engine: bf16 BatchNorm + add + ReLU %s\n",
              fused_bn ? "fused" : "as LibTorch's operators (--fused_bn 0)");
  // Nothing here may run LibTorch operators in parallel: that gives the main
  // thread an OpenMP pool of its own, and with more pool threads than cores
  // libgomp stops spinning, so every region of the timed steps (on a worker
  // thread) sleeps and wakes (22,700 context switches in a 20-step scratch
  // run instead of 340). The daemon runs such threads serially
  // (intra_op.h).
  traind::train::SetFoldedEvalEnabled(Arg(argc, argv, "--folded_eval", 1) != 0);
  const bool onednn_pool = Arg(argc, argv, "--onednn_pool", 1) != 0;
  traind::train::SetOneDnnMaxPoolEnabled(onednn_pool);
  std::printf("engine: the stem's max pooling %s\n",
              onednn_pool ? "oneDNN's where it has kernels (float32 gradients LibTorch's)"
                          : "LibTorch's (--onednn_pool 0)");
  // --modes: which of the three to time (default all), e.g. `--modes scratch`.
  const std::string modes =
      std::string(",") + StrArg(argc, argv, "--modes", "finetune,scratch,eval") + ",";
  const auto wanted = [&](const char* mode) {
    return modes.find(std::string(",") + mode + ",") != std::string::npos;
  };
  // --fp32 0: the bf16 steps alone (bench/contention.sh PRECISION=bf16).
  const bool fp32 = Arg(argc, argv, "--fp32", 1) != 0;
  for (const char* mode : {"finetune", "scratch", "eval"}) {
    if (!fp32 || !wanted(mode)) continue;
    std::printf("engine %-8s %7.1f img/s\n", mode, Measure(mode, steps, batch, size, false, device, on_main));
    std::fflush(stdout);
  }
  if (bf16) {
    for (const char* mode : {"finetune", "scratch", "eval"}) {
      if (!wanted(mode)) continue;
      std::printf("engine-bf16 %-8s %7.1f img/s\n", mode, Measure(mode, steps, batch, size, true, device, on_main));
      std::fflush(stdout);
    }
  }
  return 0;
}
