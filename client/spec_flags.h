// `trainctl submit`'s JobSpec: a job file (-f, protobuf's JSON mapping) with
// the flags given on top of it. Unset settings stay unset: the server fills
// in the defaults.
#ifndef TRAIND_CLIENT_SPEC_FLAGS_H_
#define TRAIND_CLIENT_SPEC_FLAGS_H_

#include <string>

#include "absl/status/statusor.h"
#include "trainer/v1/training_service.pb.h"

namespace traind::client {

// UsageError naming the flag or the file for bad input.
absl::StatusOr<trainer::v1::JobSpec> SpecFromFlags();
// A fresh idempotency key for a submission.
std::string RandomRequestId();

}  // namespace traind::client

#endif  // TRAIND_CLIENT_SPEC_FLAGS_H_
