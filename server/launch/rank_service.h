// The control link's gRPC service (traind.internal.v1.Ranks): what a
// distributed job's ranks call on the traind that holds the job. Every call
// is checked against its attempt's secret (UNAUTHENTICATED otherwise) and
// only touches that attempt's files.
//
// Thread-safety: gRPC calls the handlers from any thread.
#ifndef TRAIND_SERVER_LAUNCH_RANK_SERVICE_H_
#define TRAIND_SERVER_LAUNCH_RANK_SERVICE_H_

#include "server/launch/attempts.h"
#include "traind/internal/v1/ranks.grpc.pb.h"

namespace traind::launch {

class RankService final : public internal::v1::Ranks::Service {
 public:
  explicit RankService(AttemptRegistry* attempts) : attempts_(attempts) {}

  grpc::Status Join(grpc::ServerContext* context, const internal::v1::JoinRequest* request,
                    internal::v1::JoinResponse* response) override;
  grpc::Status Report(grpc::ServerContext* context, const internal::v1::ReportRequest* request,
                      internal::v1::ReportResponse* response) override;
  grpc::Status Fetch(grpc::ServerContext* context, const internal::v1::FetchRequest* request,
                     grpc::ServerWriter<internal::v1::FileChunk>* writer) override;
  grpc::Status Upload(grpc::ServerContext* context,
                      grpc::ServerReader<internal::v1::UploadChunk>* reader,
                      internal::v1::UploadResponse* response) override;
  grpc::Status Finish(grpc::ServerContext* context, const internal::v1::FinishRequest* request,
                      internal::v1::FinishResponse* response) override;

 private:
  AttemptRegistry* const attempts_;
};

}  // namespace traind::launch

#endif  // TRAIND_SERVER_LAUNCH_RANK_SERVICE_H_
