#include "server/train/classifier.h"

#include <algorithm>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "server/train/data.h"
#include "server/train/model.h"
#include "server/train/weights.h"

namespace traind::train {

struct Classifier::Impl {
  ResNet model{nullptr};
  int image_size = 128;
};

Classifier::Classifier(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Classifier::~Classifier() = default;

absl::StatusOr<std::unique_ptr<Classifier>> Classifier::Load(const std::string& weights_path,
                                                             int num_classes, int image_size) {
  try {
    auto impl = std::make_unique<Impl>();
    impl->model = ResNet18(num_classes);
    auto weights = LoadStateDict(weights_path);
    if (!weights.ok()) return weights.status();
    if (auto st = CopyIntoModule(*weights, *impl->model); !st.ok()) return st;
    impl->model->eval();
    for (auto& p : impl->model->parameters()) {
      p.set_requires_grad(false);
      if (p.dim() == 4) p.set_data(p.data().contiguous(torch::MemoryFormat::ChannelsLast));
    }
    impl->image_size = image_size;
    return std::unique_ptr<Classifier>(new Classifier(std::move(impl)));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("LibTorch: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<std::vector<std::vector<Prediction>>> Classifier::Classify(
    const std::vector<std::string>& encoded, int top_k) const {
  const int size = impl_->image_size;
  torch::Tensor hwc = torch::empty({static_cast<int64_t>(encoded.size()), size, size, 3});
  for (size_t i = 0; i < encoded.size(); ++i) {
    auto img = DecodeImageBytes(encoded[i], size);
    if (!img.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("images[", i, "]: ", img.status().message()));
    }
    NormalizeInto(*img, hwc.data_ptr<float>() + i * size * size * 3);
  }
  try {
    torch::NoGradGuard no_grad;
    const torch::Tensor probs =
        torch::softmax(impl_->model->forward(hwc.permute({0, 3, 1, 2})), 1);
    const int k = std::min<int64_t>(top_k, probs.size(1));
    auto [values, indices] = probs.topk(k, 1);
    std::vector<std::vector<Prediction>> out(encoded.size());
    for (size_t i = 0; i < encoded.size(); ++i) {
      for (int j = 0; j < k; ++j) {
        out[i].push_back({static_cast<int>(indices[i][j].item<int64_t>()),
                          values[i][j].item<double>()});
      }
    }
    return out;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("LibTorch: ", e.what_without_backtrace()));
  }
}

}  // namespace traind::train
