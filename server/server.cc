#include "server/server.h"

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <httplib.h>

#include <vector>

#include "absl/strings/numbers.h"
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

  s->metrics_ = std::make_unique<rpc::RpcMetrics>();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  creators.push_back(s->metrics_->InterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(creators));
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &s->port_);
  builder.RegisterService(s->service_.get());
  // Classify carries images: up to 64 MiB per call (8 MiB per image).
  builder.SetMaxReceiveMessageSize(64 << 20);
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    s->manager_->Shutdown();
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  if (!options.metrics_listen.empty()) {
    const auto colon = options.metrics_listen.rfind(':');
    int port = 0;
    if (colon == std::string::npos ||
        !absl::SimpleAtoi(options.metrics_listen.substr(colon + 1), &port)) {
      s->Shutdown(absl::ZeroDuration());
      return absl::InvalidArgumentError(
          absl::StrCat("metrics_listen: expected host:port, got ", options.metrics_listen));
    }
    const std::string host = options.metrics_listen.substr(0, colon);
    s->http_ = std::make_unique<httplib::Server>();
    Server* self = s.get();
    s->http_->Get("/metrics", [self](const httplib::Request&, httplib::Response& res) {
      res.set_content(self->metrics_->Render(self->manager_->Snapshot()),
                      "text/plain; version=0.0.4; charset=utf-8");
    });
    s->metrics_port_ = port == 0 ? s->http_->bind_to_any_port(host)
                                 : (s->http_->bind_to_port(host, port) ? port : -1);
    if (s->metrics_port_ <= 0) {
      s->Shutdown(absl::ZeroDuration());
      return absl::UnavailableError(
          absl::StrCat("cannot listen for metrics on ", options.metrics_listen));
    }
    s->http_thread_ = std::thread([self] { self->http_->listen_after_bind(); });
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
  if (http_) {
    http_->stop();
    if (http_thread_.joinable()) http_thread_.join();
  }
}

}  // namespace traind
