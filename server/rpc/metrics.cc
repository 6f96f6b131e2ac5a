#include "server/rpc/metrics.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace traind::rpc {
namespace {

using grpc::experimental::InterceptionHookPoints;

// Method names come as "/package.Service/Method"; labels use "Method".
std::string ShortName(const char* full) {
  std::string name = full ? full : "";
  const auto slash = name.rfind('/');
  return slash == std::string::npos ? name : name.substr(slash + 1);
}

const char* CodeName(int code) {
  static const char* const kNames[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
      "UNAUTHENTICATED"};
  return code >= 0 && code < 17 ? kNames[code] : "UNKNOWN";
}

class Interceptor final : public grpc::experimental::Interceptor {
 public:
  Interceptor(RpcMetrics* metrics, std::string method)
      : metrics_(metrics), method_(std::move(method)),
        start_(std::chrono::steady_clock::now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      metrics_->RecordMessageSent(method_);
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      metrics_->RecordCall(method_, static_cast<int>(methods->GetSendStatus().error_code()),
                           seconds);
    }
    methods->Proceed();
  }

 private:
  RpcMetrics* const metrics_;
  const std::string method_;
  const std::chrono::steady_clock::time_point start_;
};

class Factory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(RpcMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new Interceptor(metrics_, ShortName(info->method()));
  }

 private:
  RpcMetrics* const metrics_;
};

std::string Escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    if (c == '\\' || c == '"') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

}  // namespace

void RpcMetrics::RecordCall(const std::string& method, int code, double seconds) {
  absl::MutexLock lock(&mu_);
  ++calls_[{method, code}];
  Latency& l = latency_[method];
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    if (seconds <= kBuckets[i]) ++l.buckets[i];
  }
  ++l.count;
  l.sum += seconds;
}

void RpcMetrics::RecordMessageSent(const std::string& method) {
  absl::MutexLock lock(&mu_);
  ++messages_sent_[method];
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
RpcMetrics::InterceptorFactory() {
  return std::make_unique<Factory>(this);
}

std::string RpcMetrics::Render(const jobs::JobManager::Gauges& jobs) const {
  std::string out;
  absl::StrAppend(&out,
                  "# HELP traind_jobs_queued Jobs waiting for a worker.\n"
                  "# TYPE traind_jobs_queued gauge\n"
                  "traind_jobs_queued ", jobs.queued, "\n",
                  "# HELP traind_jobs_running Jobs being trained.\n"
                  "# TYPE traind_jobs_running gauge\n"
                  "traind_jobs_running ", jobs.running, "\n",
                  "# HELP traind_slots Job slots (--workers).\n"
                  "# TYPE traind_slots gauge\n"
                  "traind_slots ", jobs.slots, "\n",
                  "# HELP traind_slots_in_use Slots held by jobs on workers (a distributed "
                  "job's local ranks take one each).\n"
                  "# TYPE traind_slots_in_use gauge\n"
                  "traind_slots_in_use ", jobs.slots_in_use, "\n",
                  "# HELP traind_job_images_per_second Training throughput of the latest batch "
                  "of each running job.\n"
                  "# TYPE traind_job_images_per_second gauge\n");
  for (const auto& [id, ips] : jobs.images_per_second) {
    absl::StrAppend(&out, "traind_job_images_per_second{job=\"", Escape(id), "\"} ",
                    absl::StrFormat("%.3f", ips), "\n");
  }
  absl::MutexLock lock(&mu_);
  int64_t streamed = 0;
  if (auto it = messages_sent_.find("StreamMetrics"); it != messages_sent_.end()) {
    streamed = it->second;
  }
  absl::StrAppend(&out,
                  "# HELP traind_events_streamed_total Job events sent to watchers.\n"
                  "# TYPE traind_events_streamed_total counter\n"
                  "traind_events_streamed_total ", streamed, "\n",
                  "# HELP traind_rpc_requests_total RPCs finished, by method and status code.\n"
                  "# TYPE traind_rpc_requests_total counter\n");
  for (const auto& [key, n] : calls_) {
    absl::StrAppend(&out, "traind_rpc_requests_total{method=\"", Escape(key.first),
                    "\",code=\"", CodeName(key.second), "\"} ", n, "\n");
  }
  absl::StrAppend(&out,
                  "# HELP traind_rpc_latency_seconds Time from the start of an RPC to its "
                  "status, by method.\n"
                  "# TYPE traind_rpc_latency_seconds histogram\n");
  for (const auto& [method, l] : latency_) {
    const std::string m = Escape(method);
    for (size_t i = 0; i < kBuckets.size(); ++i) {
      absl::StrAppend(&out, "traind_rpc_latency_seconds_bucket{method=\"", m, "\",le=\"",
                      kBuckets[i], "\"} ", l.buckets[i], "\n");
    }
    absl::StrAppend(&out, "traind_rpc_latency_seconds_bucket{method=\"", m, "\",le=\"+Inf\"} ",
                    l.count, "\n", "traind_rpc_latency_seconds_sum{method=\"", m, "\"} ",
                    absl::StrFormat("%.6f", l.sum), "\n",
                    "traind_rpc_latency_seconds_count{method=\"", m, "\"} ", l.count, "\n");
  }
  return out;
}

}  // namespace traind::rpc
