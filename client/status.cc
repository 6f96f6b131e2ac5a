#include "client/status.h"

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace traind::client {
namespace {

constexpr char kExitCode[] = "trainctl/exit-code";

absl::Status WithExitCode(absl::Status status, int code) {
  status.SetPayload(kExitCode, absl::Cord(absl::StrCat(code)));
  return status;
}

}  // namespace

absl::Status UsageError(const std::string& message) {
  return WithExitCode(absl::InvalidArgumentError(message), 1);
}

absl::Status RpcError(const std::string& what, const grpc::Status& status) {
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    return WithExitCode(absl::UnavailableError(absl::StrCat(what, ": cannot reach traind: ",
                                                            status.error_message())),
                        3);
  }
  return WithExitCode(absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                                   absl::StrCat(what, ": ", status.error_message())),
                      2);
}

absl::Status JobEndedError(const std::string& message) {
  return WithExitCode(absl::FailedPreconditionError(message), 4);
}

int ExitCode(const absl::Status& status) {
  if (status.ok()) return 0;
  int code = 1;
  if (auto payload = status.GetPayload(kExitCode)) {
    if (!absl::SimpleAtoi(std::string(*payload), &code)) code = 1;
  }
  return code;
}

}  // namespace traind::client
