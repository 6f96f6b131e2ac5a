// trainer.v1.TrainingService over gRPC: each handler translates the request,
// delegates to the JobManager and converts the result. No job logic here.
//
// Thread-safety: handlers run concurrently on gRPC's threads; the manager is
// thread-safe. Streams wait on the manager, never on training.
#ifndef TRAIND_SERVER_RPC_TRAINING_SERVICE_H_
#define TRAIND_SERVER_RPC_TRAINING_SERVICE_H_

#include <map>
#include <string>

#include "absl/synchronization/mutex.h"
#include "server/jobs/job_manager.h"
#include "server/rpc/auth.h"
#include "trainer/v1/training_service.grpc.pb.h"

namespace traind::rpc {

class TrainingServiceImpl final : public trainer::v1::TrainingService::Service {
 public:
  struct Limits {
    // Open StreamMetrics calls per user; more are RESOURCE_EXHAUSTED.
    int max_streams_per_user = 16;
    // A StreamMetrics or GetWeights call open longer than this ends with
    // DEADLINE_EXCEEDED (watchers resume from their last sequence number).
    int max_stream_seconds = 3600;
  };
  // `tokens`: nullptr for a daemon without authentication (one implicit
  // local user).
  TrainingServiceImpl(jobs::JobManager* manager, const TokenStore* tokens, Limits limits)
      : manager_(manager), tokens_(tokens), limits_(limits) {}

  grpc::Status SubmitJob(grpc::ServerContext* context,
                         const trainer::v1::SubmitJobRequest* request,
                         trainer::v1::SubmitJobResponse* response) override;
  grpc::Status GetJob(grpc::ServerContext* context,
                      const trainer::v1::GetJobRequest* request,
                      trainer::v1::GetJobResponse* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context,
                        const trainer::v1::ListJobsRequest* request,
                        trainer::v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context,
                         const trainer::v1::CancelJobRequest* request,
                         trainer::v1::CancelJobResponse* response) override;
  grpc::Status StreamMetrics(
      grpc::ServerContext* context, const trainer::v1::StreamMetricsRequest* request,
      grpc::ServerWriter<trainer::v1::StreamMetricsResponse>* writer) override;
  grpc::Status GetWeights(
      grpc::ServerContext* context, const trainer::v1::GetWeightsRequest* request,
      grpc::ServerWriter<trainer::v1::GetWeightsResponse>* writer) override;
  grpc::Status Classify(grpc::ServerContext* context,
                        const trainer::v1::ClassifyRequest* request,
                        trainer::v1::ClassifyResponse* response) override;
  grpc::Status DeleteJob(grpc::ServerContext* context,
                         const trainer::v1::DeleteJobRequest* request,
                         trainer::v1::DeleteJobResponse* response) override;

 private:
  jobs::JobManager* const manager_;
  const TokenStore* const tokens_;
  const Limits limits_;
  absl::Mutex streams_mu_;
  std::map<std::string, int> streams_ ABSL_GUARDED_BY(streams_mu_);
};

}  // namespace traind::rpc

#endif  // TRAIND_SERVER_RPC_TRAINING_SERVICE_H_
