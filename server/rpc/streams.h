// The two server-streaming calls as callback-API reactors: no thread is
// parked per open stream. Each is a thin adapter over the core's
// EventFollower or WeightsReader; the logic (replay, follow, end of stream,
// chunking) lives in server/jobs.
//
// Thread-safety: gRPC calls the reactions; the follower's wake-ups may come
// from any thread (the job's worker, a ticker); a reactor's own mutex orders
// them. A reactor ends its life in OnDone.
#ifndef TRAIND_SERVER_RPC_STREAMS_H_
#define TRAIND_SERVER_RPC_STREAMS_H_

#include <grpcpp/support/server_callback.h>
#include <grpcpp/server_context.h>

#include "absl/time/time.h"
#include "server/jobs/job_manager.h"
#include "server/rpc/auth.h"
#include "trainer/v1/training_service.pb.h"

namespace traind::rpc {

// StreamMetrics: the job's events after request.after_seq, then live ones,
// until its terminal state event; DEADLINE_EXCEEDED after `max_open`.
grpc::ServerWriteReactor<trainer::v1::StreamMetricsResponse>* StartMetricsStream(
    jobs::JobManager* manager, const TokenStore* tokens, absl::Duration max_open,
    grpc::CallbackServerContext* context, const trainer::v1::StreamMetricsRequest* request);

// GetWeights: a header, then 1 MiB chunks from request.offset.
grpc::ServerWriteReactor<trainer::v1::GetWeightsResponse>* StartWeightsStream(
    jobs::JobManager* manager, const TokenStore* tokens, absl::Duration max_open,
    grpc::CallbackServerContext* context, const trainer::v1::GetWeightsRequest* request);

}  // namespace traind::rpc

#endif  // TRAIND_SERVER_RPC_STREAMS_H_
