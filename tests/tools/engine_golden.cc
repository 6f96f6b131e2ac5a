// engine_golden: exposes the engine's pieces to the golden tests, which
// compare them with torchvision. Tensors travel as safetensors files.
//
//   engine_golden forward WEIGHTS NUM_CLASSES INPUT OUTPUT [train]
//       logits (and, in train mode, the updated BatchNorm running statistics)
//   engine_golden step finetune|scratch WEIGHTS NUM_CLASSES BATCH OUTPUT
//       the state_dict after one recipe optimizer step on BATCH's
//       "input"/"labels", starting from WEIGHTS (classifier included)
//   engine_golden init finetune|scratch WEIGHTS|- NUM_CLASSES SEED OUTPUT
//       the state_dict the recipe starts a run from
//   engine_golden export WEIGHTS NUM_CLASSES OUTPUT_PTH
//       WEIGHTS read into the engine's model and written as traind serves a
//       job's final weights
//   engine_golden split DIR SEED TRAIN_FRACTION
//       the validation files, one per line, relative to DIR
//   engine_golden transform OP PARAM IN_IMAGE OUT_PNG
//       one augmentation op at a fixed parameter; OP in resize, hflip, rotate,
//       brightness, contrast, saturation, hue
#include <cstdio>
#include <string>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "common/file_util.h"
#include "server/train/data.h"
#include "server/train/model.h"
#include "server/train/recipe.h"
#include "server/train/weights.h"
#include "server/train/winograd_mode.h"

namespace {

using namespace traind::train;

int Fail(const std::string& what) {
  std::fprintf(stderr, "engine_golden: %s\n", what.c_str());
  return 1;
}

int Write(const NamedTensors& tensors, const std::string& path) {
  auto bytes = SerializeSafetensors(tensors);
  if (!bytes.ok() || !traind::WriteFileAtomically(path, *bytes).ok()) {
    return Fail("cannot write " + path);
  }
  return 0;
}

NamedTensors Snapshot(const torch::nn::Module& model) {
  NamedTensors out;
  for (auto& [name, t] : StateDict(model)) out.emplace_back(name, t.detach().contiguous().clone());
  return out;
}

absl::StatusOr<ResNet> Load(const std::string& path, int64_t classes) {
  auto weights = LoadStateDict(path);
  if (!weights.ok()) return weights.status();
  ResNet model = ResNet18(classes);
  if (auto st = CopyIntoModule(*weights, *model); !st.ok()) return st;
  return model;
}

torch::Tensor Find(const NamedTensors& t, const std::string& name) {
  for (auto& [n, v] : t) {
    if (n == name) return v;
  }
  return {};
}

int Forward(int argc, char** argv) {
  if (argc < 6) return Fail("forward WEIGHTS NUM_CLASSES INPUT OUTPUT [train]");
  auto model = Load(argv[2], std::stoll(argv[3]));
  if (!model.ok()) return Fail(std::string(model.status().message()));
  auto input = LoadStateDict(argv[4]);
  if (!input.ok()) return Fail(std::string(input.status().message()));
  const bool train = argc > 6 && std::string(argv[6]) == "train";
  torch::NoGradGuard no_grad;
  (*model)->train(train);
  NamedTensors out = {{"logits", (*model)->forward(Find(*input, "input"))}};
  if (train) {
    for (auto& [name, t] : StateDict(**model)) {
      if (name.find("running_") != std::string::npos) out.emplace_back(name, t);
    }
  }
  return Write(out, argv[5]);
}

int Step(int argc, char** argv) {
  if (argc < 7) return Fail("step KIND WEIGHTS NUM_CLASSES BATCH OUTPUT");
  TrainConfig config;
  config.kind = std::string(argv[2]) == "scratch" ? Kind::kScratch : Kind::kFinetune;
  auto model = Load(argv[3], std::stoll(argv[4]));
  if (!model.ok()) return Fail(std::string(model.status().message()));
  auto batch = LoadStateDict(argv[5]);
  if (!batch.ok()) return Fail(std::string(batch.status().message()));
  auto optimizer = BuildOptimizer(*model, config);
  TrainStep(*model, *optimizer, Find(*batch, "input"), Find(*batch, "labels"));
  return Write(Snapshot(**model), argv[6]);
}

int Init(int argc, char** argv) {
  if (argc < 7) return Fail("init KIND WEIGHTS|- NUM_CLASSES SEED OUTPUT");
  TrainConfig config;
  config.kind = std::string(argv[2]) == "scratch" ? Kind::kScratch : Kind::kFinetune;
  if (std::string(argv[3]) != "-") config.initial_weights = argv[3];
  config.data.seed = std::stoull(argv[5]);
  auto model = BuildModel(config, std::stoll(argv[4]));
  if (!model.ok()) return Fail(std::string(model.status().message()));
  return Write(Snapshot(**model), argv[6]);
}

int Export(int argc, char** argv) {
  if (argc != 5) return Fail("usage: export WEIGHTS NUM_CLASSES OUTPUT_PTH");
  auto model = Load(argv[2], std::stoll(argv[3]));
  if (!model.ok()) return Fail(std::string(model.status().message()));
  auto bytes = SerializeTorchArchive(Snapshot(**model));
  if (!bytes.ok() || !traind::WriteFileAtomically(argv[4], *bytes).ok()) {
    return Fail(std::string("cannot write ") + argv[4]);
  }
  return 0;
}

int Split(int argc, char** argv) {
  if (argc < 5) return Fail("split DIR SEED TRAIN_FRACTION");
  DataConfig config;
  config.dir = argv[2];
  config.seed = std::stoull(argv[3]);
  config.train_fraction = std::stod(argv[4]);
  auto index = ScanDataset(config);
  if (!index.ok()) return Fail(std::string(index.status().message()));
  const size_t prefix = config.dir.size() + (config.dir.back() == '/' ? 0 : 1);
  for (const auto& r : index->validation) std::printf("%s\n", r.path.substr(prefix).c_str());
  return 0;
}

int Transform(int argc, char** argv) {
  if (argc < 6) return Fail("transform OP PARAM IN_IMAGE OUT_PNG");
  const std::string op = argv[2];
  const double param = std::stod(argv[3]);
  cv::Mat bgr = cv::imread(argv[4], cv::IMREAD_COLOR);
  if (bgr.empty()) return Fail(std::string("cannot read ") + argv[4]);
  cv::Mat rgb, out;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  if (op == "resize") {
    out = ResizeSquare(rgb, static_cast<int>(param));
  } else if (op == "hflip") {
    out = HorizontalFlip(rgb);
  } else if (op == "rotate") {
    out = Rotate(rgb, param);
  } else if (op == "brightness") {
    out = AdjustBrightness(rgb, param);
  } else if (op == "contrast") {
    out = AdjustContrast(rgb, param);
  } else if (op == "saturation") {
    out = AdjustSaturation(rgb, param);
  } else if (op == "hue") {
    out = AdjustHue(rgb, param);
  } else {
    return Fail("unknown op " + op);
  }
  cv::cvtColor(out, bgr, cv::COLOR_RGB2BGR);
  return cv::imwrite(argv[5], bgr) ? 0 : Fail(std::string("cannot write ") + argv[5]);
}

}  // namespace

int main(int argc, char** argv) {
  torch::set_num_threads(2);
  // The daemon's arithmetic (traind --winograd, on by default).
  traind::train::SetWinogradMode(traind::train::WinogradMode::kAuto);
  const std::string cmd = argc > 1 ? argv[1] : "";
  try {
    if (cmd == "forward") return Forward(argc, argv);
    if (cmd == "step") return Step(argc, argv);
    if (cmd == "init") return Init(argc, argv);
    if (cmd == "export") return Export(argc, argv);
    if (cmd == "split") return Split(argc, argv);
    if (cmd == "transform") return Transform(argc, argv);
  } catch (const std::exception& e) {
    return Fail(e.what());
  }
  return Fail("usage: engine_golden forward|step|init|export|split|transform ...");
}
