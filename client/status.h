// trainctl's errors are values: an absl::Status whose payload carries the
// exit code (1 bad usage, 2 refused by the server, 3 traind unreachable,
// 4 the job ended FAILED or CANCELLED). Only RunTrainctl turns one into a
// message on stderr and an exit code.
#ifndef TRAIND_CLIENT_STATUS_H_
#define TRAIND_CLIENT_STATUS_H_

#include <string>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace traind::client {

// Bad usage or local trouble (a flag, a file): exit code 1.
absl::Status UsageError(const std::string& message);
// A failed call: exit code 3 when traind could not be reached, else 2 (the
// server refused; its message names the problem). `what` prefixes it.
absl::Status RpcError(const std::string& what, const grpc::Status& status);
// The job ended but not SUCCEEDED: exit code 4.
absl::Status JobEndedError(const std::string& message);
// The process exit code of a command's outcome: 0 for OK.
int ExitCode(const absl::Status& status);

}  // namespace traind::client

#endif  // TRAIND_CLIENT_STATUS_H_
