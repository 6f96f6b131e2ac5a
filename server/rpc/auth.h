// Who is calling: bearer tokens from a tokens file, checked for every call
// by the handler that serves it.
//
// The tokens file holds one line per token: the hex SHA-256 of the token, the
// user name, and optionally "admin"; '#' starts a comment. Only digests are
// stored, tokens are never logged, and a presented token is compared with
// every digest in constant time. deploy/add-token.sh makes a token and its
// line.
//
// Thread-safety: all methods may be called from any thread; Reload swaps the
// table atomically (SIGHUP).
#ifndef TRAIND_SERVER_RPC_AUTH_H_
#define TRAIND_SERVER_RPC_AUTH_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/server_context.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/jobs/job_manager.h"

namespace traind::rpc {

class TokenStore {
 public:
  // Reads `path`; INVALID_ARGUMENT naming the line for a malformed one.
  static absl::StatusOr<std::unique_ptr<TokenStore>> Load(const std::string& path);
  // Re-reads the file; on error the current tokens stay.
  absl::Status Reload();
  // The user a bearer token belongs to, if any.
  std::optional<jobs::Caller> Check(absl::string_view token) const;
  size_t size() const;

 private:
  struct Entry {
    std::string digest;  // 32 raw bytes
    jobs::Caller caller;
  };
  static absl::StatusOr<std::vector<Entry>> Parse(const std::string& path);
  explicit TokenStore(std::string path) : path_(std::move(path)) {}

  const std::string path_;
  mutable absl::Mutex mu_;
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);
};

// The caller of one call, decided from that call's own metadata: an
// "authorization: Bearer <token>" header naming a known token, or
// UNAUTHENTICATED; the implicit local user when there are no tokens.
//
// Never from the connection: gRPC's AuthContext (and so an
// AuthMetadataProcessor's properties) belongs to the transport, and one
// connection may carry calls of several users (a proxy, a gateway, a
// multi-user client). Deciding per call is what keeps them apart.
absl::StatusOr<jobs::Caller> Authenticate(const grpc::ServerContextBase& context,
                                          const TokenStore* tokens);

}  // namespace traind::rpc

#endif  // TRAIND_SERVER_RPC_AUTH_H_
