// Who is calling a gRPC method: the call's own "authorization" metadata,
// checked against the daemon's tokens (server/auth/tokens.h).
#ifndef TRAIND_SERVER_RPC_AUTH_H_
#define TRAIND_SERVER_RPC_AUTH_H_

#include <grpcpp/server_context.h>

#include "absl/status/statusor.h"
#include "server/auth/tokens.h"
#include "server/jobs/caller.h"

namespace traind::rpc {

using auth::TokenStore;

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
