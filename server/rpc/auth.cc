#include "server/rpc/auth.h"

#include <vector>

namespace traind::rpc {

absl::StatusOr<jobs::Caller> Authenticate(const grpc::ServerContextBase& context,
                                          const TokenStore* tokens) {
  std::vector<absl::string_view> authorization;
  const auto range = context.client_metadata().equal_range("authorization");
  for (auto it = range.first; it != range.second; ++it) {
    authorization.emplace_back(it->second.data(), it->second.size());
  }
  return auth::Identify(tokens, authorization);
}

}  // namespace traind::rpc
