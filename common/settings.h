// The numeric settings of a job: their defaults and ranges, written once.
// JobSpec defaults and validation (spec.cc), sweep search spaces
// (server/train/sweep.cc) and the tests that compare the proto's defaults
// with the engine's config all read this table. No protobuf here, so the
// engine can use it too.
#ifndef TRAIND_COMMON_SETTINGS_H_
#define TRAIND_COMMON_SETTINGS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace traind {

struct Setting {
  const char* name;  // the JobSpec field path, e.g. "augmentation.hue"
  double default_value;
  double min;
  double max;
  bool min_open = false;  // (min, ...
  bool max_open = false;  // ..., max)
  bool integer = false;
};

// Every numeric setting, in the proto's order.
const std::vector<Setting>& Settings();
// The setting at `name` (a field path), or nullptr.
const Setting* FindSetting(absl::string_view name);
// OK, or INVALID_ARGUMENT "<label>: must be in [min, max], got v" (also for
// non-finite and, for whole-number settings, fractional values).
absl::Status CheckSetting(const Setting& setting, const std::string& label, double value);

}  // namespace traind

#endif  // TRAIND_COMMON_SETTINGS_H_
