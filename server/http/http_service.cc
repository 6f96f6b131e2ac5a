#include "server/http/http_service.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <utility>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/http/assets.h"
#include "server/http/host_check.h"
#include "server/http/request.h"

namespace traind::http {
namespace {

using httplib::Request;
using httplib::Response;

// Bodies other than Classify's images are small.
constexpr size_t kMaxBody = 1 << 20;
constexpr size_t kMaxClassifyBody = 64 << 20;
constexpr int kEventsPerRead = 256;

void Fail(Response& res, const absl::Status& status) {
  res.status = HttpStatus(status.code());
  if (status.code() == absl::StatusCode::kUnauthenticated) {
    res.set_header("WWW-Authenticate", "Bearer");
  }
  res.set_content(ErrorJson(status), "application/json");
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

void Reply(Response& res, const google::protobuf::Message& message) {
  res.status = 200;
  res.set_content(ToJson(message), "application/json");
}

// The handlers, one method per route.
class HttpServiceRoutes {
 public:
  HttpServiceRoutes(jobs::JobManager* manager, jobs::ClassifyService* classify,
                    const auth::TokenStore* tokens, absl::Duration max_stream, bool tls,
                    int max_open_streams)
      : manager_(manager),
        classify_(classify),
        tokens_(tokens),
        max_stream_(max_stream),
        tls_(tls),
        max_open_streams_(max_open_streams) {}

  // Authenticates `req`, then runs `call(caller)`; errors become replies.
  template <typename F>
  void Serve(const Request& req, Response& res, F&& call) const {
    auto caller = Identify(req);
    if (!caller.ok()) return Fail(res, caller.status());
    if (CrossSite(req)) {
      return Fail(res, absl::PermissionDeniedError(absl::StrCat(
                           "a page from ", req.get_header_value("Origin"),
                           " may not change anything here (cross-site request refused)")));
    }
    if (req.body.size() > kMaxBody && !absl::EndsWith(req.path, ":classify")) {
      return Fail(res, absl::ResourceExhaustedError(absl::StrCat(
                           "request body of ", req.body.size(), " bytes exceeds the ", kMaxBody,
                           "-byte limit")));
    }
    if (absl::Status st = call(*caller); !st.ok()) Fail(res, st);
  }

  absl::StatusOr<jobs::Caller> Identify(const Request& req) const {
    std::vector<std::string> values;
    for (size_t i = 0, n = req.get_header_value_count("Authorization"); i < n; ++i) {
      values.push_back(req.get_header_value("Authorization", i));
    }
    std::vector<absl::string_view> views(values.begin(), values.end());
    return auth::Identify(tokens_, views, CookieToken(req));
  }

  void ListJobs(const Request& req, Response& res) const {
    Serve(req, res, [&](const jobs::Caller& caller) -> absl::Status {
      auto page_size = IntParam<int32_t>(req, "page_size", 0);
      if (!page_size.ok()) return page_size.status();
      std::vector<trainer::v1::JobState> states;
      for (size_t i = 0, n = req.get_param_value_count("state"); i < n; ++i) {
        for (absl::string_view s :
             absl::StrSplit(req.get_param_value("state", i), ',', absl::SkipEmpty())) {
          auto state = EnumParam<trainer::v1::JobState>(std::string(s), "state",
                                                        trainer::v1::JobState_Parse,
                                                        trainer::v1::JobState_IsValid);
          if (!state.ok()) return state.status();
          states.push_back(*state);
        }
      }
      bool full = false;
      if (req.has_param("view")) {
        auto view = EnumParam<trainer::v1::JobView>(req.get_param_value("view"), "view",
                                                    trainer::v1::JobView_Parse,
                                                    trainer::v1::JobView_IsValid);
        if (!view.ok()) return view.status();
        full = *view == trainer::v1::FULL;
      }
      auto page = manager_->ListJobs(*page_size,
                                     req.get_param_value("page_token"), states, caller, full);
      if (!page.ok()) return page.status();
      trainer::v1::ListJobsResponse out;
      for (auto& j : page->jobs) *out.add_jobs() = std::move(j);
      out.set_next_page_token(page->next_page_token);
      Reply(res, out);
      return absl::OkStatus();
    });
  }

  void Submit(const Request& req, Response& res) const {
    Serve(req, res, [&](const jobs::Caller& caller) -> absl::Status {
      trainer::v1::JobSpec spec;
      if (auto st = google::protobuf::util::JsonStringToMessage(req.body, &spec); !st.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("spec: not a JobSpec in protobuf's JSON mapping: ",
                         std::string(st.message())));
      }
      std::string request_id = req.get_param_value("request_id");
      if (request_id.empty()) request_id = req.get_header_value("Idempotency-Key");
      auto id = manager_->Submit(std::move(spec), request_id, caller);
      if (!id.ok()) return id.status();
      trainer::v1::SubmitJobResponse out;
      out.set_job_id(*id);
      Reply(res, out);
      return absl::OkStatus();
    });
  }

  void GetJob(const Request& req, Response& res) const {
    Serve(req, res, [&](const jobs::Caller& caller) -> absl::Status {
      auto job = manager_->GetJob(req.matches[1], caller);
      if (!job.ok()) return job.status();
      trainer::v1::GetJobResponse out;
      *out.mutable_job() = std::move(*job);
      Reply(res, out);
      return absl::OkStatus();
    });
  }

  void Delete(const Request& req, Response& res) const {
    Serve(req, res, [&](const jobs::Caller& caller) -> absl::Status {
      auto freed = manager_->Delete(req.matches[1], caller);
      if (!freed.ok()) return freed.status();
      trainer::v1::DeleteJobResponse out;
      out.set_freed_bytes(*freed);
      Reply(res, out);
      return absl::OkStatus();
    });
  }

  // The job after a call that changed it, as `Out` (CancelJobResponse,
  // PauseJobResponse, ...) carries it; the call's error otherwise.
  template <typename Out>
  static absl::Status ReplyJob(Response& res, absl::StatusOr<trainer::v1::Job> job) {
    if (!job.ok()) return job.status();
    Out out;
    *out.mutable_job() = *std::move(job);
    Reply(res, out);
    return absl::OkStatus();
  }

  void Cancel(const Request& req, Response& res) const {
    Serve(req, res, [&](const jobs::Caller& caller) -> absl::Status {
      return ReplyJob<trainer::v1::CancelJobResponse>(res,
                                                      manager_->Cancel(req.matches[1], caller));
    });
  }

  // POST /v1/jobs/ID:pause and :resume: the job after the call, as
  // PauseJobResponse and ResumeJobResponse carry it.
  void Pause(const Request& req, Response& res) const {
    Serve(req, res, [&](const jobs::Caller& caller) -> absl::Status {
      return ReplyJob<trainer::v1::PauseJobResponse>(res,
                                                     manager_->Pause(req.matches[1], caller));
    });
  }

  void Resume(const Request& req, Response& res) const {
    Serve(req, res, [&](const jobs::Caller& caller) -> absl::Status {
      return ReplyJob<trainer::v1::ResumeJobResponse>(res,
                                                      manager_->Resume(req.matches[1], caller));
    });
  }

  // POST /v1/jobs/ID:setPriority {"priority": "HIGH"}.
  void SetPriority(const Request& req, Response& res) const {
    Serve(req, res, [&](const jobs::Caller& caller) -> absl::Status {
      trainer::v1::SetJobPriorityRequest in;
      if (auto st = google::protobuf::util::JsonStringToMessage(req.body, &in); !st.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "body: not a SetJobPriorityRequest in protobuf's JSON mapping ({\"priority\": "
            "\"HIGH\"}): ",
            std::string(st.message())));
      }
      return ReplyJob<trainer::v1::SetJobPriorityResponse>(
          res, manager_->SetPriority(req.matches[1], in.priority(), caller));
    });
  }

  void Report(const Request& req, Response& res) const {
    Serve(req, res, [&](const jobs::Caller& caller) -> absl::Status {
      auto job = manager_->GetJob(req.matches[1], caller);
      if (!job.ok()) return job.status();
      if (!job->has_evaluation()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "job ", job->id(), " has no evaluation yet (it is ",
            trainer::v1::JobState_Name(job->state()),
            "; reports exist once a non-sweep job SUCCEEDED)"));
      }
      Reply(res, job->evaluation());
      return absl::OkStatus();
    });
  }

  void Classify(const Request& req, Response& res) const {
    Serve(req, res, [&](const jobs::Caller& caller) -> absl::Status {
      if (!req.is_multipart_form_data()) {
        return absl::InvalidArgumentError(
            "images: send them as multipart/form-data file parts (any field name)");
      }
      trainer::v1::ClassifyRequest request;
      request.set_job_id(req.matches[1]);
      auto top_k = IntParam<int32_t>(req, "top_k", 0);
      if (!top_k.ok()) return top_k.status();
      auto trial = IntParam<int32_t>(req, "trial", 0);
      if (!trial.ok()) return trial.status();
      request.set_top_k(*top_k);
      request.set_trial(*trial);
      for (const auto& [name, part] : req.files) {
        if (!part.filename.empty()) request.add_images(part.content);
      }
      auto out = classify_->Classify(request, caller);
      if (!out.ok()) return out.status();
      Reply(res, *out);
      return absl::OkStatus();
    });
  }

  void Weights(const Request& req, Response& res) const {
    Serve(req, res, [&](const jobs::Caller& caller) -> absl::Status {
      trainer::v1::WeightsFormat format = trainer::v1::PTH;
      if (req.has_param("format")) {
        auto f = EnumParam<trainer::v1::WeightsFormat>(req.get_param_value("format"), "format",
                                                       trainer::v1::WeightsFormat_Parse,
                                                       trainer::v1::WeightsFormat_IsValid);
        if (!f.ok()) return f.status();
        if (*f != trainer::v1::WEIGHTS_FORMAT_UNSPECIFIED) format = *f;
      }
      auto trial = IntParam<int32_t>(req, "trial", 0);
      if (!trial.ok()) return trial.status();
      auto reader = manager_->OpenWeights(req.matches[1], format, *trial, 0,
                                          caller);
      if (!reader.ok()) return reader.status();
      const auto& header = (*reader)->header();
      const std::string sha = header.sha256();
      res.set_header("ETag", absl::StrCat("\"", sha, "\""));
      res.set_header("X-Traind-Sha256", sha);
      res.set_header("Repr-Digest",
                     absl::StrCat("sha-256=:", absl::Base64Escape(absl::HexStringToBytes(sha)), ":"));
      res.set_header("Content-Disposition",
                     absl::StrCat("attachment; filename=\"", std::string(req.matches[1]),
                                  *trial ? absl::StrCat("-trial", *trial) : "",
                                  format == trainer::v1::SAFETENSORS ? ".safetensors" : ".pth",
                                  "\""));
      res.set_header("Accept-Ranges", "bytes");
      res.set_header("Cache-Control", "private, no-cache");
      // A range for another version of the file (If-Range with an older
      // ETag) gets the whole file, as RFC 9110 asks.
      if (req.has_header("If-Range") && req.get_header_value("If-Range") != res.get_header_value("ETag")) {
        const_cast<Request&>(req).ranges.clear();
      }
      // A range that starts past the end is unsatisfiable (RFC 9110 15.5.17).
      for (const auto& [first, last] : req.ranges) {
        if ((first >= 0 && first >= header.total_size()) || (first < 0 && last <= 0)) {
          res.set_header("Content-Range", absl::StrCat("bytes */", header.total_size()));
          res.status = 416;
          res.set_content(ErrorJson(absl::OutOfRangeError(absl::StrCat(
                              "Range: ", req.get_header_value("Range"), " is outside the file's ",
                              header.total_size(), " bytes"))),
                          "application/json");
          const_cast<Request&>(req).ranges.clear();
          return absl::OkStatus();
        }
      }
      std::shared_ptr<jobs::WeightsReader> shared(std::move(*reader));
      res.set_content_provider(
          static_cast<size_t>(header.total_size()), "application/octet-stream",
          [shared](size_t offset, size_t length, httplib::DataSink& sink) {
            if (shared->offset() != static_cast<int64_t>(offset) &&
                !shared->Seek(static_cast<int64_t>(offset)).ok()) {
              return false;
            }
            auto chunk = shared->Next(static_cast<int64_t>(length));
            return chunk.ok() && sink.write(chunk->data(), chunk->size());
          });
      return absl::OkStatus();
    });
  }

  void Events(const Request& req, Response& res) const;

  void WhoAmI(const Request& req, Response& res) const {
    auto caller = Identify(req);
    if (!caller.ok()) return Fail(res, caller.status());
    res.set_content(nlohmann::json{{"user", caller->user},
                                   {"admin", caller->admin},
                                   {"tokens", tokens_ != nullptr}}
                        .dump(),
                    "application/json");
  }

  void Login(const Request& req, Response& res) const {
    const std::string value = req.get_header_value("Authorization");
    const auto token = auth::BearerToken(value);
    if (req.get_header_value_count("Authorization") != 1 || !token) {
      return Fail(res, absl::UnauthenticatedError("login: send the token as Authorization: Bearer"));
    }
    auto caller = Identify(req);
    if (!caller.ok()) return Fail(res, caller.status());
    if (token->find_first_of(";, \t\"\\") != absl::string_view::npos) {
      return Fail(res, absl::InvalidArgumentError(
                           "login: this token has characters a cookie cannot hold; send it as "
                           "Authorization: Bearer on each request instead"));
    }
    res.set_header("Set-Cookie", absl::StrCat(kCookie, "=", *token,
                                              "; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000",
                                              tls_ ? "; Secure" : ""));
    WhoAmI(req, res);
  }

  void Logout(const Request&, Response& res) const {
    res.set_header("Set-Cookie", absl::StrCat(kCookie, "=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
                                              tls_ ? "; Secure" : ""));
    res.set_content("{}", "application/json");
  }

 private:
  jobs::JobManager* const manager_;
  jobs::ClassifyService* const classify_;
  const auth::TokenStore* const tokens_;
  const absl::Duration max_stream_;
  const bool tls_;
  // Event streams open now, each holding a serving thread, and their cap.
  const int max_open_streams_;
  std::shared_ptr<std::atomic<int>> open_streams_ = std::make_shared<std::atomic<int>>(0);
};

// One open event stream: the follower, and the wake-ups it gets.
class EventStream {
 public:
  void Wake() {
    absl::MutexLock lock(&mu_);
    woken_ = true;
  }
  // Until woken or `timeout`; clears the wake-up.
  void Wait(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&woken_), timeout);
    woken_ = false;
  }
  std::unique_ptr<jobs::EventFollower> follower;
  absl::Time deadline;
  absl::Time last_write = absl::Now();
  bool started = false;

 private:
  absl::Mutex mu_;
  bool woken_ ABSL_GUARDED_BY(mu_) = false;
};

void HttpServiceRoutes::Events(const Request& req, Response& res) const {
  Serve(req, res, [&](const jobs::Caller& caller) -> absl::Status {
    auto after = IntParam<int64_t>(req, "after_seq", 0);
    if (!after.ok()) return after.status();
    // A browser's automatic reconnect says where it got to.
    if (req.has_header("Last-Event-ID")) {
      const std::string text = req.get_header_value("Last-Event-ID");
      int64_t last = 0;
      if (!absl::SimpleAtoi(text, &last)) {
        return absl::InvalidArgumentError(
            absl::StrCat("Last-Event-ID: not an event sequence number: \"", text, "\""));
      }
      after = last;
    }
    // Counted from here until the stream's state is freed.
    auto open = open_streams_;
    if (open->fetch_add(1) >= max_open_streams_) {
      open->fetch_sub(1);
      return absl::ResourceExhaustedError(absl::StrCat(
          "the server has ", max_open_streams_,
          " event streams open, its limit; reconnect later (after_seq or Last-Event-ID resumes)"));
    }
    std::shared_ptr<EventStream> stream(new EventStream(), [open](EventStream* s) {
      delete s;
      open->fetch_sub(1);
    });
    std::weak_ptr<EventStream> weak = stream;
    auto follower = manager_->Follow(req.matches[1], *after, caller, [weak] {
      if (auto s = weak.lock()) s->Wake();
    });
    if (!follower.ok()) return follower.status();
    stream->follower = std::move(*follower);
    stream->deadline = absl::Now() + max_stream_;
    res.set_header("Cache-Control", "no-store");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [stream](size_t, httplib::DataSink& sink) {
          const auto write = [&](const std::string& text) {
            stream->last_write = absl::Now();
            return sink.write(text.data(), text.size());
          };
          if (!stream->started) {
            stream->started = true;
            if (!write("retry: 2000\n\n")) return false;
          }
          auto step = stream->follower->Next(kEventsPerRead);
          if (!step.ok()) {
            // Shutting down: closed without an end, so the browser comes
            // back after the restart. Anything else ends the stream.
            if (step.status().code() != absl::StatusCode::kUnavailable) {
              write(absl::StrCat("event: end\ndata: ", ErrorJson(step.status()), "\n\n"));
            }
            sink.done();
            return true;
          }
          std::string out;
          for (const auto& event : step->events) {
            absl::StrAppend(&out, "id: ", event.seq(), "\ndata: ", ToJson(event), "\n\n");
          }
          if (step->end) absl::StrAppend(&out, "event: end\ndata: {}\n\n");
          if (!out.empty() && !write(out)) return false;
          if (step->end) {
            sink.done();
            return true;
          }
          if (step->events.empty()) {
            if (absl::Now() >= stream->deadline) {
              sink.done();  // the browser reconnects with Last-Event-ID
              return true;
            }
            stream->Wait(absl::Seconds(1));
            // A comment now and then finds a client that went away.
            if (absl::Now() - stream->last_write > absl::Seconds(5) && !write(": keepalive\n\n")) {
              return false;
            }
          }
          return true;
        },
        [stream](bool) { stream->follower.reset(); });
    return absl::OkStatus();
  });
}

}  // namespace

absl::StatusOr<int> BindHttp(httplib::Server& server, const std::string& listen,
                             absl::string_view flag, absl::string_view what) {
  const auto colon = listen.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port)) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": expected host:port, got ", listen));
  }
  std::string host = listen.substr(0, colon);
  if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]")) host = host.substr(1, host.size() - 2);
  const int bound = port == 0 ? server.bind_to_any_port(host)
                              : (server.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) return absl::UnavailableError(absl::StrCat("cannot listen for ", what, " on ", listen));
  return bound;
}

absl::StatusOr<std::unique_ptr<HttpService>> HttpService::Start(Options options,
                                                                jobs::JobManager* manager,
                                                                jobs::ClassifyService* classify,
                                                                const auth::TokenStore* tokens) {
  std::unique_ptr<HttpService> s(new HttpService());
  s->options_ = std::move(options);
  s->manager_ = manager;
  s->classify_ = classify;
  s->tokens_ = tokens;
  const bool tls = !s->options_.tls_cert.empty();
  if (tls) {
    auto ssl = std::make_unique<httplib::SSLServer>(
        s->options_.tls_cert.c_str(), s->options_.tls_key.c_str(),
        s->options_.tls_client_ca.empty() ? nullptr : s->options_.tls_client_ca.c_str());
    if (!ssl->is_valid()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "http: cannot serve TLS with ", s->options_.tls_cert, " and ", s->options_.tls_key));
    }
    s->server_ = std::move(ssl);
  } else {
    s->server_ = std::make_unique<httplib::Server>();
  }
  s->options_.threads = std::max(kReservedThreads + 1, s->options_.threads);
  const int threads = s->options_.threads;
  s->server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  s->server_->set_payload_max_length(kMaxClassifyBody + (1 << 20));
  s->server_->set_read_timeout(30, 0);
  s->server_->set_keep_alive_timeout(30);
  s->Route();
  auto port = BindHttp(*s->server_, s->options_.listen, "http_listen", "HTTP");
  if (!port.ok()) return port.status();
  s->port_ = *port;
  HttpService* self = s.get();
  s->thread_ = std::thread([self] { self->server_->listen_after_bind(); });
  return s;
}

void HttpService::Route() {
  auto routes = std::make_shared<HttpServiceRoutes>(manager_, classify_, tokens_,
                                                    options_.max_stream,
                                                    !options_.tls_cert.empty(),
                                                    options_.threads - kReservedThreads);
  auto& s = *server_;
  const std::string id = "/v1/jobs/([A-Za-z0-9_.-]+)";
  // Before any route, reads included: a rebound name gets nothing.
  auto hosts = std::make_shared<HostCheck>(options_.listen, options_.allowed_hosts);
  s.set_pre_routing_handler([hosts](const Request& req, Response& res) {
    const std::string host = req.get_header_value("Host");
    if (hosts->Allows(host)) return httplib::Server::HandlerResponse::Unhandled;
    Fail(res, absl::PermissionDeniedError(absl::StrCat(
                  "Host \"", host,
                  "\" is not a name this daemon serves (refused as possible DNS rebinding); "
                  "an admin can allow it with --http-allowed-hosts")));
    res.status = 421;  // Misdirected Request
    return httplib::Server::HandlerResponse::Handled;
  });
  s.Get("/healthz", [](const Request&, Response& res) { res.set_content("ok\n", "text/plain"); });
  s.Get("/v1/whoami", [routes](const Request& q, Response& r) { routes->WhoAmI(q, r); });
  s.Post("/v1/login", [routes](const Request& q, Response& r) { routes->Login(q, r); });
  s.Post("/v1/logout", [routes](const Request& q, Response& r) { routes->Logout(q, r); });
  s.Get("/v1/jobs", [routes](const Request& q, Response& r) { routes->ListJobs(q, r); });
  s.Post("/v1/jobs", [routes](const Request& q, Response& r) { routes->Submit(q, r); });
  s.Get(id, [routes](const Request& q, Response& r) { routes->GetJob(q, r); });
  s.Delete(id, [routes](const Request& q, Response& r) { routes->Delete(q, r); });
  s.Post(id + ":cancel", [routes](const Request& q, Response& r) { routes->Cancel(q, r); });
  s.Post(id + ":pause", [routes](const Request& q, Response& r) { routes->Pause(q, r); });
  s.Post(id + ":resume", [routes](const Request& q, Response& r) { routes->Resume(q, r); });
  s.Post(id + ":setPriority",
         [routes](const Request& q, Response& r) { routes->SetPriority(q, r); });
  s.Post(id + ":classify", [routes](const Request& q, Response& r) { routes->Classify(q, r); });
  s.Get(id + "/events", [routes](const Request& q, Response& r) { routes->Events(q, r); });
  s.Get(id + "/weights", [routes](const Request& q, Response& r) { routes->Weights(q, r); });
  s.Get(id + "/report", [routes](const Request& q, Response& r) { routes->Report(q, r); });
  // The dashboard: files built into the binary.
  s.Get("/(|static/[A-Za-z0-9_./-]+)", [](const Request& q, Response& r) {
    const std::string path = q.matches[1].str().empty() ? "index.html" : q.matches[1].str().substr(7);
    const Asset* asset = FindAsset(path);
    if (asset == nullptr) {
      return Fail(r, absl::NotFoundError(absl::StrCat("no such file: /", q.matches[1].str())));
    }
    r.set_header("Cache-Control", "no-cache");
    r.set_content(reinterpret_cast<const char*>(asset->data), asset->size, asset->content_type);
  });
  // Every reply: no sniffing, no framing, scripts only from here.
  s.set_post_routing_handler([](const Request&, Response& res) {
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_header("X-Frame-Options", "DENY");
    res.set_header("Referrer-Policy", "no-referrer");
    res.set_header("Content-Security-Policy",
                   "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                   "frame-ancestors 'none'; form-action 'self'");
  });
  s.set_error_handler([](const Request& req, Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404) {
      Fail(res, absl::NotFoundError(absl::StrCat("no such resource: ", req.method, " ", req.path)));
    } else if (res.status == 416) {
      res.set_content(ErrorJson(absl::OutOfRangeError("Range: outside the file")),
                      "application/json");
    } else if (res.status == 413) {
      res.set_content(ErrorJson(absl::ResourceExhaustedError("request body too large")),
                      "application/json");
    }
  });
}

HttpService::~HttpService() { Stop(); }

void HttpService::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace traind::http
