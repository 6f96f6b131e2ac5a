// Who is calling, for every front end (gRPC, HTTP): bearer tokens from a
// tokens file, checked for every call by the handler that serves it.
//
// The tokens file holds one line per token: the hex SHA-256 of the token, the
// user name, and optionally "admin"; '#' starts a comment. Only digests are
// stored, tokens are never logged, and a presented token is compared with
// every digest in constant time. deploy/add-token.sh makes a token and its
// line.
//
// Thread-safety: all methods may be called from any thread; Reload swaps the
// table atomically (SIGHUP).
#ifndef TRAIND_SERVER_AUTH_TOKENS_H_
#define TRAIND_SERVER_AUTH_TOKENS_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/jobs/caller.h"

namespace traind::auth {

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

// The token of an "Authorization: Bearer <token>" value (the scheme in any
// case, surrounding blanks dropped); nullopt for anything else.
std::optional<absl::string_view> BearerToken(absl::string_view value);

// The caller of one call from its credentials: `authorization`, the values
// of the call's authorization headers (exactly one "Bearer <token>" naming a
// known token is accepted; several are ambiguous and refused), or failing
// that `token`, a bare token from elsewhere (the HTTP front end's session
// cookie). UNAUTHENTICATED otherwise; the implicit local user when `tokens`
// is null (a daemon without tokens).
absl::StatusOr<jobs::Caller> Identify(const TokenStore* tokens,
                                      const std::vector<absl::string_view>& authorization,
                                      absl::string_view token = {});

}  // namespace traind::auth

#endif  // TRAIND_SERVER_AUTH_TOKENS_H_
