#include "common/spec.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "google/protobuf/unknown_field_set.h"
#include "common/settings.h"

namespace traind {
namespace {

using trainer::v1::JobSpec;

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

// How each numeric setting of settings.h is read and written in a JobSpec.
struct Field {
  const char* name;
  bool (*has)(const JobSpec&);
  double (*get)(const JobSpec&);
  void (*set)(JobSpec*, double);
};

const Field kFields[] = {
    {"epochs", [](const JobSpec& s) { return s.has_epochs(); },
     [](const JobSpec& s) -> double { return s.epochs(); },
     [](JobSpec* s, double v) { s->set_epochs(static_cast<int>(v)); }},
    {"batch_size", [](const JobSpec& s) { return s.has_batch_size(); },
     [](const JobSpec& s) -> double { return s.batch_size(); },
     [](JobSpec* s, double v) { s->set_batch_size(static_cast<int>(v)); }},
    {"image_size", [](const JobSpec& s) { return s.has_image_size(); },
     [](const JobSpec& s) -> double { return s.image_size(); },
     [](JobSpec* s, double v) { s->set_image_size(static_cast<int>(v)); }},
    {"learning_rate", [](const JobSpec& s) { return s.has_learning_rate(); },
     [](const JobSpec& s) { return s.learning_rate(); },
     [](JobSpec* s, double v) { s->set_learning_rate(v); }},
    {"backbone_learning_rate", [](const JobSpec& s) { return s.has_backbone_learning_rate(); },
     [](const JobSpec& s) { return s.backbone_learning_rate(); },
     [](JobSpec* s, double v) { s->set_backbone_learning_rate(v); }},
    {"train_fraction", [](const JobSpec& s) { return s.has_train_fraction(); },
     [](const JobSpec& s) { return s.train_fraction(); },
     [](JobSpec* s, double v) { s->set_train_fraction(v); }},
    {"augmentation.hflip_probability",
     [](const JobSpec& s) { return s.augmentation().has_hflip_probability(); },
     [](const JobSpec& s) { return s.augmentation().hflip_probability(); },
     [](JobSpec* s, double v) { s->mutable_augmentation()->set_hflip_probability(v); }},
    {"augmentation.rotation_degrees",
     [](const JobSpec& s) { return s.augmentation().has_rotation_degrees(); },
     [](const JobSpec& s) { return s.augmentation().rotation_degrees(); },
     [](JobSpec* s, double v) { s->mutable_augmentation()->set_rotation_degrees(v); }},
    {"augmentation.brightness", [](const JobSpec& s) { return s.augmentation().has_brightness(); },
     [](const JobSpec& s) { return s.augmentation().brightness(); },
     [](JobSpec* s, double v) { s->mutable_augmentation()->set_brightness(v); }},
    {"augmentation.contrast", [](const JobSpec& s) { return s.augmentation().has_contrast(); },
     [](const JobSpec& s) { return s.augmentation().contrast(); },
     [](JobSpec* s, double v) { s->mutable_augmentation()->set_contrast(v); }},
    {"augmentation.saturation", [](const JobSpec& s) { return s.augmentation().has_saturation(); },
     [](const JobSpec& s) { return s.augmentation().saturation(); },
     [](JobSpec* s, double v) { s->mutable_augmentation()->set_saturation(v); }},
    {"augmentation.hue", [](const JobSpec& s) { return s.augmentation().has_hue(); },
     [](const JobSpec& s) { return s.augmentation().hue(); },
     [](JobSpec* s, double v) { s->mutable_augmentation()->set_hue(v); }},
    {"loader_threads", [](const JobSpec& s) { return s.has_loader_threads(); },
     [](const JobSpec& s) -> double { return s.loader_threads(); },
     [](JobSpec* s, double v) { s->set_loader_threads(static_cast<int>(v)); }},
    {"threads", [](const JobSpec& s) { return s.has_threads(); },
     [](const JobSpec& s) -> double { return s.threads(); },
     [](JobSpec* s, double v) { s->set_threads(static_cast<int>(v)); }},
    {"sweep.backbone_lr_ratio", [](const JobSpec& s) { return s.sweep().has_backbone_lr_ratio(); },
     [](const JobSpec& s) { return s.sweep().backbone_lr_ratio(); },
     [](JobSpec* s, double v) { s->mutable_sweep()->set_backbone_lr_ratio(v); }},
    {"sweep.random_trials", [](const JobSpec& s) { return s.sweep().has_random_trials(); },
     [](const JobSpec& s) -> double { return s.sweep().random_trials(); },
     [](JobSpec* s, double v) { s->mutable_sweep()->set_random_trials(static_cast<int>(v)); }},
    {"sweep.parallel_runs", [](const JobSpec& s) { return s.sweep().has_parallel_runs(); },
     [](const JobSpec& s) -> double { return s.sweep().parallel_runs(); },
     [](JobSpec* s, double v) { s->mutable_sweep()->set_parallel_runs(static_cast<int>(v)); }},
    {"sweep.asha.reduction_factor",
     [](const JobSpec& s) { return s.sweep().asha().has_reduction_factor(); },
     [](const JobSpec& s) { return s.sweep().asha().reduction_factor(); },
     [](JobSpec* s, double v) { s->mutable_sweep()->mutable_asha()->set_reduction_factor(v); }},
    {"distributed.world_size", [](const JobSpec& s) { return s.distributed().has_world_size(); },
     [](const JobSpec& s) -> double { return s.distributed().world_size(); },
     [](JobSpec* s, double v) {
       s->mutable_distributed()->set_world_size(static_cast<int>(v));
     }},
    {"distributed.rendezvous_timeout_seconds",
     [](const JobSpec& s) { return s.distributed().has_rendezvous_timeout_seconds(); },
     [](const JobSpec& s) -> double { return s.distributed().rendezvous_timeout_seconds(); },
     [](JobSpec* s, double v) {
       s->mutable_distributed()->set_rendezvous_timeout_seconds(static_cast<int>(v));
     }},
    {"distributed.slurm.nodes", [](const JobSpec& s) { return s.distributed().slurm().has_nodes(); },
     [](const JobSpec& s) -> double { return s.distributed().slurm().nodes(); },
     [](JobSpec* s, double v) {
       s->mutable_distributed()->mutable_slurm()->set_nodes(static_cast<int>(v));
     }},
    {"distributed.slurm.cpus_per_task",
     [](const JobSpec& s) { return s.distributed().slurm().has_cpus_per_task(); },
     [](const JobSpec& s) -> double { return s.distributed().slurm().cpus_per_task(); },
     [](JobSpec* s, double v) {
       s->mutable_distributed()->mutable_slurm()->set_cpus_per_task(static_cast<int>(v));
     }},
    {"distributed.slurm.gpus_per_task",
     [](const JobSpec& s) { return s.distributed().slurm().has_gpus_per_task(); },
     [](const JobSpec& s) -> double { return s.distributed().slurm().gpus_per_task(); },
     [](JobSpec* s, double v) {
       s->mutable_distributed()->mutable_slurm()->set_gpus_per_task(static_cast<int>(v));
     }},
    {"distributed.slurm.time_limit_minutes",
     [](const JobSpec& s) { return s.distributed().slurm().has_time_limit_minutes(); },
     [](const JobSpec& s) -> double { return s.distributed().slurm().time_limit_minutes(); },
     [](JobSpec* s, double v) {
       s->mutable_distributed()->mutable_slurm()->set_time_limit_minutes(static_cast<int>(v));
     }},
    {"distributed.kubernetes.gpus",
     [](const JobSpec& s) { return s.distributed().kubernetes().has_gpus(); },
     [](const JobSpec& s) -> double { return s.distributed().kubernetes().gpus(); },
     [](JobSpec* s, double v) {
       s->mutable_distributed()->mutable_kubernetes()->set_gpus(static_cast<int>(v));
     }},
};

}  // namespace

void ApplyDefaults(JobSpec* spec) {
  if (spec->kind() == trainer::v1::JOB_KIND_UNSPECIFIED) {
    spec->set_kind(trainer::v1::FINETUNE);
  }
  for (const Field& f : kFields) {
    const Setting* setting = FindSetting(f.name);
    // `threads` defaults to the daemon's --threads-per-job, set by the daemon.
    if (!f.has(*spec) && setting->default_value != 0) f.set(spec, setting->default_value);
  }
  if (!spec->has_seed()) spec->set_seed(0);
  if (spec->trainable_blocks().empty()) {
    spec->add_trainable_blocks("layer3");
    spec->add_trainable_blocks("layer4");
  }
  if (!spec->has_augment_validation()) spec->set_augment_validation(false);
  if (spec->exclude_classes().empty()) spec->add_exclude_classes("BACKGROUND_Google");
  auto* sweep = spec->mutable_sweep();
  if (sweep->epochs().empty()) {
    for (int e : {1, 3, 5}) sweep->add_epochs(e);
  }
  if (sweep->learning_rates().empty()) {
    for (double lr : {1e-3, 2e-3}) sweep->add_learning_rates(lr);
  }
  if (spec->priority() == trainer::v1::PRIORITY_UNSPECIFIED)
    spec->set_priority(trainer::v1::NORMAL);
  if (!spec->has_preemptible()) spec->set_preemptible(true);
  if (spec->device() == trainer::v1::DEVICE_UNSPECIFIED) spec->set_device(trainer::v1::auto_);
  if (spec->precision() == trainer::v1::PRECISION_UNSPECIFIED) {
    spec->set_precision(trainer::v1::fp32);
  }
  auto* dist = spec->mutable_distributed();
  if (dist->backend() == trainer::v1::BACKEND_UNSPECIFIED) dist->set_backend(trainer::v1::gloo);
  if (dist->launcher() == trainer::v1::LAUNCHER_UNSPECIFIED) {
    dist->set_launcher(trainer::v1::LOCAL_PROCESSES);
  }
}

absl::Status ValidateSpec(const JobSpec& spec) {
  if (!trainer::v1::JobKind_IsValid(spec.kind()) ||
      spec.kind() == trainer::v1::JOB_KIND_UNSPECIFIED) {
    return Invalid("kind", "must be FINETUNE, SCRATCH or SWEEP");
  }
  if (spec.dataset().empty()) return Invalid("dataset", "is required");
  if (!trainer::v1::Priority_IsValid(spec.priority())) {
    return Invalid("priority", absl::StrCat(static_cast<int>(spec.priority()),
                                            " is not a priority; use LOW, NORMAL, HIGH or URGENT"));
  }
  for (const Field& f : kFields) {
    // Unset settings without a default (threads: the daemon's; Slurm's own
    // defaults) are not checked.
    if (!f.has(spec) && FindSetting(f.name)->default_value == 0) continue;
    if (auto st = CheckSetting(*FindSetting(f.name), f.name, f.get(spec)); !st.ok()) return st;
  }
  static const std::set<std::string> kBlocks = {"conv1", "layer1", "layer2",
                                                "layer3", "layer4", "fc"};
  for (const auto& b : spec.trainable_blocks()) {
    if (!kBlocks.count(b)) {
      return Invalid("trainable_blocks",
                     absl::StrCat("unknown block \"", b,
                                  "\"; use conv1, layer1, layer2, layer3, layer4 (and fc, "
                                  "the classifier, always trained: [fc] alone trains only it)"));
    }
  }
  for (const auto& c : spec.exclude_classes()) {
    if (c.empty()) return Invalid("exclude_classes", "names must not be empty");
  }
  const Setting& epochs = *FindSetting("epochs");
  for (int e : spec.sweep().epochs()) {
    if (auto st = CheckSetting(epochs, "sweep.epochs", e); !st.ok()) return st;
  }
  const Setting& lr = *FindSetting("learning_rate");
  for (double v : spec.sweep().learning_rates()) {
    if (auto st = CheckSetting(lr, "sweep.learning_rates", v); !st.ok()) return st;
  }
  if (!trainer::v1::Device_IsValid(spec.device()) ||
      spec.device() == trainer::v1::DEVICE_UNSPECIFIED) {
    return Invalid("device", absl::StrCat("must be auto, cpu or cuda, got ", spec.device()));
  }
  if (!trainer::v1::Precision_IsValid(spec.precision()) ||
      spec.precision() == trainer::v1::PRECISION_UNSPECIFIED) {
    return Invalid("precision", absl::StrCat("must be fp32 or bf16, got ", spec.precision()));
  }
  const auto& dist = spec.distributed();
  if (!trainer::v1::Backend_IsValid(dist.backend()) ||
      dist.backend() == trainer::v1::BACKEND_UNSPECIFIED) {
    return Invalid("distributed.backend",
                   absl::StrCat("must be gloo or nccl, got ", dist.backend()));
  }
  if (!trainer::v1::Launcher_IsValid(dist.launcher()) ||
      dist.launcher() == trainer::v1::LAUNCHER_UNSPECIFIED) {
    return Invalid("distributed.launcher",
                   absl::StrCat("must be LOCAL_PROCESSES, SLURM or KUBERNETES, got ",
                                dist.launcher()));
  }
  if (dist.world_size() > 1) {
    if (spec.batch_size() % dist.world_size() != 0) {
      return Invalid("distributed.world_size",
                     absl::StrCat("must divide batch_size (the global batch): ",
                                  spec.batch_size(), " images cannot be split evenly over ",
                                  dist.world_size(), " ranks"));
    }
    if (dist.launcher() == trainer::v1::SLURM &&
        dist.world_size() % std::max(1, dist.slurm().nodes()) != 0) {
      return Invalid("distributed.slurm.nodes",
                     absl::StrCat("must divide world_size: ", dist.world_size(),
                                  " ranks cannot be spread evenly over ", dist.slurm().nodes(),
                                  " nodes"));
    }
    if (spec.kind() == trainer::v1::SWEEP) {
      return Invalid("distributed.world_size",
                     "a SWEEP job trains its runs inside the daemon; submit world_size 1 "
                     "(distributed sweeps are not supported yet)");
    }
    if (spec.adaptive_threads()) {
      return Invalid("adaptive_threads",
                     "only for jobs the daemon trains itself (world_size 1): the ranks of a "
                     "data-parallel job wait for each other every step, so one rank's step time "
                     "does not say what its thread count costs");
    }
  }
  return absl::OkStatus();
}

bool IsTerminal(trainer::v1::JobState state) {
  return state == trainer::v1::SUCCEEDED || state == trainer::v1::FAILED ||
         state == trainer::v1::CANCELLED;
}

absl::StatusOr<bool> UpgradeLegacySpec(trainer::v1::JobSpec* spec) {
  constexpr int kDevice = trainer::v1::JobSpec::kDeviceFieldNumber;
  constexpr int kPrecision = trainer::v1::JobSpec::kPrecisionFieldNumber;
  google::protobuf::UnknownFieldSet* unknown =
      spec->GetReflection()->MutableUnknownFields(spec);
  bool changed = false;
  for (int i = 0; i < unknown->field_count();) {
    const google::protobuf::UnknownField& f = unknown->field(i);
    const bool legacy = f.type() == google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED &&
                        (f.number() == kDevice || f.number() == kPrecision);
    if (!legacy) {
      ++i;
      continue;
    }
    const std::string value = f.length_delimited();
    if (f.number() == kDevice) {
      trainer::v1::Device device;
      if (!value.empty()) {
        if (!trainer::v1::Device_Parse(value, &device)) {
          return absl::InvalidArgumentError(
              absl::StrCat("device: must be auto, cpu or cuda, got \"", value, "\""));
        }
        if (spec->device() == trainer::v1::DEVICE_UNSPECIFIED) spec->set_device(device);
      }
    } else {
      trainer::v1::Precision precision;
      if (!value.empty()) {
        if (!trainer::v1::Precision_Parse(value, &precision)) {
          return absl::InvalidArgumentError(
              absl::StrCat("precision: must be fp32 or bf16, got \"", value, "\""));
        }
        if (spec->precision() == trainer::v1::PRECISION_UNSPECIFIED) {
          spec->set_precision(precision);
        }
      }
    }
    unknown->DeleteSubrange(i, 1);
    changed = true;
  }
  return changed;
}

}  // namespace traind
