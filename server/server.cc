#include "server/server.h"

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/file_util.h"

namespace traind {

absl::StatusOr<std::unique_ptr<Server>> Server::BuildAndStart(Options options) {
  std::unique_ptr<Server> s(new Server());
  auto manager = jobs::JobManager::Create(options.jobs);
  if (!manager.ok()) return manager.status();
  s->manager_ = std::move(*manager);
  s->service_ = std::make_unique<rpc::TrainingServiceImpl>(s->manager_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &s->port_);
  builder.RegisterService(s->service_.get());
  builder.SetMaxReceiveMessageSize(4 << 20);
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    s->manager_->Shutdown();
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  if (!options.port_file.empty()) {
    if (auto st = WriteFileAtomically(options.port_file, absl::StrCat(s->port_, "\n"));
        !st.ok()) {
      s->Shutdown(absl::ZeroDuration());
      return st;
    }
  }
  return s;
}

Server::~Server() { Shutdown(absl::Seconds(5)); }

void Server::Shutdown(absl::Duration grace) {
  if (stopped_) return;
  stopped_ = true;
  if (auto* health = server_->GetHealthCheckService()) health->SetServingStatus(false);
  // Streams notice this within their poll interval and end with UNAVAILABLE.
  manager_->BeginShutdown();
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  manager_->Shutdown();
  server_->Wait();
}

}  // namespace traind
