#include "server/rpc/training_service.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/rpc/status_util.h"
#include "server/rpc/streams.h"

namespace traind::rpc {

using grpc::ServerContext;
using grpc::Status;

namespace {

// Requests other than Classify are small; the server accepts 64 MiB messages
// for Classify's images.
constexpr size_t kMaxRequestBytes = 1 << 20;

Status CheckSize(const google::protobuf::Message& request, const char* rpc) {
  const size_t n = request.ByteSizeLong();
  if (n <= kMaxRequestBytes) return Status::OK;
  return Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                absl::StrCat(rpc, ": request of ", n, " bytes exceeds the ", kMaxRequestBytes,
                             "-byte limit"));
}

// Serving threads come from gRPC's pools; each is given its nice value the
// first time it serves a call.
void SetServingPriority(int nice) {
  thread_local int applied = 0;
  if (nice == applied) return;
  if (setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), nice) == 0) {
    applied = nice;
  }
}

// Authenticates the call, runs `call(caller)` and converts its status.
template <typename F>
Status Serve(const grpc::ServerContextBase& context, const TokenStore* tokens, int nice,
             F&& call) {
  SetServingPriority(nice);
  auto caller = Authenticate(context, tokens);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  return ToGrpcStatus(call(*caller));
}

}  // namespace

TrainingServiceImpl::TrainingServiceImpl(jobs::JobManager* manager,
                                         jobs::ClassifyService* classify,
                                         const TokenStore* tokens, Limits limits)
    : manager_(manager), classify_(classify), tokens_(tokens), limits_(limits) {
  ticker_ = std::thread([this] {
    while (!stop_ticker_.WaitForNotificationWithTimeout(absl::Seconds(1))) {
      manager_->WakeFollowers();
    }
  });
}

TrainingServiceImpl::~TrainingServiceImpl() {
  stop_ticker_.Notify();
  ticker_.join();
}

Status TrainingServiceImpl::SubmitJob(ServerContext* context,
                                      const trainer::v1::SubmitJobRequest* request,
                                      trainer::v1::SubmitJobResponse* response) {
  if (Status st = CheckSize(*request, "SubmitJob"); !st.ok()) return st;
  return Serve(*context, tokens_, limits_.serving_nice, [&](const jobs::Caller& caller) {
    auto id = manager_->Submit(request->spec(), request->request_id(), caller);
    if (id.ok()) response->set_job_id(*id);
    return id.status();
  });
}

grpc::ServerUnaryReactor* TrainingServiceImpl::GetJob(grpc::CallbackServerContext* context,
                                                      const trainer::v1::GetJobRequest* request,
                                                      trainer::v1::GetJobResponse* response) {
  auto* reactor = context->DefaultReactor();
  reactor->Finish(Serve(*context, tokens_, limits_.serving_nice, [&](const jobs::Caller& caller) {
    auto job = manager_->GetJob(request->job_id(), caller);
    if (job.ok()) *response->mutable_job() = std::move(*job);
    return job.status();
  }));
  return reactor;
}

grpc::ServerUnaryReactor* TrainingServiceImpl::ListJobs(
    grpc::CallbackServerContext* context, const trainer::v1::ListJobsRequest* request,
    trainer::v1::ListJobsResponse* response) {
  auto* reactor = context->DefaultReactor();
  reactor->Finish(Serve(*context, tokens_, limits_.serving_nice, [&](const jobs::Caller& caller) {
    std::vector<trainer::v1::JobState> states;
    for (int s : request->states()) states.push_back(static_cast<trainer::v1::JobState>(s));
    if (!trainer::v1::JobView_IsValid(request->view())) {
      return absl::InvalidArgumentError("view: unknown job view");
    }
    auto page = manager_->ListJobs(request->page_size(), request->page_token(), states, caller,
                                   request->view() == trainer::v1::FULL);
    if (!page.ok()) return page.status();
    for (auto& j : page->jobs) *response->add_jobs() = std::move(j);
    response->set_next_page_token(page->next_page_token);
    return absl::OkStatus();
  }));
  return reactor;
}

Status TrainingServiceImpl::CancelJob(ServerContext* context,
                                      const trainer::v1::CancelJobRequest* request,
                                      trainer::v1::CancelJobResponse* response) {
  return Serve(*context, tokens_, limits_.serving_nice, [&](const jobs::Caller& caller) {
    auto job = manager_->Cancel(request->job_id(), caller);
    if (job.ok()) *response->mutable_job() = std::move(*job);
    return job.status();
  });
}

Status TrainingServiceImpl::PauseJob(ServerContext* context,
                                     const trainer::v1::PauseJobRequest* request,
                                     trainer::v1::PauseJobResponse* response) {
  return Serve(*context, tokens_, limits_.serving_nice, [&](const jobs::Caller& caller) {
    auto job = manager_->Pause(request->job_id(), caller);
    if (job.ok()) *response->mutable_job() = std::move(*job);
    return job.status();
  });
}

Status TrainingServiceImpl::ResumeJob(ServerContext* context,
                                      const trainer::v1::ResumeJobRequest* request,
                                      trainer::v1::ResumeJobResponse* response) {
  return Serve(*context, tokens_, limits_.serving_nice, [&](const jobs::Caller& caller) {
    auto job = manager_->Resume(request->job_id(), caller);
    if (job.ok()) *response->mutable_job() = std::move(*job);
    return job.status();
  });
}

Status TrainingServiceImpl::SetJobPriority(ServerContext* context,
                                           const trainer::v1::SetJobPriorityRequest* request,
                                           trainer::v1::SetJobPriorityResponse* response) {
  return Serve(*context, tokens_, limits_.serving_nice, [&](const jobs::Caller& caller) {
    auto job = manager_->SetPriority(request->job_id(), request->priority(), caller);
    if (job.ok()) *response->mutable_job() = std::move(*job);
    return job.status();
  });
}

grpc::ServerWriteReactor<trainer::v1::StreamMetricsResponse>* TrainingServiceImpl::StreamMetrics(
    grpc::CallbackServerContext* context, const trainer::v1::StreamMetricsRequest* request) {
  SetServingPriority(limits_.serving_nice);
  return StartMetricsStream(manager_, tokens_, absl::Seconds(limits_.max_stream_seconds),
                            context, request);
}

grpc::ServerWriteReactor<trainer::v1::GetWeightsResponse>* TrainingServiceImpl::GetWeights(
    grpc::CallbackServerContext* context, const trainer::v1::GetWeightsRequest* request) {
  SetServingPriority(limits_.serving_nice);
  return StartWeightsStream(manager_, tokens_, absl::Seconds(limits_.max_stream_seconds),
                            context, request);
}

Status TrainingServiceImpl::Classify(ServerContext* context,
                                     const trainer::v1::ClassifyRequest* request,
                                     trainer::v1::ClassifyResponse* response) {
  return Serve(*context, tokens_, limits_.serving_nice, [&](const jobs::Caller& caller) {
    auto result = classify_->Classify(*request, caller);
    if (result.ok()) *response = std::move(*result);
    return result.status();
  });
}

Status TrainingServiceImpl::DeleteJob(ServerContext* context,
                                      const trainer::v1::DeleteJobRequest* request,
                                      trainer::v1::DeleteJobResponse* response) {
  return Serve(*context, tokens_, limits_.serving_nice, [&](const jobs::Caller& caller) {
    auto freed = manager_->Delete(request->job_id(), caller);
    if (freed.ok()) response->set_freed_bytes(*freed);
    return freed.status();
  });
}

}  // namespace traind::rpc
