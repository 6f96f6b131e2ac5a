#include "client/spec_flags.h"

#include <cstdint>
#include <random>
#include <type_traits>

#include <google/protobuf/util/json_util.h>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/flags.h"
#include "client/status.h"
#include "common/file_util.h"

namespace traind::client {
namespace {

using trainer::v1::JobSpec;

// Sets a numeric field (int32 or double) from a flag's text, when given.
template <typename T>
absl::Status SetNumber(const char* name, const std::string& text, void (JobSpec::*set)(T),
                       JobSpec* spec) {
  if (text.empty()) return absl::OkStatus();
  T v;
  bool parsed;
  if constexpr (std::is_floating_point_v<T>) {
    parsed = absl::SimpleAtod(text, &v);
  } else {
    parsed = absl::SimpleAtoi(text, &v);
  }
  if (!parsed) {
    return UsageError(absl::StrCat("--", name, ": not a ",
                                   std::is_floating_point_v<T> ? "number" : "32-bit integer",
                                   ": ", text));
  }
  (spec->*set)(v);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<JobSpec> SpecFromFlags() {
  JobSpec spec;
  if (const std::string f = absl::GetFlag(FLAGS_f); !f.empty()) {
    auto text = ReadFile(f);
    if (!text.ok()) return UsageError(std::string(text.status().message()));
    auto st = google::protobuf::util::JsonStringToMessage(*text, &spec);
    if (!st.ok()) {
      return UsageError(absl::StrCat(f, ": not a valid JobSpec: ", st.message().as_string()));
    }
  }
  if (const std::string k = absl::AsciiStrToUpper(absl::GetFlag(FLAGS_kind)); !k.empty()) {
    trainer::v1::JobKind kind;
    if (!trainer::v1::JobKind_Parse(k, &kind) || kind == trainer::v1::JOB_KIND_UNSPECIFIED) {
      return UsageError("--kind: must be finetune, scratch or sweep");
    }
    spec.set_kind(kind);
  }
  if (auto v = absl::GetFlag(FLAGS_dataset); !v.empty()) spec.set_dataset(v);
  for (absl::Status st : {
           SetNumber("epochs", absl::GetFlag(FLAGS_epochs), &JobSpec::set_epochs, &spec),
           SetNumber("batch_size", absl::GetFlag(FLAGS_batch_size), &JobSpec::set_batch_size, &spec),
           SetNumber("image_size", absl::GetFlag(FLAGS_image_size), &JobSpec::set_image_size, &spec),
           SetNumber("threads", absl::GetFlag(FLAGS_threads), &JobSpec::set_threads, &spec),
           SetNumber("loader_threads", absl::GetFlag(FLAGS_loader_threads),
                  &JobSpec::set_loader_threads, &spec),
           SetNumber("lr", absl::GetFlag(FLAGS_lr), &JobSpec::set_learning_rate, &spec),
           SetNumber("backbone_lr", absl::GetFlag(FLAGS_backbone_lr),
                     &JobSpec::set_backbone_learning_rate, &spec),
           SetNumber("train_fraction", absl::GetFlag(FLAGS_train_fraction),
                     &JobSpec::set_train_fraction, &spec),
       }) {
    if (!st.ok()) return st;
  }
  if (auto v = absl::GetFlag(FLAGS_seed); !v.empty()) {
    uint64_t seed;
    if (!absl::SimpleAtoi(v, &seed)) return UsageError("--seed: not a non-negative integer: " + v);
    spec.set_seed(seed);
  }
  if (auto v = absl::GetFlag(FLAGS_trainable); !v.empty()) {
    spec.clear_trainable_blocks();
    for (absl::string_view b : absl::StrSplit(v, ',', absl::SkipEmpty())) {
      spec.add_trainable_blocks(std::string(b));
    }
  }
  if (auto v = absl::GetFlag(FLAGS_device); !v.empty()) {
    trainer::v1::Device device;
    if (!trainer::v1::Device_Parse(v, &device) || device == trainer::v1::DEVICE_UNSPECIFIED) {
      return UsageError("--device: must be auto, cpu or cuda, got " + v);
    }
    spec.set_device(device);
  }
  if (auto v = absl::GetFlag(FLAGS_precision); !v.empty()) {
    trainer::v1::Precision precision;
    if (!trainer::v1::Precision_Parse(v, &precision) ||
        precision == trainer::v1::PRECISION_UNSPECIFIED) {
      return UsageError("--precision: must be fp32 or bf16, got " + v);
    }
    spec.set_precision(precision);
  }
  if (auto v = absl::GetFlag(FLAGS_priority); !v.empty()) {
    trainer::v1::Priority priority;
    if (!trainer::v1::Priority_Parse(absl::AsciiStrToUpper(v), &priority) ||
        priority == trainer::v1::PRIORITY_UNSPECIFIED) {
      return UsageError("--priority: must be low, normal, high or urgent, got " + v);
    }
    spec.set_priority(priority);
  }
  if (auto v = absl::GetFlag(FLAGS_preemptible); !v.empty()) {
    bool preemptible;
    if (!absl::SimpleAtob(v, &preemptible)) {
      return UsageError("--preemptible: must be true or false, got " + v);
    }
    spec.set_preemptible(preemptible);
  }
  if (auto v = absl::GetFlag(FLAGS_adaptive_threads); !v.empty()) {
    bool adaptive;
    if (!absl::SimpleAtob(v, &adaptive)) {
      return UsageError("--adaptive_threads: must be true or false, got " + v);
    }
    spec.set_adaptive_threads(adaptive);
  }
  if (auto v = absl::GetFlag(FLAGS_winograd); !v.empty()) {
    bool winograd;
    if (!absl::SimpleAtob(v, &winograd)) {
      return UsageError("--winograd: must be true or false, got " + v);
    }
    spec.set_winograd(winograd);
  }
  if (auto v = absl::GetFlag(FLAGS_world_size); !v.empty()) {
    int n;
    if (!absl::SimpleAtoi(v, &n)) return UsageError("--world_size: not a 32-bit integer: " + v);
    spec.mutable_distributed()->set_world_size(n);
  }
  if (auto v = absl::GetFlag(FLAGS_backend); !v.empty()) {
    trainer::v1::Backend backend;
    if (!trainer::v1::Backend_Parse(v, &backend) ||
        backend == trainer::v1::BACKEND_UNSPECIFIED) {
      return UsageError("--backend: must be gloo or nccl, got " + v);
    }
    spec.mutable_distributed()->set_backend(backend);
  }
  if (auto v = absl::AsciiStrToUpper(absl::GetFlag(FLAGS_launcher)); !v.empty()) {
    trainer::v1::Launcher launcher;
    if (!trainer::v1::Launcher_Parse(v, &launcher) ||
        launcher == trainer::v1::LAUNCHER_UNSPECIFIED) {
      return UsageError("--launcher: must be local_processes, slurm or kubernetes, got " + v);
    }
    spec.mutable_distributed()->set_launcher(launcher);
  }
  if (auto v = absl::GetFlag(FLAGS_pretrained); !v.empty()) spec.set_pretrained_file(v);
  if (auto v = absl::GetFlag(FLAGS_from_job); !v.empty()) spec.set_from_job(v);
  if (absl::GetFlag(FLAGS_augment_validation)) spec.set_augment_validation(true);
  return spec;
}

std::string RandomRequestId() {
  std::random_device rd;
  return absl::StrFormat("trainctl-%08x%08x", rd(), rd());
}

}  // namespace traind::client
