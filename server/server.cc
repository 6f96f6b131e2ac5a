#include "server/server.h"

#include <cstdio>
#include <utility>
#include <vector>

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>
#include <httplib.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "server/launch/distributed_engine.h"
#include "server/launch/rank_service.h"
#include "server/train/backend.h"
#include "server/worker/local_engine.h"

namespace traind {
namespace {

bool IsLoopback(const std::string& address) {
  const std::string host = address.substr(0, address.rfind(':'));
  return host == "127.0.0.1" || host == "localhost" || host == "[::1]" || host == "::1" ||
         absl::StartsWith(address, "unix:");
}

// Plaintext or token-less serving is for loopback addresses only, unless
// the operator says --insecure (which is logged).
absl::Status CheckExposure(const std::string& address, bool tls, bool tokens, bool insecure) {
  if (IsLoopback(address) || (tls && tokens)) return absl::OkStatus();
  if (!insecure) {
    return absl::FailedPreconditionError(absl::StrCat(
        "refusing to serve ", address, " without ", tls ? "" : "TLS (--tls-cert, --tls-key) ",
        !tls && !tokens ? "and " : "", tokens ? "" : "tokens (--tokens-file)",
        ": only loopback addresses may do without; --insecure overrides"));
  }
  std::fprintf(stderr, "traind: WARNING: --insecure: serving %s%s%s to the network\n",
               tls ? "" : "plaintext", !tls && !tokens ? " and " : "",
               tokens ? "" : "without authentication");
  std::fflush(stderr);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::BuildAndStart(Options options) {
  std::unique_ptr<Server> s(new Server());
  // Refuse an exposed daemon without TLS or tokens before touching any state.
  const std::string host = options.listen.substr(0, options.listen.rfind(':'));
  const bool loopback = IsLoopback(options.listen);
  const bool tls = !options.tls_cert.empty() || !options.tls_key.empty();
  for (const std::string& address : {options.listen, options.http_listen}) {
    if (address.empty()) continue;
    if (auto st = CheckExposure(address, tls, !options.tokens_file.empty(), options.insecure);
        !st.ok()) {
      return st;
    }
  }
  if (!options.http_port_file.empty() && options.http_listen.empty()) {
    return absl::InvalidArgumentError("--http-port-file needs --http-listen");
  }
  if (tls && (options.tls_cert.empty() || options.tls_key.empty())) {
    return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
  }
  if (!options.tls_client_ca.empty() && !tls) {
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
  }
  if (!options.policy_file.empty()) {
    auto policy = jobs::Policy::Load(options.policy_file);
    if (!policy.ok()) return policy.status();
    options.jobs.policy = *std::move(policy);
    s->policy_file_ = options.policy_file;
  }
  if (!options.tokens_file.empty()) {
    auto tokens = auth::TokenStore::Load(options.tokens_file);
    if (!tokens.ok()) return tokens.status();
    s->tokens_ = std::move(*tokens);
  }
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (tls) {
    grpc::SslServerCredentialsOptions ssl(
        options.tls_client_ca.empty()
            ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
            : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    auto cert = ReadFile(options.tls_cert);
    auto key = ReadFile(options.tls_key);
    if (!cert.ok()) return cert.status();
    if (!key.ok()) return key.status();
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    if (!options.tls_client_ca.empty()) {
      auto ca = ReadFile(options.tls_client_ca);
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
    }
    credentials = grpc::SslServerCredentials(ssl);
  }
  options.jobs.max_streams_per_user = options.limits.max_streams_per_user;
  // Jobs of world size > 1 run on `traind worker` ranks that call back here.
  s->attempts_ = std::make_unique<launch::AttemptRegistry>();
  launch::DistributedEngine::Options ranks;
  ranks.worker_binary = options.worker_binary;
  ranks.rank_wrapper = options.rank_wrapper;
  for (const char* backend : {"gloo", "nccl"}) {
    if (train::BackendAvailable(backend)) ranks.backends.push_back(backend);
  }
  ranks.settings = options.launch;
  auto engine = std::make_shared<launch::DistributedEngine>(
      options.jobs.engine ? options.jobs.engine : worker::NewLocalEngine(), s->attempts_.get(),
      std::move(ranks));
  options.jobs.engine = engine;
  s->ranks_ = std::make_unique<launch::RankService>(s->attempts_.get());
  auto manager = jobs::JobManager::Create(options.jobs);
  if (!manager.ok()) return manager.status();
  s->manager_ = std::move(*manager);
  s->classify_ = std::make_unique<jobs::ClassifyService>(s->manager_.get(), engine.get());
  s->service_ = std::make_unique<rpc::TrainingServiceImpl>(
      s->manager_.get(), s->classify_.get(), s->tokens_.get(), options.limits);

  s->metrics_ = std::make_unique<rpc::RpcMetrics>();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  creators.push_back(s->metrics_->InterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(creators));
  builder.AddListeningPort(options.listen, credentials, &s->port_);
  // Limits: message sizes, keepalive abuse, idle connections.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, 30 * 60 * 1000);
  builder.RegisterService(s->service_.get());
  builder.RegisterService(s->ranks_.get());
  // Classify carries images: up to 64 MiB per call (8 MiB per image).
  builder.SetMaxReceiveMessageSize(64 << 20);
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    s->manager_->Shutdown();
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  // Local ranks reach the control link on loopback, or through the
  // listening address when it is a specific one.
  launch::ControlLink link;
  const bool any = host == "0.0.0.0" || host == "[::]" || host == "::";
  if (absl::StartsWith(options.listen, "unix:")) {
    link.address = options.listen;
  } else if (loopback || any) {
    link.address = absl::StrCat(tls ? "localhost" : "127.0.0.1", ":", s->port_);
  } else {
    link.address = absl::StrCat(host, ":", s->port_);
  }
  if (tls) link.ca_file = options.tls_cert;
  link.remote_address = options.rank_control_address;
  if (link.remote_address.empty() && !loopback && !any) link.remote_address = link.address;
  engine->SetControlLink(link);
  if (!options.metrics_listen.empty()) {
    s->http_ = std::make_unique<httplib::Server>();
    Server* self = s.get();
    s->http_->Get("/metrics", [self](const httplib::Request&, httplib::Response& res) {
      res.set_content(self->metrics_->Render(self->manager_->Snapshot()),
                      "text/plain; version=0.0.4; charset=utf-8");
    });
    auto port = http::BindHttp(*s->http_, options.metrics_listen, "metrics_listen", "metrics");
    if (!port.ok()) {
      s->Shutdown(absl::ZeroDuration());
      return port.status();
    }
    s->metrics_port_ = *port;
    s->http_thread_ = std::thread([self] { self->http_->listen_after_bind(); });
  }
  if (!options.http_listen.empty()) {
    http::HttpService::Options http;
    http.listen = options.http_listen;
    http.tls_cert = options.tls_cert;
    http.tls_key = options.tls_key;
    http.tls_client_ca = options.tls_client_ca;
    http.max_stream = absl::Seconds(options.limits.max_stream_seconds);
    http.threads = options.http_threads;
    http.allowed_hosts = options.http_allowed_hosts;
    auto started = http::HttpService::Start(http, s->manager_.get(), s->classify_.get(),
                                            s->tokens_.get());
    if (!started.ok()) {
      s->Shutdown(absl::ZeroDuration());
      return started.status();
    }
    s->api_ = std::move(*started);
  }
  // Last: a script that waits for these files finds every port serving.
  for (const auto& [file, port] : {std::pair{options.port_file, s->port_},
                                   std::pair{options.http_port_file, s->http_port()}}) {
    if (file.empty()) continue;
    if (auto st = WriteFileAtomically(file, absl::StrCat(port, "\n")); !st.ok()) {
      s->Shutdown(absl::ZeroDuration());
      return st;
    }
  }
  return s;
}

Server::~Server() { Shutdown(absl::Seconds(5)); }

absl::Status Server::ReloadTokens() {
  if (!tokens_) return absl::FailedPreconditionError("no --tokens-file to reload");
  return tokens_->Reload();
}

absl::Status Server::ReloadPolicy() {
  if (policy_file_.empty()) return absl::FailedPreconditionError("no --policy-file to reload");
  auto policy = jobs::Policy::Load(policy_file_);
  if (!policy.ok()) return policy.status();
  manager_->SetPolicy(*std::move(policy));
  return absl::OkStatus();
}

void Server::Shutdown(absl::Duration grace) {
  if (stopped_) return;
  stopped_ = true;
  if (!server_) {  // failed before serving
    if (manager_) manager_->Shutdown();
    return;
  }
  if (auto* health = server_->GetHealthCheckService()) health->SetServingStatus(false);
  // Streams notice this within their poll interval and end with UNAVAILABLE.
  manager_->BeginShutdown();
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  if (api_) api_->Stop();
  manager_->Shutdown();
  server_->Wait();
  if (http_) {
    http_->stop();
    if (http_thread_.joinable()) http_thread_.join();
  }
}

}  // namespace traind
