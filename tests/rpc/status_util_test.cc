// Internal statuses become gRPC statuses code for code, message unchanged.
#include "server/rpc/status_util.h"

#include <gtest/gtest.h>

namespace traind::rpc {
namespace {

TEST(StatusUtilTest, CodesAndMessagesCarryOver) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  for (int code = 1; code <= 16; ++code) {
    const absl::Status st(static_cast<absl::StatusCode>(code), "why");
    const grpc::Status g = ToGrpcStatus(st);
    EXPECT_EQ(static_cast<int>(g.error_code()), code);
    EXPECT_EQ(g.error_message(), "why");
  }
  EXPECT_EQ(ToGrpcStatus(absl::NotFoundError("no job \"x\"")).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace traind::rpc
