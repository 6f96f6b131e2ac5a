#include "server/jobs/engine.h"

namespace traind::jobs {
namespace {

constexpr char kLostPayload[] = "type.traind/attempt-lost";

}  // namespace

absl::Status AttemptLost(absl::Status status) {
  status.SetPayload(kLostPayload, absl::Cord("1"));
  return status;
}

bool IsAttemptLost(const absl::Status& status) {
  return status.GetPayload(kLostPayload).has_value();
}

}  // namespace traind::jobs
