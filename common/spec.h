// The reference recipe as JobSpec defaults, and the structural checks every
// spec passes before it is stored. Shared by the daemon (authoritative) and
// the CLI (early, friendlier errors).
#ifndef TRAIND_COMMON_SPEC_H_
#define TRAIND_COMMON_SPEC_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/v1/training_service.pb.h"

namespace traind {

// Fills every unset field of `spec` with the recipe's default.
void ApplyDefaults(trainer::v1::JobSpec* spec);

// Checks ranges and finiteness of a defaulted spec. INVALID_ARGUMENT with a
// message that starts with the offending field's name. Does not touch the
// file system (paths are resolved by the daemon).
absl::Status ValidateSpec(const trainer::v1::JobSpec& spec);

// Reads fields that trainer.v1 once carried in another form at the same
// number (device, 15, and precision, 20, were strings until 2026-11-28): an
// old client's spec, or one stored by an older traind, holds them as
// unknown fields, which this sets as the field they mean and removes.
// Returns whether it changed `spec`; INVALID_ARGUMENT naming the field when
// the old value names nothing.
absl::StatusOr<bool> UpgradeLegacySpec(trainer::v1::JobSpec* spec);

// True for SUCCEEDED, FAILED and CANCELLED.
bool IsTerminal(trainer::v1::JobState state);

}  // namespace traind

#endif  // TRAIND_COMMON_SPEC_H_
