// The one place where internal absl::Status becomes grpc::Status.
#ifndef TRAIND_SERVER_RPC_STATUS_UTIL_H_
#define TRAIND_SERVER_RPC_STATUS_UTIL_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace traind::rpc {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace traind::rpc

#endif  // TRAIND_SERVER_RPC_STATUS_UTIL_H_
