#include "common/settings.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace traind {

const std::vector<Setting>& Settings() {
  // The reference recipe's values (../shared/RECIPE.md) are the defaults.
  static const auto* kSettings = new std::vector<Setting>{
      {"epochs", 5, 1, 10000, false, false, true},
      {"batch_size", 32, 1, 4096, false, false, true},
      {"image_size", 128, 16, 1024, false, false, true},
      {"learning_rate", 1e-3, 0, 10, true},
      {"backbone_learning_rate", 1e-4, 0, 10, true},
      {"train_fraction", 0.8, 0, 1, true, true},
      {"augmentation.hflip_probability", 0.5, 0, 1},
      {"augmentation.rotation_degrees", 10, 0, 180},
      {"augmentation.brightness", 0.2, 0, 10},
      {"augmentation.contrast", 0.2, 0, 10},
      {"augmentation.saturation", 0.2, 0, 10},
      {"augmentation.hue", 0.1, 0, 0.5},
      {"loader_threads", 2, 1, 64, false, false, true},
      {"threads", 0, 1, 256, false, false, true},  // default: the daemon's
      {"sweep.backbone_lr_ratio", 0.1, 0, 100, true},
      {"sweep.random_trials", 8, 1, 1000, false, false, true},
      {"sweep.parallel_runs", 1, 1, 16, false, false, true},
      {"sweep.asha.reduction_factor", 3, 1, 1e6, true},
      {"distributed.world_size", 1, 1, 1024, false, false, true},
      {"distributed.rendezvous_timeout_seconds", 300, 5, 3600, false, false, true},
      {"distributed.slurm.nodes", 1, 1, 1024, false, false, true},
      {"distributed.slurm.cpus_per_task", 0, 1, 1024, false, false, true},
      {"distributed.slurm.gpus_per_task", 0, 0, 64, false, false, true},
      {"distributed.slurm.time_limit_minutes", 0, 1, 525600, false, false, true},
      {"distributed.kubernetes.gpus", 0, 0, 64, false, false, true},
  };
  return *kSettings;
}

const Setting* FindSetting(absl::string_view name) {
  for (const Setting& s : Settings()) {
    if (name == s.name) return &s;
  }
  return nullptr;
}

absl::Status CheckSetting(const Setting& s, const std::string& label, double v) {
  if (!std::isfinite(v)) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": must be a finite number"));
  }
  if (s.integer && v != std::floor(v)) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": must be a whole number, got ", v));
  }
  const bool below = s.min_open ? v <= s.min : v < s.min;
  const bool above = s.max_open ? v >= s.max : v > s.max;
  if (below || above) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": must be in ", s.min_open ? "(" : "[",
                                                   s.min, ", ", s.max, s.max_open ? ")" : "]",
                                                   ", got ", v));
  }
  return absl::OkStatus();
}

}  // namespace traind
