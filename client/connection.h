// trainctl's connection to traind: the channel (TLS when asked), the bearer
// token on every call, and the one helper every unary call goes through.
#ifndef TRAIND_CLIENT_CONNECTION_H_
#define TRAIND_CLIENT_CONNECTION_H_

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "client/status.h"
#include "trainer/v1/training_service.grpc.pb.h"

namespace traind::client {

class Connection {
 public:
  using Stub = trainer::v1::TrainingService::Stub;

  // From --server/$TRAINCTL_SERVER, --tls-*/$TRAINCTL_TLS_*, --token/$TRAINCTL_TOKEN.
  static absl::StatusOr<std::unique_ptr<Connection>> Open();

  // Calls `method` with the token and a 30 s deadline; a failure becomes
  // RpcError(what, ...). UNAVAILABLE is retried `retries` times with backoff
  // (only for calls that are safe to repeat).
  template <typename Request, typename Response>
  absl::StatusOr<Response> Call(grpc::Status (Stub::*method)(grpc::ClientContext*,
                                                             const Request&, Response*),
                                const Request& request, const std::string& what,
                                int retries = 0) {
    grpc::Status status;
    for (int attempt = 0;; ++attempt) {
      grpc::ClientContext context;
      Prepare(&context);
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      Response response;
      status = (stub_.get()->*method)(&context, request, &response);
      if (status.ok()) return response;
      if (status.error_code() != grpc::StatusCode::UNAVAILABLE || attempt >= retries) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(200 << attempt));
    }
    return RpcError(what, status);
  }

  // The job `id` (GetJob), named "status <id>" in errors.
  absl::StatusOr<trainer::v1::Job> GetJob(const std::string& id);

  // Adds the token to a call (streams set their own deadlines).
  void Prepare(grpc::ClientContext* context) const;
  Stub& stub() { return *stub_; }

 private:
  Connection(std::unique_ptr<Stub> stub, std::string token)
      : stub_(std::move(stub)), token_(std::move(token)) {}
  const std::unique_ptr<Stub> stub_;
  const std::string token_;
};

}  // namespace traind::client

#endif  // TRAIND_CLIENT_CONNECTION_H_
