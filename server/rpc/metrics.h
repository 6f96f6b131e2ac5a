// Daemon metrics in Prometheus' text format: RPC counts and latencies by
// method and status code (a gRPC server interceptor sees every call), events
// streamed to watchers, and the job manager's queue and throughput.
//
// Thread-safety: all methods may be called from any thread.
#ifndef TRAIND_SERVER_RPC_METRICS_H_
#define TRAIND_SERVER_RPC_METRICS_H_

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include <grpcpp/support/server_interceptor.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/jobs/job_manager.h"

namespace traind::rpc {

class RpcMetrics {
 public:
  // Upper bounds of the latency histogram's buckets, seconds.
  static constexpr std::array<double, 9> kBuckets = {0.001, 0.005, 0.01, 0.05, 0.1,
                                                     0.5,   1,     5,    30};

  void RecordCall(const std::string& method, int code, double seconds);
  void RecordMessageSent(const std::string& method);
  // The text exposition of these figures and of `jobs`.
  std::string Render(const jobs::JobManager::Gauges& jobs) const;

  // Creates the interceptor that feeds this object; register with
  // ServerBuilder::experimental().SetInterceptorCreators.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> InterceptorFactory();

 private:
  struct Latency {
    std::array<int64_t, kBuckets.size()> buckets{};
    int64_t count = 0;
    double sum = 0;
  };
  mutable absl::Mutex mu_;
  std::map<std::pair<std::string, int>, int64_t> calls_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Latency> latency_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t> messages_sent_ ABSL_GUARDED_BY(mu_);
};

}  // namespace traind::rpc

#endif  // TRAIND_SERVER_RPC_METRICS_H_
