// The HTTP front end: a JSON API over the same JobManager the gRPC service
// uses (protobuf's JSON mapping of the same messages), Server-Sent Events
// for a job's event stream, ranged weights downloads, and the dashboard's
// static files. Like server/rpc/, it authenticates, translates and
// delegates; no job logic lives here.
//
// Routes (errors are {"error": {"code": <HTTP>, "status": "<gRPC code
// name>", "message": ...}} with the HTTP status of the gRPC code):
//   GET  /v1/jobs                   ListJobsResponse (?page_size, page_token,
//                                   state (repeated), view=BASIC|FULL)
//   POST /v1/jobs                   body: JobSpec; ?request_id; SubmitJobResponse
//   GET  /v1/jobs/{id}              GetJobResponse
//   DELETE /v1/jobs/{id}            DeleteJobResponse
//   POST /v1/jobs/{id}:cancel       CancelJobResponse
//   POST /v1/jobs/{id}:classify     multipart images (?top_k, trial); ClassifyResponse
//   GET  /v1/jobs/{id}/events       text/event-stream of JobEvent (?after_seq;
//                                   id: = seq, so Last-Event-ID resumes)
//   GET  /v1/jobs/{id}/weights      the file (?format=pth|safetensors, trial);
//                                   Range, ETag and Repr-Digest (SHA-256)
//   GET  /v1/jobs/{id}/report       Evaluation of a SUCCEEDED job
//   GET  /v1/whoami                 {"user", "admin", "tokens"}: who is calling
//   POST /v1/login                  "Authorization: Bearer <token>" in, the
//                                   session cookie traind_token out (HttpOnly,
//                                   SameSite=Strict; Secure over TLS); {"user", ...}
//   POST /v1/logout                 clears the cookie
//   GET  /healthz                   "ok" (no token)
//   GET  /, /static/...             the dashboard
//
// Every request must name this daemon in its Host header (host_check.h:
// the DNS-rebinding guard), or it gets 421 Misdirected Request.
//
// Who calls: "Authorization: Bearer <token>" per request, or the HttpOnly,
// SameSite=Strict session cookie that POST /v1/login sets from such a
// header. A request that changes something is refused when its Origin
// names another site.
//
// Thread-safety: requests are served on the server's own thread pool; the
// manager is thread-safe. An event stream holds one pool thread while open.
#ifndef TRAIND_SERVER_HTTP_HTTP_SERVICE_H_
#define TRAIND_SERVER_HTTP_HTTP_SERVICE_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/auth/tokens.h"
#include "server/jobs/classify.h"
#include "server/jobs/job_manager.h"

namespace httplib {
class Server;
}

namespace traind::http {

// Binds `server` to `listen` ("host:port", "[v6 address]:port"; port 0
// picks a free one) and returns the bound port. `flag` names the setting in
// errors (INVALID_ARGUMENT for a malformed value, UNAVAILABLE when it cannot
// bind), `what` the service ("metrics", "HTTP").
absl::StatusOr<int> BindHttp(httplib::Server& server, const std::string& listen,
                             absl::string_view flag, absl::string_view what);

class HttpService {
 public:
  static constexpr int kReservedThreads = 4;
  struct Options {
    // host:port; port 0 picks a free port.
    std::string listen;
    // Host names served besides IP addresses, localhost and `listen`'s host
    // (HostCheck: a request naming any other host is refused with 421).
    std::vector<std::string> allowed_hosts;
    // TLS (PEM files); both empty: plaintext.
    std::string tls_cert;
    std::string tls_key;
    // Mutual TLS: clients must present a certificate signed by this CA.
    std::string tls_client_ca;
    // An event stream open longer than this is closed; browsers reconnect
    // with Last-Event-ID and lose nothing.
    absl::Duration max_stream = absl::Hours(1);
    // Threads serving requests. An open event stream holds one, so event
    // streams may take all but kReservedThreads of them; more are refused
    // (RESOURCE_EXHAUSTED) and the API and the dashboard stay reachable.
    int threads = 64;
  };

  // Binds and starts serving. `tokens` null: the implicit local user.
  static absl::StatusOr<std::unique_ptr<HttpService>> Start(Options options,
                                                            jobs::JobManager* manager,
                                                            jobs::ClassifyService* classify,
                                                            const auth::TokenStore* tokens);
  ~HttpService();

  int port() const { return port_; }
  // Stops accepting and closes open connections; event streams end.
  void Stop();

 private:
  HttpService() = default;
  void Route();

  Options options_;
  jobs::JobManager* manager_ = nullptr;
  jobs::ClassifyService* classify_ = nullptr;
  const auth::TokenStore* tokens_ = nullptr;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace traind::http

#endif  // TRAIND_SERVER_HTTP_HTTP_SERVICE_H_
