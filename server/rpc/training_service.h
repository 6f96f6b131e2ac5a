// trainer.v1.TrainingService over gRPC: each handler authenticates the call,
// translates the request, delegates to the JobManager and converts the
// result. No job logic here. The two streaming calls are callback-API
// reactors (streams.h); unary calls run on gRPC's sync threads, because some
// of them write to disk (SubmitJob, CancelJob, DeleteJob, PauseJob, ResumeJob,
// SetJobPriority).
//
// Thread-safety: handlers run concurrently on gRPC's threads; the manager is
// thread-safe. Streams wait on the manager's event log, never on training.
#ifndef TRAIND_SERVER_RPC_TRAINING_SERVICE_H_
#define TRAIND_SERVER_RPC_TRAINING_SERVICE_H_

#include <thread>

#include "absl/synchronization/notification.h"
#include "server/jobs/classify.h"
#include "server/jobs/job_manager.h"
#include "server/rpc/auth.h"
#include "trainer/v1/training_service.grpc.pb.h"

namespace traind::rpc {

// Callback API for the calls that never block (reads of memory, streams);
// the sync API for those that write to disk or compute (submit, cancel,
// delete, classify), which would stall gRPC's callback threads.
using TrainingServiceBase = trainer::v1::TrainingService::WithCallbackMethod_GetJob<
    trainer::v1::TrainingService::WithCallbackMethod_ListJobs<
        trainer::v1::TrainingService::WithCallbackMethod_StreamMetrics<
            trainer::v1::TrainingService::WithCallbackMethod_GetWeights<
                trainer::v1::TrainingService::Service>>>>;

class TrainingServiceImpl final : public TrainingServiceBase {
 public:
  struct Limits {
    // Open StreamMetrics calls per user; more are RESOURCE_EXHAUSTED
    // (counted by the JobManager, which every front end shares).
    int max_streams_per_user = 16;
    // A StreamMetrics or GetWeights call open longer than this ends with
    // DEADLINE_EXCEEDED (watchers resume from their last sequence number).
    int max_stream_seconds = 3600;
    // Nice value of the threads that serve calls (0: as the daemon's).
    // Training threads keep the daemon's: an intra-op parallel step waits
    // for its slowest thread, so serving is made to yield to training.
    int serving_nice = 0;
  };
  // `tokens`: nullptr for a daemon without authentication (one implicit
  // local user).
  TrainingServiceImpl(jobs::JobManager* manager, jobs::ClassifyService* classify,
                      const TokenStore* tokens, Limits limits);
  ~TrainingServiceImpl() override;

  grpc::Status SubmitJob(grpc::ServerContext* context,
                         const trainer::v1::SubmitJobRequest* request,
                         trainer::v1::SubmitJobResponse* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const trainer::v1::GetJobRequest* request,
                                   trainer::v1::GetJobResponse* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const trainer::v1::ListJobsRequest* request,
                                     trainer::v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context,
                         const trainer::v1::CancelJobRequest* request,
                         trainer::v1::CancelJobResponse* response) override;
  grpc::ServerWriteReactor<trainer::v1::StreamMetricsResponse>* StreamMetrics(
      grpc::CallbackServerContext* context,
      const trainer::v1::StreamMetricsRequest* request) override;
  grpc::ServerWriteReactor<trainer::v1::GetWeightsResponse>* GetWeights(
      grpc::CallbackServerContext* context,
      const trainer::v1::GetWeightsRequest* request) override;
  grpc::Status Classify(grpc::ServerContext* context,
                        const trainer::v1::ClassifyRequest* request,
                        trainer::v1::ClassifyResponse* response) override;
  grpc::Status DeleteJob(grpc::ServerContext* context,
                         const trainer::v1::DeleteJobRequest* request,
                         trainer::v1::DeleteJobResponse* response) override;
  grpc::Status PauseJob(grpc::ServerContext* context, const trainer::v1::PauseJobRequest* request,
                        trainer::v1::PauseJobResponse* response) override;
  grpc::Status ResumeJob(grpc::ServerContext* context, const trainer::v1::ResumeJobRequest* request,
                         trainer::v1::ResumeJobResponse* response) override;
  grpc::Status SetJobPriority(grpc::ServerContext* context,
                              const trainer::v1::SetJobPriorityRequest* request,
                              trainer::v1::SetJobPriorityResponse* response) override;

 private:
  jobs::JobManager* const manager_;
  jobs::ClassifyService* const classify_;
  const TokenStore* const tokens_;
  const Limits limits_;
  // Wakes idle streams once a second so they notice their time limit.
  absl::Notification stop_ticker_;
  std::thread ticker_;
};

}  // namespace traind::rpc

#endif  // TRAIND_SERVER_RPC_TRAINING_SERVICE_H_
