// engine_bench [--threads N] [--steps N] [--image_size S] [--batch B]
// Times the engine's training and evaluation steps on synthetic batches and
// prints images/s per mode. Pair with reference_bench.py (run.sh does both and
// prints the ratio); compare figures from one run, the machine is shared.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <torch/torch.h>

#include "server/train/model.h"
#include "server/train/recipe.h"
#include "server/train/trainer.h"

namespace {

using traind::train::ResNet18;

int Arg(int argc, char** argv, const char* name, int def) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return std::atoi(argv[i + 1]);
  }
  return def;
}

double Measure(const char* mode, int steps, int batch, int size, bool bf16) {
  torch::manual_seed(0);
  ResNet18 model(101);
  for (auto& p : model->parameters()) {
    if (p.dim() == 4) p.set_data(p.data().contiguous(torch::MemoryFormat::ChannelsLast));
  }
  std::unique_ptr<torch::optim::Adam> opt;
  const bool train = std::strcmp(mode, "eval") != 0;
  if (std::strcmp(mode, "finetune") == 0) {
    std::vector<torch::Tensor> params;
    for (auto& p : model->named_parameters()) {
      const bool trainable = p.key().rfind("layer3", 0) == 0 || p.key().rfind("layer4", 0) == 0 ||
                             p.key().rfind("fc", 0) == 0;
      p.value().set_requires_grad(trainable);
      if (trainable) params.push_back(p.value());
    }
    opt = std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(1e-3));
  } else if (train) {
    opt = std::make_unique<torch::optim::Adam>(model->parameters(), torch::optim::AdamOptions(1e-3));
  }
  torch::Tensor x = torch::randn({batch, 3, size, size}).contiguous(torch::MemoryFormat::ChannelsLast);
  torch::Tensor y = torch::randint(0, 101, {batch}, torch::kLong);
  auto step = [&] {
    if (train) {
      (void)traind::train::TrainStep(model, *opt, x, y, bf16).loss.item<float>();
    } else {
      torch::NoGradGuard ng;
      traind::train::ScopedBf16Autocast autocast(bf16);
      model->eval();
      (void)model->forward(x).sum().item<float>();
    }
  };
  for (int i = 0; i < 3; ++i) step();  // warm-up
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return steps * batch / s;
}

}  // namespace

int main(int argc, char** argv) {
  traind::train::TuneAllocator();
  const int threads = Arg(argc, argv, "--threads", 2);
  const int steps = Arg(argc, argv, "--steps", 10);
  const int size = Arg(argc, argv, "--image_size", 128);
  const int batch = Arg(argc, argv, "--batch", 32);
  torch::set_num_threads(threads);
  std::printf("engine: ResNet-18 %dx%d, batch %d, %d threads, %d timed steps\n", size, size,
              batch, threads, steps);
  const bool bf16 = Arg(argc, argv, "--bf16", 1) != 0;
  for (const char* mode : {"finetune", "scratch", "eval"}) {
    std::printf("engine %-8s %7.1f img/s\n", mode, Measure(mode, steps, batch, size, false));
    std::fflush(stdout);
  }
  if (bf16) {
    for (const char* mode : {"finetune", "scratch", "eval"}) {
      std::printf("engine-bf16 %-8s %7.1f img/s\n", mode, Measure(mode, steps, batch, size, true));
      std::fflush(stdout);
    }
  }
  return 0;
}
