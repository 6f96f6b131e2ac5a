// The whole daemon process: job manager plus gRPC server, started by
// BuildAndStart and stopped by Shutdown.
//
// Thread-safety: Shutdown may be called from any thread, once.
#ifndef TRAIND_SERVER_SERVER_H_
#define TRAIND_SERVER_SERVER_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/server.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/http/http_service.h"
#include "server/jobs/job_manager.h"
#include "server/launch/attempts.h"
#include "server/launch/rank_group.h"
#include "server/launch/rank_service.h"
#include "server/rpc/auth.h"
#include "server/rpc/metrics.h"
#include "server/rpc/training_service.h"

namespace httplib {
class Server;
}

namespace traind {

class Server {
 public:
  struct Options {
    // host:port to listen on; port 0 picks a free port.
    std::string listen = "127.0.0.1:50051";
    // If set, the bound port is written here (atomically) once serving.
    std::string port_file;
    // host:port of the Prometheus /metrics HTTP endpoint; empty: none; port 0
    // picks a free port.
    std::string metrics_listen;
    // host:port of the HTTP front end (JSON API, event streams, dashboard),
    // with the same TLS, tokens and loopback rule as `listen`; empty: none;
    // port 0 picks a free port.
    std::string http_listen;
    // Its serving threads (event streams may hold all but a few).
    int http_threads = 64;
    // If set, the HTTP port is written here (atomically) once serving.
    std::string http_port_file;
    // Host names the HTTP front end answers besides IP addresses, localhost
    // and http_listen's host (http/host_check.h).
    std::vector<std::string> http_allowed_hosts;
    // TLS: PEM files of the server's certificate chain and key. Unset: plaintext,
    // allowed only on a loopback address (or with `insecure`).
    std::string tls_cert;
    std::string tls_key;
    // Mutual TLS: clients must present a certificate signed by this CA (PEM).
    std::string tls_client_ca;
    // Bearer tokens (see auth/tokens.h). Unset: one implicit local user, which
    // is allowed only on a loopback address (or with `insecure`).
    std::string tokens_file;
    // Quotas and priority rights (jobs/scheduler.h's Policy, JSON); empty:
    // no quotas, and only admins raise priorities above NORMAL.
    std::string policy_file;
    // Serve plaintext and/or without tokens on a non-loopback address.
    bool insecure = false;
    rpc::TrainingServiceImpl::Limits limits;
    jobs::JobManager::Options jobs;
    // The executable a distributed job's ranks run (`traind worker`).
    std::string worker_binary = "/proc/self/exe";
    // Words before the worker binary for each local rank ({rank} replaced).
    std::vector<std::string> rank_wrapper;
    // host:port (or unix:PATH) that ranks on other machines dial; empty: the
    // listening address.
    std::string rank_control_address;
    // Where ranks can go: the daemon's Slurm defaults, its Kubernetes API.
    launch::LaunchSettings launch;
  };

  static absl::StatusOr<std::unique_ptr<Server>> BuildAndStart(Options options);
  ~Server();

  // The port actually bound.
  int port() const { return port_; }
  // Re-reads the tokens file (SIGHUP); the old tokens stay on error.
  absl::Status ReloadTokens();
  // Re-reads the policy file (SIGHUP); the old policy stays on error.
  absl::Status ReloadPolicy();
  // The metrics port actually bound; 0 when not serving metrics.
  int metrics_port() const { return metrics_port_; }
  // The HTTP front end's port; 0 when not serving HTTP.
  int http_port() const { return api_ ? api_->port() : 0; }
  // Health NOT_SERVING, streams end with UNAVAILABLE, running jobs are
  // interrupted (they run again after a restart), then everything stops.
  void Shutdown(absl::Duration grace);

 private:
  Server() = default;

  // Outlives the manager, whose engine holds it.
  std::unique_ptr<launch::AttemptRegistry> attempts_;
  std::unique_ptr<jobs::JobManager> manager_;
  std::unique_ptr<jobs::ClassifyService> classify_;
  std::unique_ptr<rpc::TrainingServiceImpl> service_;
  std::unique_ptr<launch::RankService> ranks_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::unique_ptr<rpc::RpcMetrics> metrics_;
  std::unique_ptr<auth::TokenStore> tokens_;
  std::string policy_file_;
  std::unique_ptr<http::HttpService> api_;
  std::unique_ptr<httplib::Server> http_;
  std::thread http_thread_;
  int metrics_port_ = 0;
  bool stopped_ = false;
};

}  // namespace traind

#endif  // TRAIND_SERVER_SERVER_H_
