#include "common/spec.h"

#include <cmath>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"

namespace traind {
namespace {

using trainer::v1::JobSpec;

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::Status CheckRange(const std::string& field, double v, double lo, double hi,
                        bool lo_open = false, bool hi_open = false) {
  if (!std::isfinite(v)) return Invalid(field, "must be a finite number");
  const bool below = lo_open ? v <= lo : v < lo;
  const bool above = hi_open ? v >= hi : v > hi;
  if (below || above) {
    return Invalid(field, absl::StrCat("must be in ", lo_open ? "(" : "[", lo,
                                       ", ", hi, hi_open ? ")" : "]", ", got ", v));
  }
  return absl::OkStatus();
}

absl::Status CheckPositive(const std::string& field, double v) {
  if (!std::isfinite(v)) return Invalid(field, "must be a finite number");
  if (v <= 0) return Invalid(field, absl::StrCat("must be > 0, got ", v));
  if (v > 10) return Invalid(field, absl::StrCat("must be <= 10, got ", v));
  return absl::OkStatus();
}

}  // namespace

void ApplyDefaults(JobSpec* spec) {
  if (spec->kind() == trainer::v1::JOB_KIND_UNSPECIFIED) {
    spec->set_kind(trainer::v1::FINETUNE);
  }
  if (!spec->has_epochs()) spec->set_epochs(5);
  if (!spec->has_batch_size()) spec->set_batch_size(32);
  if (!spec->has_image_size()) spec->set_image_size(128);
  if (!spec->has_learning_rate()) spec->set_learning_rate(1e-3);
  if (!spec->has_backbone_learning_rate()) spec->set_backbone_learning_rate(1e-4);
  if (!spec->has_train_fraction()) spec->set_train_fraction(0.8);
  if (!spec->has_seed()) spec->set_seed(0);
  if (spec->trainable_blocks().empty()) {
    spec->add_trainable_blocks("layer3");
    spec->add_trainable_blocks("layer4");
  }
  auto* aug = spec->mutable_augmentation();
  if (!aug->has_hflip_probability()) aug->set_hflip_probability(0.5);
  if (!aug->has_rotation_degrees()) aug->set_rotation_degrees(10);
  if (!aug->has_brightness()) aug->set_brightness(0.2);
  if (!aug->has_contrast()) aug->set_contrast(0.2);
  if (!aug->has_saturation()) aug->set_saturation(0.2);
  if (!aug->has_hue()) aug->set_hue(0.1);
  if (!spec->has_augment_validation()) spec->set_augment_validation(false);
  if (spec->exclude_classes().empty()) spec->add_exclude_classes("BACKGROUND_Google");
  auto* sweep = spec->mutable_sweep();
  if (sweep->epochs().empty()) {
    for (int e : {1, 3, 5}) sweep->add_epochs(e);
  }
  if (sweep->learning_rates().empty()) {
    for (double lr : {1e-3, 2e-3}) sweep->add_learning_rates(lr);
  }
  if (!sweep->has_backbone_lr_ratio()) sweep->set_backbone_lr_ratio(0.1);
  if (spec->device().empty()) spec->set_device("auto");
  if (!spec->has_loader_threads()) spec->set_loader_threads(2);
  if (spec->precision().empty()) spec->set_precision("fp32");
}

absl::Status ValidateSpec(const JobSpec& spec) {
  if (!trainer::v1::JobKind_IsValid(spec.kind()) ||
      spec.kind() == trainer::v1::JOB_KIND_UNSPECIFIED) {
    return Invalid("kind", "must be FINETUNE, SCRATCH or SWEEP");
  }
  if (spec.dataset().empty()) return Invalid("dataset", "is required");
  if (spec.epochs() < 1 || spec.epochs() > 10000) {
    return Invalid("epochs", absl::StrCat("must be in [1, 10000], got ", spec.epochs()));
  }
  if (spec.batch_size() < 1 || spec.batch_size() > 4096) {
    return Invalid("batch_size",
                   absl::StrCat("must be in [1, 4096], got ", spec.batch_size()));
  }
  if (spec.image_size() < 16 || spec.image_size() > 1024) {
    return Invalid("image_size",
                   absl::StrCat("must be in [16, 1024], got ", spec.image_size()));
  }
  if (auto st = CheckPositive("learning_rate", spec.learning_rate()); !st.ok()) return st;
  if (auto st = CheckPositive("backbone_learning_rate", spec.backbone_learning_rate());
      !st.ok()) {
    return st;
  }
  if (auto st = CheckRange("train_fraction", spec.train_fraction(), 0, 1, true, true);
      !st.ok()) {
    return st;
  }
  static const std::set<std::string> kBlocks = {"conv1", "layer1", "layer2",
                                                "layer3", "layer4", "fc"};
  for (const auto& b : spec.trainable_blocks()) {
    if (!kBlocks.count(b)) {
      return Invalid("trainable_blocks",
                     absl::StrCat("unknown block \"", b,
                                  "\"; use conv1, layer1, layer2, layer3, layer4"));
    }
  }
  const auto& aug = spec.augmentation();
  if (auto st = CheckRange("augmentation.hflip_probability", aug.hflip_probability(), 0, 1);
      !st.ok()) {
    return st;
  }
  if (auto st = CheckRange("augmentation.rotation_degrees", aug.rotation_degrees(), 0, 180);
      !st.ok()) {
    return st;
  }
  if (auto st = CheckRange("augmentation.brightness", aug.brightness(), 0, 10); !st.ok()) return st;
  if (auto st = CheckRange("augmentation.contrast", aug.contrast(), 0, 10); !st.ok()) return st;
  if (auto st = CheckRange("augmentation.saturation", aug.saturation(), 0, 10); !st.ok()) return st;
  if (auto st = CheckRange("augmentation.hue", aug.hue(), 0, 0.5); !st.ok()) return st;
  for (const auto& c : spec.exclude_classes()) {
    if (c.empty()) return Invalid("exclude_classes", "names must not be empty");
  }
  for (int e : spec.sweep().epochs()) {
    if (e < 1 || e > 10000) {
      return Invalid("sweep.epochs", absl::StrCat("must be in [1, 10000], got ", e));
    }
  }
  for (double lr : spec.sweep().learning_rates()) {
    if (auto st = CheckPositive("sweep.learning_rates", lr); !st.ok()) return st;
  }
  if (auto st = CheckPositive("sweep.backbone_lr_ratio", spec.sweep().backbone_lr_ratio());
      !st.ok()) {
    return st;
  }
  if (spec.device() != "auto" && spec.device() != "cpu" && spec.device() != "cuda") {
    return Invalid("device", absl::StrCat("must be auto, cpu or cuda, got \"",
                                          spec.device(), "\""));
  }
  if (spec.precision() != "fp32" && spec.precision() != "bf16") {
    return Invalid("precision", absl::StrCat("must be fp32 or bf16, got \"",
                                             spec.precision(), "\""));
  }
  if (spec.has_threads() && (spec.threads() < 1 || spec.threads() > 256)) {
    return Invalid("threads", absl::StrCat("must be in [1, 256], got ", spec.threads()));
  }
  if (spec.loader_threads() < 1 || spec.loader_threads() > 64) {
    return Invalid("loader_threads",
                   absl::StrCat("must be in [1, 64], got ", spec.loader_threads()));
  }
  return absl::OkStatus();
}

bool IsTerminal(trainer::v1::JobState state) {
  return state == trainer::v1::SUCCEEDED || state == trainer::v1::FAILED ||
         state == trainer::v1::CANCELLED;
}

}  // namespace traind
